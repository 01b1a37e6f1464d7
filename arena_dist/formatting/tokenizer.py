"""Tokenizers: the small byte-level BPE that ships in the repo ("local"), or any hub / local tokenizer directory.

The local tokenizer lets every stage, test and demo run with nothing fetched; real runs name a hub id
(e.g. "meta-llama/Llama-3.3-70B-Instruct") in their config and get it through `AutoTokenizer`.
transformers is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

LOCAL_NAME = "local"
LOCAL_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"

# The marker tokens of all three chat-template families; each is ONE token in the local tokenizer.
SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<unk>",
)
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<unk>", "<bos>", "<eos>"


def load_tokenizer(
    name_or_path: str = LOCAL_NAME,
    trust_remote_code: bool = False,
    padding_side: Literal["left", "right"] = "right",
):
    """Return a fast tokenizer with a pad token set.

    "local" -> the repo's tokenizer (arena_dist/assets/tokenizer); anything else goes to
    `AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=...)` (hub id or a saved directory). A tokenizer
    without a pad token gets one (`pad_token_for`), so batching never fails on it.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if name_or_path == LOCAL_NAME:
        tokenizer_file = LOCAL_TOKENIZER_DIR / "tokenizer.json"
        if not tokenizer_file.is_file():
            from arena_dist.errors import InputError

            raise InputError(f"{tokenizer_file}: local tokenizer missing (run `python scripts/build_tokenizer.py`)")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(LOCAL_TOKENIZER_DIR))
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        from arena_dist.errors import ConfigError

        raise ConfigError(f"tokenizer {name_or_path!r}: a fast (Rust) tokenizer is required")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = pad_token_for(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


# Tokens some families reserve for padding without declaring them as the pad token (Llama-3).
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>",)


def pad_token_for(tokenizer) -> str:
    """The pad token for a tokenizer that declares none: a reserved padding token of the family when the vocabulary
    has one (Llama-3's `<|finetune_right_pad_id|>`: its eos `<|eot_id|>` also ends every turn inside the prompt, so
    padding with it would make pad positions indistinguishable from real ones), else eos, else `<pad>`."""
    vocab = tokenizer.get_vocab()
    for token in RESERVED_PAD_TOKENS:
        if token in vocab:
            return token
    return tokenizer.eos_token if tokenizer.eos_token is not None else PAD_TOKEN
