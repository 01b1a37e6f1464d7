"""The checked LoRA merge: fold an export's adapter into a full-precision base and write a plain classifier export.

Top LMSYS teams saw merges of QLoRA adapters degrade scores (the adapter learnt on the quantised base, the merged model
uses the de-quantised one), so the check is part of the merge: max |logit difference| merged vs the unmerged model as
trained, on held-out rows, recorded in the merged export's metadata, and a limit above which the merge is refused.
"""

from __future__ import annotations

import os
from typing import Sequence

from arena_dist.errors import ArenaDistError


class MergeCheckError(ArenaDistError):
    """The merged model's logits differ from the unmerged model's by more than the configured limit."""


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


def merge_export(export_dir: str | os.PathLike, out_dir: str | os.PathLike, check_sequences: Sequence[Sequence[int]],
                 max_logit_diff: float | None = None, dtype: str = "float32", trust_remote_code: bool = False) -> dict:
    """Merge the adapter into a full-precision base, check logits against the unmerged model as trained (quantised
    base + adapter) and against the unmerged full-precision model, and write a plain classifier export.
    `trust_remote_code`: the student config's own (`model.trust_remote_code`), as for its training."""
    import numpy as np

    from arena_dist.models.config import ModelConfig
    from arena_dist.models.export import load_export, read_export_meta, save_export

    meta = read_export_meta(export_dir)
    quantization = meta.get("quantization", "none")
    as_trained, tokenizer, _ = load_export(export_dir, dtype=dtype, quantization=quantization,
                                           trust_remote_code=trust_remote_code)
    if quantization != "none":
        from arena_dist.models.quant import keep_training_layout

        keep_training_layout(as_trained)  # the kernels the adapter was trained with
    pad_id = int(meta["pad_token_id"])
    reference = logits_of(as_trained, check_sequences, pad_id)
    del as_trained
    unmerged_fp, _, _ = load_export(export_dir, dtype=dtype, quantization="none", trust_remote_code=trust_remote_code)
    unmerged_fp_logits = logits_of(unmerged_fp, check_sequences, pad_id)
    merged = unmerged_fp.merge_and_unload()
    merged_logits = logits_of(merged, check_sequences, pad_id)
    report = {
        "rows": len(check_sequences),
        "max_abs_logit_diff": float(np.abs(merged_logits - reference).max()),
        "max_abs_logit_diff_vs_unmerged_full_precision": float(np.abs(merged_logits - unmerged_fp_logits).max()),
        "argmax_agreement": float((merged_logits.argmax(1) == reference.argmax(1)).mean()),
        "limit": max_logit_diff,
        "compared_to": f"unmerged, base quantization={meta.get('quantization', 'none')}",
    }
    report["passed"] = max_logit_diff is None or report["max_abs_logit_diff"] <= max_logit_diff
    if not report["passed"]:
        raise MergeCheckError(
            f"merge refused: max |logit difference| merged vs unmerged = {report['max_abs_logit_diff']:.4g} > "
            f"merge.max_logit_diff = {max_logit_diff} on {report['rows']} held-out rows ({export_dir})")
    model_config = ModelConfig(**{**meta["model_config"], "lora": None, "quantization": "none"})
    merged_meta = {k: v for k, v in meta.items()
                   if k not in ("lora", "base_dir", "num_labels", "pad_token_id", "head", "base", "model_config")}
    merged_meta.update(merged_from=str(export_dir), merge_check=report, quantization="none")
    save_export(merged, tokenizer, out_dir, merged_meta, model_config=model_config)
    return report
