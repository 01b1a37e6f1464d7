"""Attention per example for packed rows, on the kernels without a variable-length path (eager and sdpa).

A packed micro-batch is one row of concatenated examples whose `position_ids` restart at 0 for each
(`arena_dist.train.packing`). flash-attention reads the boundaries from `position_ids` and attends within each
example. eager and sdpa get transformers' block-diagonal mask instead and compute the whole (tokens x tokens) square,
of which only the diagonal blocks survive the mask: a CPU rank's 8 demo rows of ~80 tokens in one pack cost about
8x the attention of the same rows padded, which made a packed step of the demo teacher 2.2x slower than a padded one.

`packed_eager` / `packed_sdpa` run the model's own eager or sdpa function once per example, on that example's
queries, keys, values and its diagonal block of the same mask: the same function of the same inputs (the masked-out
entries contribute exact zeros), at a cost linear in the examples. Anything that is not one packed row (a padded
batch, a single example, decoding with a cache) goes to the base kernel unchanged. They are registered with
transformers' `AttentionInterface`, with the base kernel's mask function in `AttentionMaskInterface`, so
transformers builds the packed mask as it does for the base kernel.

Hand-written because transformers has no per-example path for these kernels (its varlen path is flash-attention's,
which needs the flash-attn package and a GPU).
"""

from __future__ import annotations

import sys

PREFIX = "packed_"
BASE_KERNELS = ("eager", "sdpa")


def base_kernel(name: str) -> str:
    """The kernel a model was configured with: `packed_eager` -> `eager`; other names unchanged."""
    return name[len(PREFIX):] if name.startswith(PREFIX) and name[len(PREFIX):] in BASE_KERNELS else name


def example_starts(position_ids, tokens: int) -> list[int] | None:
    """Start offsets of the examples in one packed row of `tokens` tokens, or None when it is not one: a batch of
    several rows, no position ids, or a single example."""
    if position_ids is None or tuple(position_ids.shape) != (1, tokens):
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    return starts if len(starts) > 1 and starts[0] == 0 else None


def _base_function(module, kernel: str):
    if kernel == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    # Each model file has its own eager function (Gemma-2's caps the attention logits), as transformers' default.
    return sys.modules[type(module).__module__].eager_attention_forward


def _per_example(kernel: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        import torch

        base = _base_function(module, kernel)
        tokens = query.shape[2]
        starts = example_starts(kwargs.get("position_ids"), tokens) if key.shape[2] == tokens else None
        if starts is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        bounds = starts + [tokens]
        outputs = []
        for start, end in zip(bounds, bounds[1:]):
            mask = None if attention_mask is None else attention_mask[..., start:end, start:end]
            output, _ = base(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask,
                             **kwargs)
            outputs.append(output)
        return torch.cat(outputs, dim=1), None  # (batch, tokens, heads, head_dim), as the base kernels return

    attention.__name__ = f"{PREFIX}{kernel}_attention_forward"
    return attention


def register() -> None:
    """Make `packed_eager` and `packed_sdpa` known to transformers in this process (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    for kernel, mask in (("eager", eager_mask), ("sdpa", sdpa_mask)):
        AttentionInterface.register(PREFIX + kernel, _per_example(kernel))
        AttentionMaskInterface.register(PREFIX + kernel, mask)


def use_per_example_attention(model) -> str:
    """Switch `model` (a transformers model, or a PEFT / DeepSpeed wrapper around one) from eager or sdpa to its
    per-example variant; flash-attention and already-switched models are left as they are. Returns the kernel now
    in use."""
    from transformers import PreTrainedModel

    pretrained = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if pretrained is None:
        raise TypeError(f"{type(model).__name__} holds no transformers model")
    kernel = pretrained.config._attn_implementation
    if kernel in BASE_KERNELS:
        register()
        pretrained.set_attn_implementation(PREFIX + kernel)
    return pretrained.config._attn_implementation
