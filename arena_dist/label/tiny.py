"""A tiny synthetic pool dataset and a tiny random teacher export: for tests, the bench and the demo.

Both go through the real code paths: the synthetic generator -> the prepare stage's dataset builder, and
`build_model` -> `save_export`. The random teacher's head is scaled up so its probabilities vary from row to row
(a fresh head outputs ~1/3 everywhere, which would make "equals the reference" a weak check).
"""

from __future__ import annotations

import os
from pathlib import Path


def make_pool_dataset(out_dir: str | os.PathLike, n_rows: int = 200, num_shards: int = 4, seed: int = 0) -> Path:
    """Synthetic pool rows -> a prepared dataset directory with a `pool` split of `num_shards` shards."""
    from arena_dist.data.sources import SourceConfig
    from arena_dist.data.store import build_dataset
    from arena_dist.data.synth import generate_pool

    out_dir = Path(out_dir)
    raw = out_dir.with_name(out_dir.name + "-raw") / "pool.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    generate_pool(n_rows, seed, raw, progress=False)
    build_dataset([SourceConfig(name="pool", kind="pool", path=raw)], out_dir, num_shards=num_shards, num_folds=2,
                  seed=seed)
    return out_dir


def make_teacher_export(out_dir: str | os.PathLike, arch: str = "llama", label_mode: str = "3class",
                        max_length: int = 512, template: str = "llama3", seed: int = 0,
                        head_std: float = 0.3, **model_overrides) -> Path:
    import torch

    from arena_dist.formatting.templates import num_labels
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.build import build_model
    from arena_dist.models.export import save_export
    from arena_dist.models.tiny import tiny_model_config

    tokenizer = load_tokenizer("local")
    cfg = tiny_model_config(arch, init_seed=seed, **model_overrides)
    markers = None
    if cfg.segment_embeddings:
        from arena_dist.formatting.encode import segment_markers
        from arena_dist.formatting.templates import FormatConfig

        fmt = FormatConfig(template=template, max_length=max_length, label_mode=label_mode)
        markers = segment_markers(tokenizer, fmt)
    model = build_model(cfg, num_labels(label_mode), tokenizer.pad_token_id, segment_markers=markers)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.score.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * head_std)
    meta = {"label_mode": label_mode, "template": template, "max_length": max_length, "created_by": "label.tiny"}
    return save_export(model.eval(), tokenizer, out_dir, meta)
