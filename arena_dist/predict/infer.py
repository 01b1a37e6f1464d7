"""Model probabilities for test records: token-budget batches (the label stage's batcher), swap-TTA on all rows or
on the most uncertain fraction, and an optional second model on the rows the first is least sure of.

Uncertainty is the entropy of the first model's probabilities (after its TTA). Swap-TTA scores (B, A) and maps the
probabilities back (the swapped "A" is the original B); the two orders are averaged. The blend on the selected rows
is (1 − w)·p_first + w·p_second; the other rows keep p_first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from arena_dist.classes import to_classes


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    meta: dict
    fmt: object

    @property
    def num_labels(self) -> int:
        return int(self.meta["num_labels"])


@dataclass
class Prediction:
    probs: np.ndarray  # rows x classes, in the test file's order
    swapped: np.ndarray  # bool per row: swap-TTA applied
    second: np.ndarray  # bool per row: the second model was blended in
    stats: dict = field(default_factory=dict)


def load_model(export_path: str, dtype: str = "float32", quantization: str = "auto", threads: int | None = None,
               trust_remote_code: bool = False, base_path: str | None = None):
    """`trust_remote_code`: the predict config's (an export that ships code is refused without it). `base_path`:
    where a LoRA export's base is now (`load_export`)."""
    import torch

    from arena_dist.label.scoring import format_from_meta
    from arena_dist.models.build import device_dtype
    from arena_dist.models.export import load_export, read_export_meta
    from arena_dist.quiet import silence_known_warnings

    silence_known_warnings()  # also when run() is called without the CLI (notebooks, tests)

    if threads:
        torch.set_num_threads(threads)
    meta = read_export_meta(export_path)
    if quantization == "auto":
        quantization = meta.get("quantization", "none")
    model, tokenizer, meta = load_export(export_path, dtype=device_dtype(dtype), quantization=quantization,
                                         trust_remote_code=trust_remote_code, base_path=base_path)
    if quantization != "none":
        from arena_dist.models.quant import keep_training_layout

        keep_training_layout(model)  # the kernels the student was trained and evaluated with
    if tokenizer is None:
        from arena_dist.errors import InputError

        raise InputError(f"{export_path}: the export carries no tokenizer")
    if torch.cuda.is_available() and quantization == "none":
        model.to("cuda")
    return LoadedModel(model, tokenizer, meta, format_from_meta(meta))


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def most_uncertain(probs: np.ndarray, fraction: float) -> np.ndarray:
    """Bool mask of the ceil(fraction·n) rows with the highest entropy (ties broken by row order)."""
    n = len(probs)
    k = min(n, math.ceil(fraction * n))
    order = np.lexsort((np.arange(n), -entropy(probs)))  # highest entropy first, then row order
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask


def score(loaded: LoadedModel, records, swap: bool, max_tokens: int, max_rows: int | None):
    from arena_dist.formatting.encode import encode_records
    from arena_dist.label.probs import swap_back
    from arena_dist.label.scoring import score_token_ids

    rows = encode_records(records, loaded.tokenizer, loaded.fmt, swap=swap)
    probs, stats = score_token_ids(loaded.model, [row.input_ids for row in rows], max_tokens, max_rows)
    return (swap_back(probs) if swap else probs), stats


def predict_with_tta(loaded: LoadedModel, records, tta_mode: str, tta_fraction: float, max_tokens: int,
                     max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """-> (probabilities, swapped mask, stats)."""
    probs, stats = score(loaded, records, False, max_tokens, max_rows)
    swapped = np.zeros(len(records), dtype=bool)
    if tta_mode == "all":
        swapped[:] = True
    elif tta_mode == "uncertain":
        swapped = most_uncertain(probs, tta_fraction)
    total = stats
    if swapped.any():
        picked = [records[i] for i in np.flatnonzero(swapped)]
        back, swap_stats = score(loaded, picked, True, max_tokens, max_rows)
        probs = probs.copy()
        probs[swapped] = (probs[swapped] + back) / 2
        total = total + swap_stats
    return probs, swapped, {"padding": total.as_dict(), "swapped_rows": int(swapped.sum())}


def predict(records, first: LoadedModel, num_classes: int, tta_mode: str = "all", tta_fraction: float = 0.3,
            max_tokens: int = 16384, max_rows: int | None = None, second: LoadedModel | None = None,
            second_fraction: float = 0.3, second_weight: float = 0.5, second_tta: bool = True) -> Prediction:
    probs, swapped, stats = predict_with_tta(first, records, tta_mode, tta_fraction, max_tokens, max_rows)
    probs = to_classes(probs, num_classes)
    blended = np.zeros(len(records), dtype=bool)
    if second is not None:
        blended = most_uncertain(probs, second_fraction)
        picked = [records[i] for i in np.flatnonzero(blended)]
        if picked:
            p2, _, stats2 = predict_with_tta(second, picked, "all" if second_tta else "none", 1.0, max_tokens,
                                             max_rows)
            probs = probs.copy()
            probs[blended] = (1 - second_weight) * probs[blended] + second_weight * to_classes(p2, num_classes)
            stats["second_model"] = {"rows": int(blended.sum()), "weight": second_weight, **stats2}
    return Prediction(probs, swapped, blended, stats)
