"""`arena-dist prepare`: merge sources into validated, deduplicated, folded parquet shards with a manifest.

Config keys: output_dir, num_shards, num_folds, seed, batch_rows, force, sources[] (name, kind, path, use_as (or its
older name split), columns, language, encoding, max_quarantine_share, allow_empty, pairing, filters). The library parts
live in arena_dist.data (sniff, sources, rated, pairing, filters, normalize, folds, store).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from arena_dist.config import StrictModel, config_hash
from arena_dist.data.sources import SourceConfig


class Config(StrictModel):
    output_dir: Path
    num_shards: int = Field(8, ge=1, le=10000)
    num_folds: int = Field(5, ge=1, le=1000)
    seed: int = 0  # salts the fold assignment and the chosen -> A/B coin of pairwise sources
    batch_rows: int = Field(2048, ge=1)  # rows buffered per shard before a parquet row group is written
    sources: list[SourceConfig] = Field(min_length=1)
    force: bool = False  # rebuild even when output_dir already holds this config's dataset of the same input bytes

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [source.name for source in sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source name {duplicates[0]!r} is used twice (names must be unique)")
        return sources


def dataset_hash(config: Config) -> str:
    """The config hash recorded in the manifest; `force` is how to run, not what is built, so it is left out."""
    return config_hash(config.model_copy(update={"force": False}))


def run(config: Config) -> dict:
    import time

    from arena_dist.artefacts import write_artefact
    from arena_dist.data.filters import filter_tokenizer
    from arena_dist.data.store import MANIFEST, build_dataset, current_manifest, format_source_counts

    started = time.time()
    manifest_path = Path(config.output_dir) / MANIFEST
    manifest = None if config.force else current_manifest(config.output_dir, dataset_hash(config), config.sources)
    rebuilt = manifest is None
    if not rebuilt:
        for name, counts in manifest["sources"].items():
            print(format_source_counts(name, counts))
        print(f"up to date (same config and input bytes; set force=true to rebuild): {manifest_path}")
    else:
        for name in sorted({source.filters.tokenizer for source in config.sources} - {None}):
            filter_tokenizer(name)  # refused or loaded before any source is read
        manifest = build_dataset(config.sources, config.output_dir, num_shards=config.num_shards,
                                 num_folds=config.num_folds, seed=config.seed, batch_rows=config.batch_rows,
                                 resolved_config=config, config_hash_value=dataset_hash(config))
    rows = {split: entry["rows"] for split, entry in manifest["splits"].items()}
    print(f"prepared {', '.join(f'{split}={n:,}' for split, n in rows.items()) or 'no rows'}; manifest: {manifest_path}")
    counts = {key: sum(source.get(key, 0) for source in manifest["sources"].values())
              for key in ("read", "kept", "duplicates", "quarantined", "filtered")}
    write_artefact(config.output_dir, "prepare", config, started=started,
                   inputs={source.name: source.path for source in config.sources},
                   outputs={"dataset": config.output_dir, "manifest": manifest_path}, rows=rows,
                   metrics={**counts, "rebuilt": rebuilt}, headline="quarantined")
    return {"manifest": str(manifest_path), "rows": rows, "sources": manifest["sources"], "rebuilt": rebuilt}
