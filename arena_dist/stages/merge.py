"""`arena-dist merge`: N fold adapters of one student (LoRA exports on one base) -> one model, checked against the
ensemble it replaces.

`mode: average` writes one LoRA export on the base the folds were trained with (quantised stays quantised) whose
adapter is the weighted average of the folds' weight deltas and whose head is the weighted average of their heads;
`into_base` merges that average into a full-precision base (a plain classifier export). The check: max and mean
|logit difference| of the merged model vs the weighted mean of the fold models' logits on check rows; above
`max_logit_diff` the merge is refused (exit 2) and nothing is written. Why these choices: arena_dist.models.merge.

Outputs in `output_dir`: `export/` (the merged export; its metadata records the check), merge_check.json (the check
rows' ids and the merged, ensemble and per-fold logits), resolved_config.yaml and the stage record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from arena_dist.config import StrictModel, save_resolved_config


class CheckRows(StrictModel):
    """Where the check rows come from: a prepared dataset's rows (by default the folds the exports held out, as the
    student stage checks its own merge on its held-out fold) or a parquet file of records in the dataset's schema."""

    dataset_dir: str | None = None
    split: str = "train"
    folds: list[int] | None = None  # None: the `fold` each export recorded
    records: str | None = None
    max_rows: int = Field(64, gt=0)  # the first rows, in the dataset's canonical order

    @model_validator(mode="after")
    def _one_source(self) -> "CheckRows":
        if (self.dataset_dir is None) == (self.records is None):
            raise ValueError("set exactly one of dataset_dir (a prepared dataset) or records (a parquet file)")
        if self.records is not None and self.folds is not None:
            raise ValueError("folds selects rows of dataset_dir; a records file is used as it is")
        return self


class Config(StrictModel):
    exports: list[str] = Field(min_length=1)  # LoRA exports of one student on one base (its fold models)
    weights: list[float] | None = None  # one per export, >= 0, normalised to sum 1; None: equal
    mode: Literal["average", "into_base"] = "average"
    max_logit_diff: float = Field(gt=0)  # refuse the merge when max |merged - ensemble logits| is larger
    check_rows: CheckRows
    output_dir: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the base's dtype (compute dtype when quantised)
    # Run Python code shipped inside the exports (transformers `auto_map`). Only this setting turns it on.
    trust_remote_code: bool = False
    # The exports' base model, when it is no longer where training found it (another machine, a moved folder).
    base_path: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.weights is not None:
            if len(self.weights) != len(self.exports):
                raise ValueError(f"weights: {len(self.weights)} weights for {len(self.exports)} exports")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights: every weight must be >= 0 and their sum > 0")
        resolved = [Path(e).expanduser().resolve() for e in self.exports]
        for index, path in enumerate(resolved):
            if path in resolved[:index]:
                raise ValueError(f"exports[{index}] {self.exports[index]} is listed twice")
        out = Path(self.output_dir).expanduser().resolve()
        for index, path in enumerate(resolved):
            if out == path or out in path.parents or path in out.parents:
                raise ValueError(f"output_dir {self.output_dir} overlaps exports[{index}] {self.exports[index]}")
        return self


