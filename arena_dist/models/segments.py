"""Segment embeddings: per part of the comparison (other, response A, response B) a learned vector added to the token
embeddings, like BERT's token types, and a learned gate that scales them.

Why: the label depends on quality(A) - quality(B). A pretrained LLM reads the template's "##Model A" / "##Model B"
markers; a random-init model starts with near-uniform attention, so its last token sees A and B symmetrically and it
stays at the class prior for thousands of steps (bench/results/synth_learnability_findings.md). With the part of each
token in its input, and a per-part gate on the token embeddings, it learns the comparison within ~1000-2000 steps.

The segment of each token is computed from `input_ids` inside the model (a forward hook on the input embeddings), so
every stage that feeds token ids (train, label, predict, merge checks) gets it without carrying another tensor.
The marker token ids are recorded in `config.arena_segment_markers`, which `save_pretrained` writes to config.json,
so a loaded export rebuilds the same module. Model code only: no tokenizer, no distributed code.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

CONFIG_KEY = "arena_segment_markers"
MODULE_NAME = "segment_embedding"
OTHER, RESPONSE_A, RESPONSE_B = 0, 1, 2


def _ends_with(input_ids: torch.Tensor, sequence: list[int]) -> torch.Tensor:
    """(B, T) bool: True where `sequence` ends at that position."""
    hit = torch.ones_like(input_ids, dtype=torch.bool)
    for back, token in enumerate(reversed(sequence)):
        shifted = torch.zeros_like(hit)
        if back < input_ids.shape[1]:
            shifted[:, back:] = input_ids[:, : input_ids.shape[1] - back] == token
        hit &= shifted
    return hit


def segment_ids(input_ids: torch.Tensor, markers: dict) -> torch.Tensor:
    """(B, T) long: RESPONSE_A from the end of an A marker, RESPONSE_B from the end of a B marker, OTHER from the end
    of any reset sequence (a prompt marker, the closing question) and before the first marker. Vectorised: the latest
    marker of each kind up to each position wins."""
    kinds = [(OTHER, markers["reset"]), (RESPONSE_A, [markers["a"]]), (RESPONSE_B, [markers["b"]])]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    latest = []
    for _, sequences in kinds:
        hit = torch.zeros_like(input_ids, dtype=torch.bool)
        for sequence in sequences:
            hit |= _ends_with(input_ids, sequence)
        latest.append(torch.where(hit, positions, -1).cummax(dim=1).values)
    latest = torch.stack(latest, dim=-1)  # (B, T, kinds)
    winner = latest.argmax(dim=-1)
    values = torch.tensor([kind for kind, _ in kinds], device=input_ids.device)
    return torch.where(latest.max(dim=-1).values < 0, OTHER, values[winner])


class SegmentEmbedding(nn.Module):
    """(input_ids, token embeddings) -> token embeddings * (1 + gate[segment]) + embedding[segment].

    The additive vector says which part a token is in. The multiplicative gate (FiLM-style) gives every part its own
    view of the token embeddings: near-uniform attention then already averages "A's words" and "B's words" into
    different directions, so the first gradient steps can compare them. Additive vectors alone leave that to a slow,
    seed-dependent symmetry break (bench/results/synth_learnability_findings.md). `gate_std` 0 starts as the identity
    (pretrained embeddings stay as they are)."""

    def __init__(self, hidden_size: int, markers: dict, init_std: float, gate_std: float = 0.0):
        super().__init__()
        self.markers = markers
        self.embedding = nn.Embedding(3, hidden_size)
        self.gate = nn.Parameter(torch.empty(3, hidden_size))
        nn.init.normal_(self.embedding.weight, std=init_std)
        nn.init.normal_(self.gate, std=gate_std)

    def forward(self, input_ids: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        segments = segment_ids(input_ids, self.markers)
        gate = 1.0 + nn.functional.embedding(segments, self.gate)
        return token_embeddings * gate.to(token_embeddings.dtype) + self.embedding(segments).to(token_embeddings.dtype)


class _AddSegments:
    """Forward hook on the input embeddings: output -> classifier.segment_embedding(input_ids, output).

    Looks the module up on the classifier at call time, so PEFT's modules_to_save copy (the trained one) is used.
    Holds the classifier weakly (no reference cycle through the hook)."""

    def __init__(self, classifier: nn.Module):
        self._classifier = weakref.ref(classifier)

    def __call__(self, module, args, output):
        return getattr(self._classifier(), MODULE_NAME)(args[0], output)


def install_segment_embeddings(model: nn.Module, markers: dict, init_std: float, gate_std: float = 0.0) -> None:
    """Add `model.segment_embedding` (random init: vectors with std `init_std`, gates 1 + N(0, gate_std); same dtype
    as the token embeddings) and the hook."""
    _check_markers(markers)
    token_embeddings = model.get_input_embeddings()
    module = SegmentEmbedding(model.config.hidden_size, markers, init_std, gate_std)
    module.to(dtype=token_embeddings.weight.dtype, device=token_embeddings.weight.device)
    setattr(model, MODULE_NAME, module)
    token_embeddings.register_forward_hook(_AddSegments(model))
    setattr(model.config, CONFIG_KEY, markers)  # written to config.json, read back by the export loader


def _check_markers(markers: dict) -> None:
    if not isinstance(markers, dict) or not markers.get("a") or not markers.get("b") or markers["a"] == markers["b"]:
        raise ValueError(f"segment markers need distinct non-empty 'a' and 'b' token sequences (got {markers!r})")
    if not all(markers.get("reset", [])):
        raise ValueError("segment markers need a list of non-empty 'reset' token sequences")


def recorded_markers(config) -> dict | None:
    """The markers a saved model was built with (None: no segment embeddings)."""
    return getattr(config, CONFIG_KEY, None)
