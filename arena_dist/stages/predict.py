"""`arena-dist predict`: a competition test file -> a checked submission (+ full probabilities for evaluate).

LMSYS test.csv -> `id, winner_model_a, winner_model_b, winner_tie`; WSDM test.parquet -> `id, winner`. The model is
any arena_dist export (a student's adapter export is rebuilt on its quantised base). Inference is one process (a
Kaggle-style box: one GPU, or CPU here) with the label stage's token-budget batches. Outputs in `output_dir`: the
submission (checked before it is written: every test id once, values in [0, 1], rows summing to 1),
probabilities.parquet (id, the three LMSYS columns for every competition, language, swap / second-model flags),
predict_summary.json and resolved_config.yaml.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from arena_dist.config import StrictModel, save_resolved_config

Quantization = Literal["auto", "none", "4bit", "8bit"]


class ModelSpec(StrictModel):
    export_path: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Quantization = "auto"  # auto: as the export was trained (its metadata)
    # Run Python code shipped inside the export (transformers `auto_map`). Only this setting turns it on, never the
    # export itself: an export that ships code is refused while it is False.
    trust_remote_code: bool = False
    # A LoRA export's base model, when it is no longer where training found it (another machine, a moved folder).
    base_path: str | None = None


class TTA(StrictModel):
    mode: Literal["none", "all", "uncertain"] = "all"
    fraction: float = Field(0.3, gt=0, le=1)  # share of rows (highest entropy) that get swap-TTA in "uncertain" mode


class SecondModel(ModelSpec):
    fraction: float = Field(0.3, gt=0, le=1)  # share of rows, the most uncertain after the first model's TTA
    weight: float = Field(0.5, ge=0, le=1)  # blend: (1 - weight) * first + weight * second on those rows
    swap_tta: bool = True


class Batching(StrictModel):
    max_tokens: int = Field(16384, gt=0)  # padded tokens (rows x longest row) per forward pass
    max_rows: int | None = Field(None, gt=0)


class Config(StrictModel):
    test_file: str
    output_dir: str
    competition: Literal["auto", "lmsys", "wsdm"] = "auto"  # auto: .csv -> lmsys, .parquet -> wsdm
    model: ModelSpec
    second_model: SecondModel | None = None
    tta: TTA = TTA()
    batching: Batching = Batching()
    submission_name: str = "submission.csv"
    threads: int | None = Field(None, gt=0)


def check_models(config: Config) -> None:
    """Both exports are checked for shipped code before either is loaded, naming the setting to turn on."""
    from arena_dist.models.export import check_remote_code

    check_remote_code(config.model.export_path, config.model.trust_remote_code, "model.trust_remote_code",
                      config.model.base_path)
    if config.second_model is not None:
        check_remote_code(config.second_model.export_path, config.second_model.trust_remote_code,
                          "second_model.trust_remote_code", config.second_model.base_path)


def run(config: Config) -> dict:
    import pandas as pd

    from arena_dist.artefacts import write_artefact
    from arena_dist.classes import to_classes
    from arena_dist.errors import ConfigError
    from arena_dist.io import atomic_path, atomic_write_json, claim_output_dir
    from arena_dist.predict.infer import load_model, predict
    from arena_dist.predict.submission import build_submission, write_submission
    from arena_dist.predict.testfile import read_test_file

    started = time.perf_counter()
    out = claim_output_dir(config.output_dir, "output_dir")
    ids, records, counts = read_test_file(config.test_file, config.competition)
    competition = counts["competition"]
    check_models(config)
    first = load_model(config.model.export_path, config.model.dtype, config.model.quantization, config.threads,
                       config.model.trust_remote_code, config.model.base_path)
    if competition == "lmsys" and first.num_labels != 3:
        raise ConfigError(f"model.export_path: a {first.num_labels}-class model cannot predict LMSYS ties "
                          f"({config.model.export_path})")
    second = None
    if config.second_model is not None:
        s = config.second_model
        second = load_model(s.export_path, s.dtype, s.quantization, config.threads, s.trust_remote_code,
                            s.base_path)
    num_classes = 3 if competition == "lmsys" else 2
    print(f"predict: {len(ids)} test rows ({counts['lenient_rows']} kept leniently), competition {competition}, "
          f"tta {config.tta.mode}" + (f", second model on {config.second_model.fraction:.0%}" if second else ""),
          flush=True)
    result = predict(records, first, num_classes, config.tta.mode, config.tta.fraction, config.batching.max_tokens,
                     config.batching.max_rows, second,
                     config.second_model.fraction if second else 0.0,
                     config.second_model.weight if second else 0.0,
                     config.second_model.swap_tta if second else True)
    frame = build_submission(ids, result.probs, competition)
    submission = write_submission(out / config.submission_name, frame, ids, competition)

    three = to_classes(result.probs, 3)
    probabilities = pd.DataFrame({"id": ids, "winner_model_a": three[:, 0], "winner_model_b": three[:, 1],
                                  "winner_tie": three[:, 2], "language": [r["language"] for r in records],
                                  "swap_tta": result.swapped, "second_model": result.second})
    with atomic_path(out / "probabilities.parquet") as tmp:
        probabilities.to_parquet(tmp, index=False)
    seconds = time.perf_counter() - started
    summary = {"rows": len(ids), "competition": competition, "submission": str(submission),
               "probabilities": str(out / "probabilities.parquet"), "seconds": seconds,
               "rows_per_second": len(ids) / seconds, **{k: v for k, v in counts.items() if k != "competition"},
               **result.stats}
    atomic_write_json(out / "predict_summary.json", summary)
    save_resolved_config(config, out)
    write_artefact(
        out, "predict", config,
        inputs={"test_file": config.test_file, "model": config.model.export_path,
                "second_model": config.second_model.export_path if config.second_model else None},
        outputs={"submission": submission, "probabilities": out / "probabilities.parquet",
                 "summary": out / "predict_summary.json"},
        rows=len(ids), metrics={"rows_per_second": summary["rows_per_second"],
                                "padding_ratio": result.stats["padding"]["padding_ratio"],
                                "fp32_rows": result.stats["padding"]["fp32_rows"]},
        headline="rows_per_second",
    )
    print(f"predict: wrote {submission} ({len(ids)} rows, {seconds:.1f} s, padding ratio "
          f"{result.stats['padding']['padding_ratio']:.3f})", flush=True)
    return summary
