"""Padding-free micro-batches (`training.micro_batch_tokens`): the rows of a global step are packed into micro-batches
of at most that many tokens, each micro-batch one row of concatenated examples whose `position_ids` restart at 0 for
every example.

Attention never crosses examples: transformers reads a packed row from `position_ids` when no attention mask is
given (`masking_utils.find_packed_sequence_indices`) and builds a block-diagonal causal mask for eager and sdpa (and
passes the boundaries to flash-attention), for every model built on `create_causal_mask` /
`create_sliding_window_causal_mask` (`PACKABLE_MODEL_TYPES`, checked in the tests). eager and sdpa then run per
example on the mask's diagonal blocks (`arena_dist.models.packed_attention`), not over the whole square.

The classifier reads each example's last token, not the pack's: the head (`score`: linear, MLP or verbaliser) runs on
every position inside the model's own forward, and a forward hook takes its output at the examples' end positions.
The model is still called as a whole (the DeepSpeed engine, PEFT and ZeRO-3's hooks on the root module stay in the
path); transformers' own pooling of the pack's last token is discarded. Segment embeddings derive a token's part
from the markers before it, so they are computed per example: hooks around the segment module hand it the examples
as a padded (examples, longest) batch and put its output back in the packed layout.

Hand-written because no library packs a classification batch: transformers' `DataCollatorWithFlattening` packs
causal-LM batches (labels per token), and its classifiers pool one token per batch row.

Planning is a pure function of the token lengths of a global step's rows, so every rank computes the same plan, a
step consumes the same rows whatever the world size, and a resumed run replays it exactly.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

from arena_dist.errors import ConfigError
from arena_dist.train.data import Example, targets

# Models whose masks come from transformers' masking utilities, which detect packed position_ids.
PACKABLE_MODEL_TYPES = ("llama", "qwen2", "gemma2")
SCORE, SEGMENTS = "score", "segment_embedding"


def pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: row indices grouped into packs of at most `budget` tokens; a row longer than the budget
    is a pack of its own. Deterministic (ties keep the row order)."""
    packs: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = next((p for p, left in enumerate(room) if lengths[row] <= left), None)
        if fits is None:
            packs.append([row])
            room.append(budget - lengths[row])
        else:
            packs[fits].append(row)
            room[fits] -= lengths[row]
    return packs


def _tokens(pack: list[int], lengths: Sequence[int]) -> int:
    return sum(lengths[i] for i in pack)


def plan_step(lengths: Sequence[int], world_size: int, budget: int) -> list[list[list[int]]]:
    """Per rank, its packs (lists of row indices of the global step). Every rank gets the same number of packs
    (ZeRO-3's forwards and backwards are collective): after packing, the packs with the most rows are split until
    the count is a multiple of the world size (always possible: a global batch has at least one row per rank), then
    packs go, largest first, to the rank with the fewest tokens among those still short of packs."""
    packs = pack_rows(lengths, budget)
    per_rank = -(-len(packs) // world_size)
    while len(packs) < per_rank * world_size:
        widest = max(range(len(packs)), key=lambda p: (len(packs[p]), _tokens(packs[p], lengths), -p))
        pack = sorted(packs[widest])
        packs[widest:widest + 1] = [pack[: len(pack) // 2], pack[len(pack) // 2:]]
    ranks: list[list[list[int]]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for pack in sorted(packs, key=lambda p: (-_tokens(p, lengths), min(p))):
        rank = min((r for r in range(world_size) if len(ranks[r]) < per_rank), key=lambda r: (loads[r], r))
        ranks[rank].append(sorted(pack))
        loads[rank] += _tokens(pack, lengths)
    return ranks


def imbalance(plan: list[list[list[int]]], lengths: Sequence[int]) -> float:
    """max / mean tokens per rank of a step plan (1.0: perfectly even)."""
    loads = [sum(_tokens(p, lengths) for p in packs) for packs in plan]
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean else 1.0


def step_denominators(examples: Sequence[Example]) -> dict[str, int]:
    """Rows of the global step with each kind of target: every loss term is a mean over these."""
    return {"hard": sum(e.label is not None for e in examples), "soft": sum(e.soft is not None for e in examples),
            "rows": len(examples)}


def collate_packed(examples: Sequence[Example]) -> dict:
    """One packed row: `input_ids` and `position_ids` (1, tokens), `row_lengths` (examples,), and the per-example
    targets of `collate` (`labels`, `soft`, `soft_mask`)."""
    import torch

    ids = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.long)[None]
    positions = torch.cat([torch.arange(len(e.input_ids)) for e in examples])[None]
    return {"input_ids": ids, "position_ids": positions,
            "row_lengths": torch.tensor([len(e.input_ids) for e in examples], dtype=torch.long), **targets(examples)}


def _named(model, name: str):
    """The outermost module called `name` (PEFT's ModulesToSaveWrapper, which runs the trained copy), or None."""
    return next((m for path, m in model.named_modules() if path.rsplit(".", 1)[-1] == name), None)


def prepare_packing(model) -> str:
    """ConfigError unless `model` is a classifier whose attention honours packed position_ids; then eager and sdpa
    are switched to their per-example variants (`arena_dist.models.packed_attention`: the same results, at a cost
    linear in a pack's examples instead of quadratic in its tokens). Returns the attention kernel in use."""
    from arena_dist.models.packed_attention import use_per_example_attention

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        raise ConfigError(f"training.micro_batch_tokens: model type {model_type!r} is not known to honour packed "
                          f"position_ids (supported: {', '.join(PACKABLE_MODEL_TYPES)}); set it to null")
    if _named(model, SCORE) is None:
        raise ConfigError("training.micro_batch_tokens: the model has no `score` head to read per-row logits from")
    return use_per_example_attention(model)


@contextlib.contextmanager
def _per_row_segments(module, row_lengths):
    """While active, `module` (SegmentEmbedding) sees the packed row as a padded batch of its examples."""
    import torch

    lengths = row_lengths.tolist()
    device = row_lengths.device
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=device), row_lengths)
    columns = torch.cat([torch.arange(n, device=device) for n in lengths])

    def unpack(args):
        ids, embeddings = args
        padded_ids = ids.new_zeros((len(lengths), max(lengths)))
        padded_ids[rows, columns] = ids[0]
        padded = embeddings.new_zeros((len(lengths), max(lengths), embeddings.shape[-1]))
        padded[rows, columns] = embeddings[0]
        return padded_ids, padded

    handles = [module.register_forward_pre_hook(lambda _, args: unpack(args)),
               module.register_forward_hook(lambda _, args, output: output[rows, columns][None])]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def packed_logits(runner, model, inputs: dict):
    """(examples, classes) logits of a packed micro-batch (`collate_packed`'s inputs, on the model's device).
    `runner`: what runs the forward (the DeepSpeed engine or the model); `model`: the module it wraps."""
    import torch

    row_lengths = inputs["row_lengths"]
    ends = torch.cumsum(row_lengths, 0) - 1
    captured = []
    head = _named(model, SCORE)
    handle = head.register_forward_hook(lambda _, args, output: captured.append(output))
    segments = _named(model, SEGMENTS)
    per_row = _per_row_segments(segments, row_lengths) if segments is not None else contextlib.nullcontext()
    try:
        with per_row:
            # No cache: transformers reads packed position_ids only without one (`_preprocess_mask_arguments`).
            runner(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the score head ran {len(captured)} times in one forward (expected once)")
    return captured[0][0, ends.to(captured[0].device)]
