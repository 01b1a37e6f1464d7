"""Known harmless library warnings, silenced once per process where they arise (each training rank calls this first),
so a console shows progress lines and real problems. Each entry says why it is harmless; nothing else is hidden."""

from __future__ import annotations

import warnings

KNOWN = (
    # torch 2.13 deprecates the collectives DeepSpeed 0.19 calls for every ZeRO-3 gather / reduce-scatter; they
    # still work, and a warning per collective per rank buried the progress lines (about 100 per training stage).
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor|_all_gather_base|"
                    r"_reduce_scatter_base)` is"),
    # transformers 5 renamed the attribute that peft reads; same value.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # bitsandbytes 8-bit layers cast fp32 inputs to fp16 for their matmul: the intended QLoRA numerics.
    (UserWarning, r".*MatMul8bitLt: inputs will be cast"),
)


def silence_known_warnings() -> None:
    for category, message in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)
