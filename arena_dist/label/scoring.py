"""Scoring encoded rows with a sequence classifier: token-budget batches, both orders, probabilities back in order.

Also `TeacherScorer`, the plain object a Ray actor wraps: it loads one teacher export once and scores whole input
shards. Keeping it Ray-free lets the single-process path, the tests' reference and predict use the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from arena_dist.label.batching import PaddingStats, pad_right, padding_stats, token_budget_batches
from arena_dist.label.probs import swap_average, swap_back


def model_pad_id(model) -> int:
    pad_id = model.config.get_text_config().pad_token_id
    if pad_id is None:
        raise ValueError("the classifier has no pad_token_id: batched scoring cannot find each row's last token")
    return int(pad_id)


def input_device(model) -> torch.device:
    """Where inputs go: the embedding's device (the first shard when accelerate spreads the model over GPUs)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


@contextlib.contextmanager
def upcast(model):
    """The model's 16-bit weights in float32 while inside, then back exactly; bitsandbytes 4-bit layers compute in
    float32 meanwhile. Not a lazily built float32 copy: on a 16 GB T4 a second copy (4 bytes a parameter) does not fit
    beside the first, while this holds none and widens only the unquantised weights of a 4/8-bit student."""
    half = (torch.float16, torch.bfloat16)
    saved = [(t, t.dtype) for t in (*model.parameters(), *model.buffers()) if t.dtype in half]
    layers = [(m, m.compute_dtype) for m in model.modules() if getattr(m, "compute_dtype", None) in half]
    for tensor, _ in saved:
        tensor.data = tensor.data.float()
    for layer, _ in layers:
        layer.compute_dtype = torch.float32
    try:
        yield
    finally:
        for tensor, dtype in saved:
            tensor.data = tensor.data.to(dtype)
        for layer, dtype in layers:
            layer.compute_dtype = dtype


def _logits(model, rows, pad_id: int, device) -> torch.Tensor:
    ids, mask = pad_right(rows, pad_id)
    # No K/V cache: a classification forward never decodes, and the cache (on by default in the model configs) costs
    # about 2.8 GB per 8k-token batch for Gemma-2-9B, a fifth of a T4.
    return model(input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device),
                 use_cache=False).logits.float()


@torch.inference_mode()
def score_token_ids(
    model,
    sequences: Sequence[Sequence[int]],
    max_tokens: int,
    max_rows: int | None = None,
    pad_id: int | None = None,
) -> tuple[np.ndarray, PaddingStats]:
    """Class probabilities (rows in the given order) and the padding of the batches that computed them.

    Right padding: the classifier pools the rightmost non-pad token, so a row must not end in the pad id. Rows with
    NaN / inf logits (fp16 overflow, e.g. Gemma-2) are computed again alone in float32, counted as `fp32_rows`; a
    row still non-finite then is an error, never a NaN probability.
    """
    pad_id = model_pad_id(model) if pad_id is None else pad_id
    for position, seq in enumerate(sequences):
        if not seq or seq[-1] == pad_id:
            raise ValueError(f"row {position} is empty or ends with the pad token: its last token cannot be pooled")
    lengths = [len(seq) for seq in sequences]
    batches = token_budget_batches(lengths, max_tokens, max_rows)
    device = input_device(model)
    num_labels = model.config.num_labels
    out = np.empty((len(sequences), num_labels), dtype=np.float64)
    fp32_rows = 0
    for batch in batches:
        logits = _logits(model, [sequences[i] for i in batch], pad_id, device)
        bad = (~torch.isfinite(logits).all(dim=-1)).nonzero().flatten().tolist()
        if bad:
            with upcast(model):
                logits[bad] = _logits(model, [sequences[batch[r]] for r in bad], pad_id, device)
            fp32_rows += len(bad)
            still = sorted(batch[r] for r in bad if not torch.isfinite(logits[r]).all())
            if still:  # never a NaN probability in a label store or a submission
                raise FloatingPointError(f"rows {still[:5]} (of {len(still)}) have non-finite logits even in float32")
        out[batch] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out, dataclasses.replace(padding_stats(lengths, batches), fp32_rows=fp32_rows)


@dataclass
class ScoredRows:
    ids: list[str]
    p_ab: np.ndarray
    p_ba_mapped: np.ndarray | None
    p_mean: np.ndarray
    stats: PaddingStats