def read_check_records(rows: CheckRows, metas: list[dict]) -> list:
    """The check rows' records: the first `max_rows` of the selected folds (read without loading whole folds), or
    of the records file."""
    from arena_dist.data.store import count_records, read_records, read_shard
    from arena_dist.errors import ConfigError, InputError

    if rows.records is not None:
        records = read_shard(rows.records)[: rows.max_rows]
        where = rows.records
    else:
        folds = rows.folds
        if folds is None:
            folds = sorted({m["fold"] for m in metas if m.get("fold") is not None})
            if not folds:
                raise ConfigError("check_rows.folds: the exports record no held-out fold; set check_rows.folds "
                                  "or check_rows.records")
        total = count_records(rows.dataset_dir, rows.split, folds=folds)
        # rank 0 of total // max_rows "ranks" is the first >= max_rows rows: only the shards that hold them are read
        records = read_records(rows.dataset_dir, rows.split, 0, max(1, total // rows.max_rows),
                               folds=folds)[: rows.max_rows]
        where = f"{rows.dataset_dir} split {rows.split!r} folds {folds}"
    if not records:
        raise InputError(f"check_rows: no rows in {where} to check the merge on")
    return records


def encode_check_rows(records: list, export_dir: str, meta: dict, trust_remote_code: bool) -> list[list[int]]:
    """Token ids as the exports were trained: their tokenizer and format (A / B in the records' order)."""
    from transformers import AutoTokenizer

    from arena_dist.label.scoring import format_from_meta
    from arena_dist.train.data import Encoder, Sample

    tokenizer = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=trust_remote_code)
    encoder = Encoder(tokenizer, format_from_meta(meta), require_label=False)
    return [example.input_ids for example in encoder.encode([Sample(r) for r in records], [False] * len(records))]


def run(config: Config) -> dict:
    import torch

    from arena_dist.artefacts import write_artefact
    from arena_dist.io import atomic_write_json, check_replaceable, claim_output_dir
    from arena_dist.models.merge import check_exports, merge_exports
    from arena_dist.progress import progress_bar

    started = time.time()
    # Checked now, claimed only once the merge passed: a refused merge leaves no directory behind.
    check_replaceable(config.output_dir, "output_dir")
    metas = check_exports(config.exports, config.trust_remote_code, config.base_path)
    records = read_check_records(config.check_rows, metas)
    sequences = encode_check_rows(records, config.exports[0], metas[0], config.trust_remote_code)
    passes = len(config.exports) + (2 if config.mode == "into_base" else 1)
    print(f"merge: {len(config.exports)} exports, mode {config.mode}, {len(sequences)} check rows", flush=True)
    with progress_bar("merge: check rows scored", total=passes * len(sequences)) as bar:
        merge = merge_exports(config.exports, sequences, weights=config.weights, mode=config.mode,
                              max_logit_diff=config.max_logit_diff, dtype=config.dtype,
                              trust_remote_code=config.trust_remote_code, base_path=config.base_path,
                              device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else None,
                              progress=bar.update)
    report = merge.report

    out = claim_output_dir(config.output_dir, "output_dir")
    export_dir = merge.save(out / "export")
    check_file = atomic_write_json(out / "merge_check.json", {
        "ids": [r["id"] for r in records], "weights": report["weights"],
        "merged": merge.logits["merged"].tolist(), "ensemble": merge.logits["ensemble"].tolist(),
        "folds": [fold.tolist() for fold in merge.logits["folds"]]})
    save_resolved_config(config, out)
    metrics = {key: report[key] for key in ("max_abs_logit_diff", "mean_abs_logit_diff", "argmax_agreement",
                                            "fold_spread_max_abs_logit_diff", "exports")}
    if "max_abs_logit_diff_vs_unmerged_full_precision" in report:
        metrics["max_abs_logit_diff_vs_unmerged_full_precision"] = report[
            "max_abs_logit_diff_vs_unmerged_full_precision"]
    check_source = config.check_rows.records or config.check_rows.dataset_dir
    write_artefact(out, "merge", config, inputs={"exports": config.exports, "check_rows": check_source},
                   outputs={"export": export_dir, "check": check_file}, rows=report["rows"], metrics=metrics,
                   headline="max_abs_logit_diff", started=started)
    print(f"merge: wrote {export_dir} (max |logit difference| vs the ensemble {report['max_abs_logit_diff']:.4g}, "
          f"mean {report['mean_abs_logit_diff']:.4g}, limit {config.max_logit_diff}; folds spread "
          f"{report['fold_spread_max_abs_logit_diff']:.4g})", flush=True)
    return {**report, "export_dir": str(export_dir), "check_file": str(check_file)}
