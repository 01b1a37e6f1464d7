"""Checked LoRA merges: N >= 1 LoRA exports of one student (its fold models) -> one model, checked against what it
replaces.

- `average`: one LoRA export whose adapter is the weighted average of the folds' weight deltas, sum_i w_i s_i B_i A_i
  (PEFT `add_weighted_adapter`, combination "cat": exact, rank sum_i r_i), and whose fully trained modules (head,
  segment embeddings: modules_to_save) are the weighted average of the folds'. It stays on the base the student was
  trained with, quantised or not: top LMSYS teams saw QLoRA adapters merged into a de-quantised base score worse (the
  adapter learnt to correct the quantised weights, which the de-quantised base no longer has).
- `into_base`: the same average merged into a full-precision base, written as a plain classifier export (what the
  student stage's single-export merge writes, `merge_export`).

The check is part of the merge: the merged model's logits against the ensemble it replaces, the weighted mean of the
fold models' logits, each fold as trained (its base quantised as in training), on held-out rows. Logits, not
probabilities: a weight average is, to first order, an average of the models' outputs before the softmax (the head
is linear in its weights), so the logit mean is what a merge can reproduce; it is also the scale the single-export
check and its limits use, and probabilities near 0 or 1 would hide differences. Max and mean |logit difference| are
recorded in the merged export's metadata, and above the configured limit the merge is refused before anything is
written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from arena_dist.errors import ArenaDistError, InputError

# Metadata every export must share with the first: what the classifier computes and on which base.
MATCHING_META = ("lora", "quantization", "label_mode", "num_labels", "head", "template", "max_length", "format",
                 "base", "attn_implementation", "segment_markers", "answer_token_ids", "teacher_extra_inputs")
# adapter_config.json keys that must match for adapters to be averaged (ranks may differ: "cat" adds them up).
MATCHING_ADAPTER = ("task_type", "target_modules", "modules_to_save", "bias", "use_dora", "use_rslora")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# What each fold records about its own run: kept per fold under `merged_exports`, not as the merged export's own.
PER_FOLD_META = ("fold", "final_metrics", "config_hash", "created_by", "merged_from", "merged_exports", "merge_check",
                 "merge_mode", "merge_weights")
# What `save_export` computes from the model and its ModelConfig.
SAVE_EXPORT_META = ("lora", "base_dir", "num_labels", "pad_token_id", "head", "base", "model_config", "quantization",
                    "attn_implementation", "segment_markers", "answer_token_ids", "format_version")


class MergeCheckError(ArenaDistError):
    """The merged model's logits differ from those of the models it replaces by more than the configured limit."""


def logits_of(model, sequences: Sequence[Sequence[int]], pad_id: int, max_tokens: int = 8192):
    """Raw logits (float64 numpy, rows in order) with the label stage's token-budget batches."""
    import numpy as np
    import torch

    from arena_dist.label.batching import pad_right, token_budget_batches
    from arena_dist.label.scoring import input_device

    device = input_device(model)
    out = None
    with torch.inference_mode():
        for batch in token_budget_batches([len(s) for s in sequences], max_tokens):
            ids, mask = pad_right([sequences[i] for i in batch], pad_id)
            logits = model(input_ids=torch.tensor(ids, device=device),
                           attention_mask=torch.tensor(mask, device=device)).logits.float().cpu().numpy()
            if out is None:
                out = np.empty((len(sequences), logits.shape[1]), dtype=np.float64)
            out[batch] = logits
    return out


# ------------------------------------------------------------------------------------------------- compatibility
def _adapter_config(path: Path) -> dict:
    import json

    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path / 'adapter_config.json'}: unreadable adapter config ({exc})") from None
    targets = config.get("target_modules")
    config["target_modules"] = sorted(targets) if isinstance(targets, list) else targets
    config["modules_to_save"] = sorted(set(config.get("modules_to_save") or []))
    return config