def teacher_extra_texts(records, extra_inputs: Sequence[str], swapped: bool) -> list[str | None] | None:
    """Teacher-only side inputs (e.g. model names) exactly as the teacher saw them in training, in the row's order."""
    kinds = [kind for kind in extra_inputs or [] if kind != "none"]
    if not kinds:
        return None
    from arena_dist.train.data import extra_text

    texts = []
    for record in records:
        parts = [extra_text(record, kind, swapped) for kind in kinds]
        texts.append("\n".join(p for p in parts if p) or None)
    return texts


def score_records(model, tokenizer, fmt, records, max_tokens: int, swap_tta: bool = True,
                  max_rows: int | None = None, extra_inputs: Sequence[str] = ()) -> ScoredRows:
    """Both orders (A,B) and (B,A) of every record; the swapped probabilities mapped back to (A,B) and averaged.

    The two orders go through the batcher together, so each length bucket is filled from both. `extra_inputs`: the
    export's `teacher_extra_inputs` (side text the teacher was trained with; swapped along with A and B).
    """
    from arena_dist.formatting.encode import encode_records

    def encode(swap: bool):
        extras = teacher_extra_texts(records, extra_inputs, swap)
        return encode_records(records, tokenizer, fmt, swap=swap, extra_texts=extras)

    rows = encode(False)
    sequences = [row.input_ids for row in rows]
    if swap_tta:
        sequences += [row.input_ids for row in encode(True)]
    probs, stats = score_token_ids(model, sequences, max_tokens, max_rows)
    n = len(rows)
    p_ab = probs[:n]
    p_ba_mapped = swap_back(probs[n:]) if swap_tta else None
    return ScoredRows([row.id for row in rows], p_ab, p_ba_mapped, swap_average(p_ab, p_ba_mapped), stats)


def format_from_meta(meta: dict):
    """The teacher's own input format, from its export metadata (a student never guesses it)."""
    from arena_dist.formatting.templates import FormatConfig

    if isinstance(meta.get("format"), dict):
        return FormatConfig(**meta["format"])
    fields = {key: meta[key] for key in FormatConfig.model_fields if key in meta}
    return FormatConfig(**fields)


class TeacherScorer:
    """One teacher export loaded once; scores whole input shards. Wrapped by the Ray actor in `driver`."""

    def __init__(self, export_path: str, dtype: str = "float32", quantization: str = "none",
                 gpus: float = 0, threads: int | None = None, trust_remote_code: bool = False,
                 secrets=None, base_path: str | None = None):
        """`trust_remote_code`: the label config's, handed over by the driver. `secrets`: the driver's hub token
        (`arena_dist.worker_env.SecretEnv`), set in this process before anything is loaded. `base_path`: where a LoRA
        export's base is now (`load_export`)."""
        from arena_dist.models.export import load_export
        from arena_dist.quiet import silence_known_warnings
        from arena_dist.worker_env import apply_secrets

        silence_known_warnings()  # an actor is a process of its own: the driver's filters do not reach it
        apply_secrets(secrets)
        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        # More than one GPU per actor: accelerate spreads the layers over them (teachers bigger than one GPU);
        # Ray has already narrowed CUDA_VISIBLE_DEVICES to this actor's GPUs.
        device_map = "auto" if gpus > 1 else ("cuda:0" if gpus > 0 and torch.cuda.is_available() else None)
        from arena_dist.models.build import device_dtype

        self.model, self.tokenizer, self.meta = load_export(export_path, dtype=device_dtype(dtype),
                                                            device_map=device_map,
                                                            quantization=quantization,
                                                            trust_remote_code=trust_remote_code,
                                                            base_path=base_path)
        if self.tokenizer is None:
            raise ValueError(f"{export_path}: the export carries no tokenizer")
        self.format = format_from_meta(self.meta)
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict:
        return {"pid": os.getpid(), "load_seconds": round(self.load_seconds, 3),
                "num_labels": int(self.model.config.num_labels), "threads": torch.get_num_threads()}

    def score_shard(self, path: str, max_tokens: int, max_rows: int | None = None, swap_tta: bool = True) -> dict:
        from arena_dist.data.store import read_shard
        from arena_dist.io import sha256_file

        started, cpu_started = time.perf_counter(), time.process_time()
        records = read_shard(path)
        scored = score_records(self.model, self.tokenizer, self.format, records, max_tokens, swap_tta, max_rows,
                               self.meta.get("teacher_extra_inputs") or ())
        return {
            "path": str(path),
            "input_sha256": sha256_file(path),  # what this actor actually read; the driver compares it
            "ids": scored.ids,
            "p_ab": scored.p_ab,
            "p_ba_mapped": scored.p_ba_mapped,
            "p_mean": scored.p_mean,
            "stats": scored.stats.as_dict(),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "pid": os.getpid(),
            "name": Path(path).name,
        }
