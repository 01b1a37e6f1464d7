"""Known harmless library warnings, silenced once per process where they arise (the CLI, each training rank, each
label actor and the predict loader call this first), so a console shows progress lines and real problems. Each
entry says why it is harmless; nothing else is hidden."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings

KNOWN = (
    # torch 2.13 deprecates the collectives DeepSpeed 0.19 calls for every ZeRO-3 gather / reduce-scatter; they
    # still work, and a warning per collective per rank buried the progress lines (about 100 per training stage).
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor|_all_gather_base|"
                    r"_reduce_scatter_base)` is"),
    # transformers 5 renamed the attribute that peft reads; same value.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


KNOWN_LOG_LINES = {
    # DeepSpeed reads the LR once while it sets the engine up, before the first step: every rank logs this.
    "DeepSpeed": "Attempting to get learning rate from scheduler before it has started",
    # bitsandbytes' optional CPU kernel from the hub (the `kernels` package) is absent; its own fallback runs.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # bitsandbytes 8-bit layers cast non-fp16 inputs to fp16 for their matmul (the intended LLM.int8() numerics) and
    # log it on every forward of every layer: a thousand lines per labelling run.
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast",
}


class _DropLine(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_warnings(under_ray_train: bool = False) -> None:
    """`under_ray_train`: also Ray Train's INFO line per metrics report, which repeats the whole metrics dict next to
    the loop's own progress line. Its logger is named after its module's file, found here without importing more
    of Ray than the worker already has."""
    for category, message in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)
    lines = dict(KNOWN_LOG_LINES)
    if under_ray_train:
        import importlib.util

        spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
        if spec is not None and spec.origin:
            lines[spec.origin] = "Reporting training result"
    for name, prefix in lines.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLine) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropLine(prefix))


@contextlib.contextmanager
def quiet_transformers_loading(enabled: bool = True):
    """Hide transformers' load report ("score.weight MISSING / newly initialized", unexpected keys) while loading a
    model whose head / extra modules the caller loads right after: the report would be alarming and false."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


@functools.cache
def say_once(message: str) -> None:
    """A warning of ours printed once per process however many models a stage builds (ranks, actors, reloads)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
