"""Distributed training: Ray Train workers driving a DeepSpeed engine, checkpoints, resume, export.

All distributed concerns of arena_dist live here; `arena_dist.models` only builds models and data code takes plain
`rank, world_size` integers. Heavy imports stay inside the submodules.
"""
