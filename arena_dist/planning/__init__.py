"""Capacity planning: parameter counts, memory per GPU and time estimates from model dimensions (pure Python).

Nothing here imports torch or deepspeed: the planner runs on a laptop before any cluster exists.
"""
