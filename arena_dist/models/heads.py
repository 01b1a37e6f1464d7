"""Classification heads. `linear` is transformers' own `score`; `mlp` replaces it."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Dropout -> Linear(h, h/2) -> Dropout -> GELU -> Linear(h/2, n). Named `score` in the model, so state-dict keys
    are `score.1.weight`, `score.4.weight` (and biases)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        middle = max(1, hidden_size // 2)
        super().__init__(
            nn.Dropout(dropout),
            nn.Linear(hidden_size, middle),
            nn.Dropout(dropout),
            nn.GELU(),
            nn.Linear(middle, num_labels),
        )


def install_mlp_head(model, num_labels: int, dropout: float = 0.1) -> None:
    """Replace `model.score` (Llama/Qwen2/Gemma2 sequence classifiers) with an MLPHead of the same dtype/device."""
    old = model.score
    head = MLPHead(model.config.hidden_size, num_labels, dropout)
    head.to(dtype=old.weight.dtype, device=old.weight.device)
    model.score = head
    # Recorded in config.json so a reload knows the head even without arena_dist.json.
    model.config.arena_head = "mlp"