def _tokenizer_digest(path: Path) -> dict:
    from arena_dist.io import sha256_file

    return {name: sha256_file(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}


def check_exports(exports: Sequence[str | os.PathLike], trust_remote_code: bool = False,
                  base_path: str | os.PathLike | None = None, setting: str = "exports") -> list[dict]:
    """The exports' metadata, after refusing (naming the export) any export that cannot be averaged with the first:
    not a LoRA export, another base / quantisation / label mode / head / format / tokenizer, LoRA layers on other
    modules, or an adapter kind whose deltas "cat" does not add up (DoRA, rsLoRA). Also refuses shipped code
    (`check_remote_code`) and a missing base, before any model is loaded."""
    from arena_dist.models.export import check_remote_code, read_export_meta

    paths = [Path(p) for p in exports]
    metas = [read_export_meta(p) for p in paths]
    for path in paths:
        check_remote_code(path, trust_remote_code, base_path=base_path)
    first, first_meta = paths[0], metas[0]
    first_adapter = _adapter_config(first) if first_meta.get("lora") else {}
    first_tokenizer = _tokenizer_digest(first)
    for index, (path, meta) in enumerate(zip(paths, metas)):
        where = f"{setting}[{index}] {path}"
        if not meta.get("lora"):
            raise InputError(f"{where}: not a LoRA export (a full model has no adapter to average)")
        if not meta.get("model_config"):
            raise InputError(f"{where}: the export metadata has no model_config (written by an older version)")
        for key in MATCHING_META:
            if meta.get(key) != first_meta.get(key):
                raise InputError(f"{where}: {key} {meta.get(key)!r} differs from {first}'s {first_meta.get(key)!r}; "
                                 "only exports of one student on one base can be merged")
        adapter = _adapter_config(path)
        for key in MATCHING_ADAPTER:
            if adapter.get(key) != first_adapter.get(key):
                raise InputError(f"{where}: adapter {key} {adapter.get(key)!r} differs from {first}'s "
                                 f"{first_adapter.get(key)!r}")
        if adapter.get("use_dora") or adapter.get("use_rslora"):
            raise InputError(f"{where}: a DoRA / rsLoRA adapter cannot be averaged by concatenation")
        if _tokenizer_digest(path) != first_tokenizer:
            raise InputError(f"{where}: its tokenizer files differ from {first}'s")
    return metas


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {count} numbers >= 0 with a positive sum (got {list(weights)})")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


# ---------------------------------------------------------------------------------------------- load and average
def load_folds(exports: Sequence[str | os.PathLike], quantization: str, dtype: str, trust_remote_code: bool,
               base_path: str | os.PathLike | None, device_map=None):
    """-> (PeftModel, tokenizer, adapter names): the base once (`load_export`: quantised as given, on `device_map`;
    a quantised base goes to the GPU anyway), every export's adapter on it under its own name. A single export keeps
    PEFT's "default"; with several, "default" is left free for the average (PEFT writes only that adapter at the top
    of a folder)."""
    from arena_dist.models.export import load_export

    model, tokenizer, _ = load_export(exports[0], dtype=dtype, quantization=quantization, device_map=device_map,
                                      trust_remote_code=trust_remote_code, base_path=base_path)
    if quantization != "none":
        from arena_dist.models.quant import keep_training_layout

        keep_training_layout(model)  # the kernels the adapters were trained and evaluated with
    if len(exports) == 1:
        return model, tokenizer, ["default"]
    names = [f"fold_{index}" for index in range(len(exports))]
    for name, path in zip(names, exports):
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    model.set_adapter(names[0])
    model.delete_adapter("default")  # the first export's adapter, loaded again as fold_0
    return model, tokenizer, names


def _saved_module_wrappers(model) -> list:
    from peft.utils import ModulesToSaveWrapper

    return [module for module in model.modules() if isinstance(module, ModulesToSaveWrapper)]


def _weighted_state(states: list[dict], weights: Sequence[float]) -> dict:
    """sum_i w_i state_i for floating tensors (accumulated in float32); other tensors must be equal."""
    import torch

    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = sum(w * state[key].float() for w, state in zip(weights, states))
            out[key] = total.to(first.dtype)
        elif all(torch.equal(state[key], first) for state in states[1:]):
            out[key] = first
        else:
            raise ValueError(f"modules_to_save tensor {key} is not floating point and differs between the exports")
    return out


def average_adapters(model, names: Sequence[str], weights: Sequence[float]) -> None:
    """Replace the adapters `names` by their weighted average, adapter "default", active.

    LoRA: PEFT's `add_weighted_adapter` with combination "cat" (A = [w_i s_i A_i], B = [B_i], scaling 1), whose delta
    is exactly sum_i w_i s_i B_i A_i. PEFT refuses adapters that each carry a fully trained copy of one module
    (modules_to_save), which every student export has (its head), and would give the new adapter an untrained copy:
    so those copies are averaged here first, taken out of the way, and put into the new adapter after."""
    wrappers = _saved_module_wrappers(model)
    averaged = [_weighted_state([wrapper.modules_to_save[name].state_dict() for name in names], weights)
                for wrapper in wrappers]
    for wrapper in wrappers:
        for name in names:
            wrapper.delete_adapter(name, new_active_adapters=None)
    model.add_weighted_adapter(list(names), list(weights), "default", combination_type="cat")
    for wrapper, state in zip(wrappers, averaged):
        wrapper.modules_to_save["default"].load_state_dict(state)
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)
    model.eval()


