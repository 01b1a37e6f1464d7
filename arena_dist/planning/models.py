"""Decoder dimensions of the models arena_dist trains, and parameter counts derived from them.

The built-in numbers are copied from each model's Hugging Face `config.json`. Counts cover a Llama-style decoder:
embeddings, attention with grouped-query K/V heads (optional Q/K/V bias as in Qwen2), a gated MLP (gate, up, down),
RMSNorm weights, and a head: the causal-LM head (absent when tied to the embeddings) or the sequence-classification
`score` layer (num_labels x hidden, no bias) that the teacher and student stages train.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace

from arena_dist.errors import ConfigError


@dataclass(frozen=True)
class ModelDims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0  # 0 means hidden // heads (Gemma-2 sets it explicitly)
    tied_embeddings: bool = False
    qkv_bias: bool = False
    norms_per_layer: int = 2  # Gemma-2 has 4 (pre/post attention, pre/post feed-forward)

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.dim_per_head

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim_per_head


# hub id -> dims (config.json of each model). Aliases map the -Instruct / base variants to one entry.
KNOWN_MODELS: dict[str, ModelDims] = {
    "meta-llama/Llama-3.3-70B-Instruct": ModelDims(
        layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=28672, vocab=128256),
    "Qwen/Qwen2.5-72B-Instruct": ModelDims(
        layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=29568, vocab=152064, qkv_bias=True),
    "google/gemma-2-9b-it": ModelDims(
        layers=42, hidden=3584, heads=16, kv_heads=8, head_dim=256, intermediate=14336, vocab=256000,
        tied_embeddings=True, norms_per_layer=4),
    "google/gemma-2-27b-it": ModelDims(
        layers=46, hidden=4608, heads=32, kv_heads=16, head_dim=128, intermediate=36864, vocab=256000,
        tied_embeddings=True, norms_per_layer=4),
    "Qwen/Qwen2.5-14B-Instruct": ModelDims(
        layers=48, hidden=5120, heads=40, kv_heads=8, intermediate=13824, vocab=152064, qkv_bias=True),
    "Qwen/Qwen2.5-7B-Instruct": ModelDims(
        layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064, qkv_bias=True),
    "meta-llama/Llama-3.1-8B-Instruct": ModelDims(
        layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256),
    "meta-llama/Llama-3.2-1B-Instruct": ModelDims(
        layers=16, hidden=2048, heads=32, kv_heads=8, head_dim=64, intermediate=8192, vocab=128256,
        tied_embeddings=True),
}
_ALIASES = {re.sub(r"-(Instruct|it)$", "", name): name for name in KNOWN_MODELS}  # the base model of each


def known_model(name: str, key: str = "model.name") -> ModelDims:
    """Dims of a built-in hub id (case-insensitive, base or -Instruct/-it variant); `key` names the setting."""
    table = {hub_id.lower(): hub_id for hub_id in [*KNOWN_MODELS, *_ALIASES]}
    hub_id = table.get(name.lower())
    if hub_id is None:
        raise ConfigError(
            f"{key}: unknown model {name!r}; give explicit dims (layers, hidden, heads, kv_heads, "
            f"intermediate, vocab) or one of {sorted(KNOWN_MODELS)}")
    return KNOWN_MODELS[_ALIASES.get(hub_id, hub_id)]


def with_overrides(dims: ModelDims, **overrides) -> ModelDims:
    return replace(dims, **{k: v for k, v in overrides.items() if v is not None})


DIM_FIELDS = tuple(field.name for field in fields(ModelDims))  # the six core dims come first


def resolve_dims(model, key: str = "model") -> ModelDims:
    """Built-in dims of `model.name`, with any explicit dims on top; explicit dims alone need the six core fields.
    `key` names the config section in errors."""
    explicit = {field: getattr(model, field) for field in DIM_FIELDS}
    if model.name:
        return with_overrides(known_model(model.name, f"{key}.name"), **explicit)
    missing = [f for f in DIM_FIELDS[:6] if explicit[f] is None]
    if missing:
        raise ConfigError(f"{key}: give {key}.name or all of the dims; missing {', '.join(missing)}")
    return ModelDims(**{k: v for k, v in explicit.items() if v is not None})


LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(dims: ModelDims) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer in one decoder block."""
    h, q, kv, inter = dims.hidden, dims.q_dim, dims.kv_dim, dims.intermediate
    return {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }


@dataclass(frozen=True)
class ParamCount:
    embedding: int
    per_layer_linear: int  # weights of the 7 linear layers of one block (the part that quantisation touches)
    per_layer_other: int  # biases and norm weights of one block
    layers: int
    final_norm: int
    head: int  # stored head weights: untied LM head or classifier score layer (0 for a tied LM head)
    head_matmul: int  # head weights used in the per-token matmul (a tied LM head reuses the embedding)
    largest_layer: int  # largest single module, as DeepSpeed's model_to_params counts it

    @property
    def decoder_linear(self) -> int:
        return self.per_layer_linear * self.layers

    @property
    def total(self) -> int:
        return (self.embedding + (self.per_layer_linear + self.per_layer_other) * self.layers
                + self.final_norm + self.head)

    @property
    def matmul(self) -> int:
        """Parameters that take part in a matmul per token (embedding lookups cost no FLOPs)."""
        return self.decoder_linear + self.head_matmul

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "matmul": self.matmul}


def count_params(dims: ModelDims, head: str = "lm", num_labels: int = 3) -> ParamCount:
    """Parameter count of a decoder with an LM head (`head="lm"`) or a classification head (`head="classifier"`)."""
    if head not in ("lm", "classifier"):
        raise ConfigError(f"model.head: expected 'lm' or 'classifier', got {head!r}")
    shapes = linear_shapes(dims)
    linear = sum(i * o for i, o in shapes.values())
    biases = (dims.q_dim + 2 * dims.kv_dim) if dims.qkv_bias else 0
    norms = dims.norms_per_layer * dims.hidden
    embedding = dims.vocab * dims.hidden
    if head == "lm":
        # A tied LM head does its matmul with the embedding matrix: counted for FLOPs, not for storage.
        head_matmul = dims.vocab * dims.hidden
        head_params = 0 if dims.tied_embeddings else head_matmul
    else:
        head_params = head_matmul = num_labels * dims.hidden
    largest_module = max(embedding, head_params, *(i * o for i, o in shapes.values()))
    return ParamCount(
        embedding=embedding, per_layer_linear=linear, per_layer_other=biases + norms, layers=dims.layers,
        final_norm=dims.hidden, head=head_params, head_matmul=head_matmul, largest_layer=largest_module,
    )


def lora_params(dims: ModelDims, r: int, target_modules: list[str] | tuple[str, ...]) -> int:
    """Adapter parameters: r * (in + out) per targeted linear per layer (LoRA A is r x in, B is out x r)."""
    shapes = linear_shapes(dims)
    unknown = [m for m in target_modules if m not in shapes]
    if unknown:
        raise ConfigError(f"lora.target_modules: unknown module(s) {unknown}; known: {list(shapes)}")
    return dims.layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules)
