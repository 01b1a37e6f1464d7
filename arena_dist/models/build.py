"""`build_model(cfg, num_labels, pad_token_id)`: a transformers sequence classifier, optional MLP head and LoRA.

Models only: nothing here knows about ranks, process groups or DeepSpeed. ZeRO-3 partitioning happens when the
training loop hands the built model to `deepspeed.initialize`.

Quantisation (`quantization` other than "none") comes from `arena_dist.models.quant`: its `from_pretrained` arguments,
and for training its `prepare_model` (peft's k-bit preparation) before LoRA is applied.
"""

from __future__ import annotations

import contextlib
import tempfile

import torch

from arena_dist.errors import ConfigError
from arena_dist.models.config import ModelConfig
from arena_dist.models.heads import install_mlp_head
from arena_dist.models.segments import MODULE_NAME as SEGMENT_MODULE
from arena_dist.models.segments import install_segment_embeddings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def device_dtype(requested: str) -> str:
    """`inference_dtype` for this machine's device, said once when it differs (label actors, predict)."""
    from arena_dist.models.config import inference_dtype

    from arena_dist.quiet import say_once

    chosen = inference_dtype(requested, torch.cuda.is_available(),
                             torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if chosen != requested:
        say_once(f"this GPU has no {requested} (a T4?): running in {chosen}, overflowing rows again in float32")
    return chosen


def default_vocab_size() -> int:
    """The local tokenizer's vocabulary size."""
    from arena_dist.formatting.tokenizer import load_tokenizer

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


def quantization_kwargs(quantization: str, dtype: torch.dtype) -> dict:
    if quantization == "none":
        return {}
    if quantization not in ("4bit", "8bit"):
        raise ConfigError(f"model.quantization: unknown value {quantization!r}")
    from arena_dist.models.quant import from_pretrained_kwargs

    return from_pretrained_kwargs(quantization, dtype)


GEMMA2_SDPA = ("model.attn_implementation: Gemma-2 caps its attention logits (attn_logit_softcapping), which sdpa "
               "cannot do (transformers refuses it); using eager, which keeps the capping exact but needs attention "
               "memory quadratic in the sequence length (flash_attention_2 keeps both where flash-attn is installed)")


def attention_kernel(cfg: ModelConfig, model_type: str) -> str:
    """The kernel `cfg` asks for, except sdpa for Gemma-2, which gets eager: its soft-capping is part of the model."""
    from arena_dist.quiet import say_once

    if model_type == "gemma2" and cfg.attn_implementation == "sdpa":
        say_once(GEMMA2_SDPA)
        return "eager"
    return cfg.attn_implementation


def _pretrained(path: str, cfg: ModelConfig, num_labels: int, pad_token_id: int | None, **extra):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    dtype = torch_dtype(cfg.dtype)
    model_type = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code).model_type
    kwargs = {**quantization_kwargs(cfg.quantization, dtype), **extra}  # a caller's device_map wins
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, dtype=dtype, attn_implementation=attention_kernel(cfg, model_type),
        trust_remote_code=cfg.trust_remote_code, use_safetensors=True, **kwargs)


def build_base(cfg: ModelConfig, num_labels: int, pad_token_id: int, **from_pretrained_extra):
    """The plain transformers classifier (linear `score` head), before head replacement and LoRA."""
    from transformers import AutoModelForSequenceClassification

    if cfg.name_or_path is not None:
        return _pretrained(cfg.name_or_path, cfg, num_labels, pad_token_id, **from_pretrained_extra)
    config = hf_config(cfg, num_labels, pad_token_id)
    config._attn_implementation = attention_kernel(cfg, cfg.arch)
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


def build_model(cfg: ModelConfig, num_labels: int, pad_token_id: int | None, segment_markers: dict | None = None,
                for_training: bool = True, answer_token_ids: list[int] | None = None, **from_pretrained_extra):
    """Sequence classifier per `cfg`: base -> (MLP head) -> (segment embeddings) -> (quantisation prep) -> (LoRA) ->
    (grad checkpointing). `segment_markers` (`arena_dist.formatting.encode.segment_markers`) is needed when
    `cfg.segment_embeddings` is on. `for_training=False` (the export loader): no k-bit training preparation,
    gradient checkpointing or LoRA (an export's adapter is loaded onto the result). `answer_token_ids`: one per
    class, for `cfg.head == "verbalizer"` (`arena_dist.models.verbalizer.answer_token_ids`)."""
    if cfg.head == "verbalizer" and len(answer_token_ids or ()) != num_labels:
        raise ConfigError(f"model.head=verbalizer needs one answer token id per class (got {answer_token_ids})")
    if num_labels < 2:
        raise ConfigError(f"num_labels must be at least 2 (got {num_labels})")
    if cfg.segment_embeddings and segment_markers is None:
        raise ConfigError("model.segment_embeddings is on but no segment markers were given (a bug in the caller)")
    with seeded(cfg.init_seed):
        return _build(cfg, num_labels, pad_token_id, segment_markers if cfg.segment_embeddings else None,
                      for_training, from_pretrained_extra, answer_token_ids)


def build_classifier(cfg: ModelConfig, tokenizer, fmt):
    """The classifier a stage trains or scores, for a tokenizer and a FormatConfig: its number of labels (the
    format's label mode), pad id, and everything `cfg` asks for, the segment markers of the format's template
    included. The trainers build through it; label, predict and the merge check load exports through the same
    `build_model` (`arena_dist.models.export.load_export`)."""
    from arena_dist.formatting.templates import num_labels

    markers = None
    if cfg.segment_embeddings:
        from arena_dist.formatting.encode import segment_markers

        markers = segment_markers(tokenizer, fmt)
    answer_ids = None
    if cfg.head == "verbalizer":  # checked before any weights are loaded
        from arena_dist.models.verbalizer import answer_token_ids

        answer_ids = answer_token_ids(tokenizer, fmt.label_mode)
    return build_model(cfg, num_labels(fmt.label_mode), int(tokenizer.pad_token_id), segment_markers=markers,
                       answer_token_ids=answer_ids)


def _build(cfg: ModelConfig, num_labels: int, pad_token_id: int | None, segment_markers: dict | None,
           for_training: bool, from_pretrained_extra: dict, answer_token_ids: list[int] | None = None):
    model = build_base(cfg, num_labels, pad_token_id, **from_pretrained_extra)
    if cfg.head == "mlp":
        install_mlp_head(model, num_labels, cfg.head_dropout)
    if cfg.head == "verbalizer":  # a training build starts from the LM head's rows; a loaded export has its own
        from arena_dist.models.verbalizer import install_verbalizer_head

        install_verbalizer_head(model, answer_token_ids, cfg.name_or_path if for_training else None)
    if segment_markers is not None:
        install_segment_embeddings(model, segment_markers, cfg.initializer_range, cfg.segment_gate_std)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if for_training:
        model = _prepare_training(model, cfg)
    # The export needs to know how to rebuild this model (base spec, head, lora).
    model.arena_model_config = cfg
    return model


def _prepare_training(model, cfg: ModelConfig):
    if cfg.quantization != "none":
        from arena_dist.models.quant import prepare_model

        model = prepare_model(model, cfg)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = apply_lora(model, cfg)
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
