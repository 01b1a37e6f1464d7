"""Pseudo-labelling: teachers score a prompt pool shard-parallel on Ray actors into an exactly-once label store.

Modules: `batching` (pure: length-sorted token-budget batches), `scoring` (torch: score encoded rows, both orders),
`store` (per-shard atomic commits, final exactly-once merge), `driver` (Ray actors + the shard scheduler),
`ensemble` (average finished label stores), `progress` (printed progress and status.json).
"""