# ------------------------------------------------------------------------------------------------------ the merge
@dataclass
class Merge:
    """A merged model that passed its check, not yet written (`save`)."""

    model: object
    tokenizer: object
    meta: dict
    model_config: object
    report: dict
    logits: dict = field(default_factory=dict)  # merged / ensemble / folds: float64 arrays on the check rows

    def save(self, out_dir: str | os.PathLike) -> Path:
        from arena_dist.models.export import save_export

        return save_export(self.model, self.tokenizer, out_dir, self.meta, model_config=self.model_config)


def _check_report(merged, ensemble, folds: list, limit: float | None, compared_to: str) -> dict:
    import numpy as np

    diff = np.abs(merged - ensemble)
    report = {
        "rows": int(len(merged)),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "argmax_agreement": float((merged.argmax(1) == ensemble.argmax(1)).mean()),
        # how far the folds themselves are from their mean: the scale the merge's difference compares with
        "fold_spread_max_abs_logit_diff": float(max(np.abs(fold - ensemble).max() for fold in folds)),
        "limit": limit,
        "compared_to": compared_to,
    }
    report["passed"] = limit is None or report["max_abs_logit_diff"] <= limit
    return report


def _merged_meta(metas: list[dict], exports: Sequence[str | os.PathLike], weights: list[float], mode: str,
                 report: dict) -> dict:
    first = metas[0]
    meta = {key: value for key, value in first.items() if key not in SAVE_EXPORT_META + PER_FOLD_META}
    meta.update(
        created_by="arena_dist merge", merge_mode=mode, merge_weights=weights, merge_check=report,
        merged_from=[str(path) for path in exports],
        merged_exports=[{"path": str(path), **{key: m.get(key) for key in ("fold", "config_hash", "final_metrics")}}
                        for path, m in zip(exports, metas)])
    return meta


