"""The dataset layer: sources -> canonical records -> parquet shards with a manifest."""
