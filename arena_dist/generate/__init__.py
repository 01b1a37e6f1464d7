"""Generation of a comparison pool: two generator models answer each prompt, shard-parallel on Ray actors.

Modules: `backend` (the `Generator` interface, the transformers implementation, length-sorted left-padded batches),
`pairing` (seeded weighted draw of two distinct generators per prompt), `worker` (every generator loaded once;
answers whole shards, multi-turn prompts turn by turn), `store` (exactly-once pool shards, the final pool file),
`driver` (Ray actors on the shared scheduler, arena_dist.shards), `progress` (printed progress and status.json).
"""
