"""Tiny checkpoints of each model family, saved the way the hub serves them, for tests of the real-model path.

Nothing can be downloaded here, so tests build small stand-ins themselves: a few layers with random weights, saved
with `save_pretrained` in the hub's layout (safetensors shards plus their index, `config.json`,
`generation_config.json` for causal LMs) and a fast tokenizer carrying the family's real special tokens, chat
markers, chat template and pad / eos settings. Stages then read them by path exactly as they would read a hub id.

    build_checkpoint(root, "llama", "causal_lm")   # what the hub serves for instruct models
    build_checkpoint(root, "gemma2", "classifier") # a *ForSequenceClassification checkpoint

The tokenizers reuse the project's small byte-level BPE (arena_dist/assets/tokenizer) for ordinary text and add the
family's own special tokens, so every marker is one token as in the real tokenizer, and the verbaliser's answer words
("A", "B", "tie": one token each in the real Llama-3, Qwen2.5 and Gemma-2 vocabularies; the small BPE splits "tie").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("llama", "qwen2", "gemma2")
KINDS = ("causal_lm", "classifier")
SHARD_SIZE = "40KB"  # small enough that even a tiny model is saved as several shards with an index


@dataclass(frozen=True)
class Family:
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None  # None: the real tokenizer has no pad token (Llama-3)
    chat_template: str


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

FAMILY = {
    # Llama-3.x Instruct: eos is <|eot_id|>, no pad token; <|finetune_right_pad_id|> is the one meant for padding.
    "llama": Family(("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eot_id|>", "<|finetune_right_pad_id|>"), "<|begin_of_text|>", "<|eot_id|>", None,
                    LLAMA3_TEMPLATE),
    # Qwen2.5 Instruct: no bos, eos <|im_end|>, pad <|endoftext|>.
    "qwen2": Family(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|endoftext|>",
                    CHATML_TEMPLATE),
    # Gemma-2 it: <bos>, <eos>, <pad>, turns in <start_of_turn> / <end_of_turn>.
    "gemma2": Family(("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>", "<pad>",
                     GEMMA_TEMPLATE),
}


ANSWER_WORDS = ("tie",)  # the answer words the small BPE does not already have as one token


def build_tokenizer(family: str, answer_words: bool = True):
    """`answer_words=False`: "tie" stays two tokens (a tokenizer the verbaliser head must refuse)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from arena_dist.formatting.tokenizer import LOCAL_TOKENIZER_DIR

    spec = FAMILY[family]
    backend = Tokenizer.from_file(str(LOCAL_TOKENIZER_DIR / "tokenizer.json"))
    backend.add_special_tokens(list(spec.special_tokens))
    if answer_words:  # whole words only, so "tied" still tokenises as before
        backend.add_tokens([AddedToken(word, single_word=True, special=False) for word in ANSWER_WORDS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos,
                                   pad_token=spec.pad, chat_template=spec.chat_template, padding_side="right")


def model_config(family: str, tokenizer, num_labels: int | None = None):
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    spec = FAMILY[family]
    ids = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.convert_tokens_to_ids(spec.eos),
           "bos_token_id": tokenizer.convert_tokens_to_ids(spec.bos) if spec.bos else None,
           "pad_token_id": tokenizer.convert_tokens_to_ids(spec.pad) if spec.pad else None}
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512}
    if num_labels is not None:
        dims["num_labels"] = num_labels
    if family == "llama":
        return LlamaConfig(**dims, **ids)
    if family == "qwen2":
        return Qwen2Config(**dims, **ids, tie_word_embeddings=True)
    return Gemma2Config(**dims, **ids, head_dim=8, sliding_window=64, query_pre_attn_scalar=8)


def build_checkpoint(root: str | Path, family: str, kind: str = "causal_lm", num_labels: int = 3,
                     seed: int = 0) -> Path:
    """Write `<root>/<family>-<kind>/` in the hub's layout; returns it. Deterministic for a given seed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if family not in FAMILY or kind not in KINDS:
        raise ValueError(f"family one of {FAMILIES}, kind one of {KINDS}")
    directory = Path(root) / f"{family}-{kind}"
    tokenizer = build_tokenizer(family)
    torch.manual_seed(seed)
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_config(model_config(family, tokenizer))
    else:
        model = AutoModelForSequenceClassification.from_config(model_config(family, tokenizer, num_labels))
    model.save_pretrained(directory, max_shard_size=SHARD_SIZE, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_all(root: str | Path) -> dict:
    """(family, kind) -> checkpoint folder, for every family and kind."""
    return {(family, kind): build_checkpoint(root, family, kind) for family in FAMILIES for kind in KINDS}
