"""The training loop of every training stage: one Trainer (`loop`), pluggable losses (`losses`), data order
(`data`), data parallelism (`parallel`: DeepSpeed ZeRO-3 or replicated weights), checkpoints, Ray Train launch.

All distributed concerns of arena_dist live here; `arena_dist.models` only builds models and data code takes plain
`rank, world_size` integers. Heavy imports stay inside the submodules.
"""