def merge_exports(exports: Sequence[str | os.PathLike], check_sequences: Sequence[Sequence[int]],
                  weights: Sequence[float] | None = None, mode: str = "average", max_logit_diff: float | None = None,
                  dtype: str = "float32", trust_remote_code: bool = False,
                  base_path: str | os.PathLike | None = None, setting: str = "max_logit_diff",
                  device_map=None, progress=None) -> Merge:
    """Average the exports' adapters (`mode`: "average" keeps the adapter on the trained base, "into_base" merges
    it into a full-precision base) and check the result against the weighted mean of the fold models' logits on
    `check_sequences`; raises MergeCheckError (naming `setting`) above `max_logit_diff`, before anything is written.
    `trust_remote_code` / `base_path`: the calling stage's settings (`load_export`). `device_map`: where a
    full-precision base goes (`load_export`; default the CPU). `progress`: called with the number of rows after each
    pass over the check rows."""
    import numpy as np

    from arena_dist.models.config import LoraSettings, ModelConfig

    if mode not in ("average", "into_base"):
        raise ValueError(f"unknown merge mode {mode!r} (average or into_base)")
    if not check_sequences:
        raise ValueError("a merge needs check rows to compare the merged model with the models it replaces")
    metas = check_exports(exports, trust_remote_code, base_path)
    weights = normalised_weights(weights, len(exports))
    quantization = metas[0].get("quantization", "none")
    pad_id = int(metas[0]["pad_token_id"])
    done = progress or (lambda rows: None)

    def score(model):
        logits = logits_of(model, check_sequences, pad_id)
        done(len(check_sequences))
        return logits

    model, tokenizer, names = load_folds(exports, quantization, dtype, trust_remote_code, base_path, device_map)
    folds = []
    for name in names:
        model.set_adapter(name)
        folds.append(score(model))
    ensemble = sum(w * fold for w, fold in zip(weights, folds))
    if mode == "into_base" and quantization != "none":
        del model  # the full-precision base replaces the quantised one
        model, tokenizer, names = load_folds(exports, "none", dtype, trust_remote_code, base_path, device_map)
    if len(names) > 1:
        average_adapters(model, names, weights)
    model_config = dict(metas[0]["model_config"])
    extra = {}
    if mode == "into_base":
        unmerged = score(model)
        model = model.merge_and_unload()
        model_config.update(lora=None, quantization="none")
    else:
        adapter = model.peft_config["default"]  # "cat": rank and alpha sum_i r_i, scaling 1
        targets = adapter.target_modules
        targets = sorted(targets) if isinstance(targets, (set, list)) else model_config["lora"]["target_modules"]
        model_config["lora"] = LoraSettings(**{**model_config["lora"], "r": adapter.r, "alpha": adapter.lora_alpha,
                                               "target_modules": targets}).model_dump()
    merged = score(model)
    if mode == "into_base":
        # the merge itself (adapter folded into the weights) is exact up to rounding: this says so
        extra["max_abs_logit_diff_vs_unmerged_full_precision"] = float(np.abs(merged - unmerged).max())
    what = f"the weighted mean of {len(exports)} fold models' logits" if len(exports) > 1 else "the unmerged model"
    report = _check_report(merged, ensemble, folds, max_logit_diff, f"{what}, base quantization={quantization}")
    report.update(extra, mode=mode, exports=len(exports), weights=weights)
    if not report["passed"]:
        raise MergeCheckError(
            f"merge refused: max |logit difference| merged vs {what} = {report['max_abs_logit_diff']:.4g} > "
            f"{setting} = {max_logit_diff} on {report['rows']} held-out rows ({', '.join(map(str, exports))})")
    meta = _merged_meta(metas, exports, weights, mode, report)
    return Merge(model, tokenizer, meta, ModelConfig(**model_config), report,
                 {"merged": merged, "ensemble": ensemble, "folds": folds})


def merge_export(export_dir: str | os.PathLike, out_dir: str | os.PathLike, check_sequences: Sequence[Sequence[int]],
                 max_logit_diff: float | None = None, dtype: str = "float32", trust_remote_code: bool = False) -> dict:
    """The student stage's merge: its one export merged into a full-precision base (`into_base`), checked against
    the unmerged model as trained (quantised base + adapter) and against the unmerged full-precision model, written
    as a plain classifier export. `trust_remote_code`: the student config's own (`model.trust_remote_code`)."""
    merge = merge_exports([export_dir], check_sequences, mode="into_base", max_logit_diff=max_logit_diff,
                          dtype=dtype, trust_remote_code=trust_remote_code, setting="merge.max_logit_diff")
    merge.save(out_dir)
    return merge.report
