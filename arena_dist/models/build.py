"""`build_model(cfg, num_labels, pad_token_id)`: a transformers sequence classifier, optional MLP head and LoRA.

Models only: nothing here knows about ranks, process groups or DeepSpeed. ZeRO-3 partitioning happens when the
training loop hands the built model to `deepspeed.initialize`.

Quantisation hook: `quantization` other than "none" needs `arena_dist.models.quant` with
`from_pretrained_kwargs(quantization: str, dtype: torch.dtype) -> dict` (merged into `from_pretrained`) and optionally
`prepare_model(model, cfg) -> model` (e.g. peft's prepare_model_for_kbit_training), called before LoRA is applied.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile

import torch

from arena_dist.errors import ConfigError
from arena_dist.models.config import FALLBACK_VOCAB_SIZE, ModelConfig
from arena_dist.models.heads import install_mlp_head
from arena_dist.models.segments import MODULE_NAME as SEGMENT_MODULE
from arena_dist.models.segments import install_segment_embeddings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def default_vocab_size() -> int:
    """The local tokenizer's vocabulary size (fallback 4096 while the tokenizer module is missing)."""
    try:
        from arena_dist.formatting.tokenizer import load_tokenizer
    except ImportError:
        return FALLBACK_VOCAB_SIZE
    return len(load_tokenizer("local"))


def hf_config(cfg: ModelConfig, num_labels: int, pad_token_id: int):
    """A transformers config for a random-init model of `cfg.arch` with `cfg`'s dims."""
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    head_dim = cfg.hidden_size // cfg.num_heads
    common = dict(
        vocab_size=cfg.vocab_size or default_vocab_size(),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        num_labels=num_labels,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        initializer_range=cfg.initializer_range,
    )
    if cfg.arch == "llama":
        config = LlamaConfig(head_dim=head_dim, **common)
    elif cfg.arch == "qwen2":
        config = Qwen2Config(**common)
    elif cfg.arch == "gemma2":
        config = Gemma2Config(head_dim=head_dim, query_pre_attn_scalar=head_dim, **common)
    else:  # unreachable: validated by ModelConfig
        raise ConfigError(f"model.arch: unknown architecture {cfg.arch!r}")
    config.id2label = {i: str(i) for i in range(num_labels)}
    config.label2id = {str(i): i for i in range(num_labels)}
    return config


def quant_module():
    try:
        return importlib.import_module("arena_dist.models.quant")
    except ImportError:
        raise ConfigError(
            "model.quantization: 4bit/8bit loading needs arena_dist.models.quant, which is not available yet"
        ) from None


def quantization_kwargs(quantization: str, dtype: torch.dtype) -> dict:
    if quantization == "none":
        return {}
    if quantization not in ("4bit", "8bit"):
        raise ConfigError(f"model.quantization: unknown value {quantization!r}")
    return quant_module().from_pretrained_kwargs(quantization, dtype)


def _pretrained(path: str, cfg: ModelConfig, num_labels: int, pad_token_id: int, **extra):
    from transformers import AutoModelForSequenceClassification

    dtype = torch_dtype(cfg.dtype)
    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=num_labels,
        pad_token_id=pad_token_id,
        dtype=dtype,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=True,
        **quantization_kwargs(cfg.quantization, dtype),
        **extra,
    )


def build_base(cfg: ModelConfig, num_labels: int, pad_token_id: int, **from_pretrained_extra):
    """The plain transformers classifier (linear `score` head), before head replacement and LoRA."""
    from transformers import AutoModelForSequenceClassification

    if cfg.name_or_path is not None:
        return _pretrained(cfg.name_or_path, cfg, num_labels, pad_token_id, **from_pretrained_extra)
    config = hf_config(cfg, num_labels, pad_token_id)
    config._attn_implementation = cfg.attn_implementation
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch_dtype(cfg.dtype))
    if cfg.quantization != "none":
        # bitsandbytes quantises while loading: round-trip the random weights through a temp folder.
        with tempfile.TemporaryDirectory(prefix="ad-randinit-") as tmp:
            model.save_pretrained(tmp)
            del model
            return _pretrained(tmp, cfg, num_labels, pad_token_id, **from_pretrained_extra)
    return model


def apply_lora(model, cfg: ModelConfig):
    """Wrap in PEFT LoRA (SEQ_CLS); the whole head (`score`), the segment embeddings, if any, and
    `lora.modules_to_save` are trained in full through modules_to_save."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = cfg.lora
    peft_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=["score"] + ([SEGMENT_MODULE] if hasattr(model, SEGMENT_MODULE) else [])
        + list(lora.modules_to_save),
    )
    return get_peft_model(model, peft_config)


@contextlib.contextmanager
def seeded(seed: int):
    """Every random init inside (base weights, a new head, LoRA A matrices) is the same on every rank and rebuild;
    the caller's RNG state is left as it was."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(cfg: ModelConfig, num_labels: int, pad_token_id: int, segment_markers: dict | None = None):
    """Sequence classifier per `cfg`: base -> (MLP head) -> (segment embeddings) -> (quantisation prep) -> (LoRA) ->
    (grad checkpointing). `segment_markers` (`arena_dist.formatting.encode.segment_markers`) is needed when
    `cfg.segment_embeddings` is on."""
    if num_labels < 2:
        raise ConfigError(f"num_labels must be at least 2 (got {num_labels})")
    if cfg.segment_embeddings and segment_markers is None:
        raise ConfigError("model.segment_embeddings is on but no segment markers were given (a bug in the caller)")
    with seeded(cfg.init_seed):
        return _build(cfg, num_labels, pad_token_id, segment_markers if cfg.segment_embeddings else None)


def build_classifier(cfg: ModelConfig, tokenizer, fmt):
    """The classifier a stage trains or scores, for a tokenizer and a FormatConfig: its number of labels (the
    format's label mode), pad id, and everything `cfg` asks for, the segment markers of the format's template
    included. Trainers, label scorers, predict and the merge check build through this one function."""
    from arena_dist.formatting.templates import num_labels

    markers = None
    if cfg.segment_embeddings:
        from arena_dist.formatting.encode import segment_markers

        markers = segment_markers(tokenizer, fmt)
    return build_model(cfg, num_labels(fmt.label_mode), int(tokenizer.pad_token_id), segment_markers=markers)


def _build(cfg: ModelConfig, num_labels: int, pad_token_id: int, segment_markers: dict | None):
    model = build_base(cfg, num_labels, pad_token_id)
    if cfg.head == "mlp":
        install_mlp_head(model, num_labels, cfg.head_dropout)
    if segment_markers is not None:
        install_segment_embeddings(model, segment_markers, cfg.initializer_range, cfg.segment_gate_std)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if cfg.quantization != "none" and hasattr(quant_module(), "prepare_model"):
        model = quant_module().prepare_model(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = apply_lora(model, cfg)
    # The export needs to know how to rebuild this model (base spec, head, lora).
    model.arena_model_config = cfg
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); under ZeRO-3 uses the full `ds_numel` instead of the empty local tensor."""
    trainable = total = 0
    for param in model.parameters():
        numel = getattr(param, "ds_numel", param.numel())
        total += numel
        if param.requires_grad:
            trainable += numel
    return trainable, total
