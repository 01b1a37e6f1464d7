"""The repo's local tokenizer and the from_pretrained path (on a locally saved copy: no hub access)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from arena_dist.formatting.tokenizer import LOCAL_TOKENIZER_DIR, SPECIAL_TOKENS, load_tokenizer

REPO = Path(__file__).resolve().parents[2]

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog, 3.14 times.",
    "Привет, мир! Как дела?",
    "你好世界，模型回答问题。こんにちは",
    "def f(x):\n    return {'a': [1, 2]}\n\n```bash\nls -la\n```",
    "émojis 😀🎉 and Ελληνικά and العربية",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("local")


def test_local_tokenizer_basics(tokenizer):
    assert tokenizer.is_fast
    assert 3500 <= len(tokenizer) <= 4100
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id is not None
    assert tokenizer.padding_side == "right"
    assert load_tokenizer("local", padding_side="left").padding_side == "left"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids  # byte-level: every string is covered


def test_special_tokens_are_single_ids(tokenizer):
    ids = [tokenizer.encode(tok, add_special_tokens=False) for tok in SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(SPECIAL_TOKENS)
    # inside text too, and no BOS/EOS is added behind the caller's back
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_multilingual_text_is_compressed(tokenizer):
    # trained on Cyrillic / CJK too: well below one token per UTF-8 byte
    for text in TEXTS[1:3]:
        assert len(tokenizer.encode(text)) < 0.5 * len(text.encode())


def test_save_and_load_through_from_pretrained(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    batch = TEXTS + ["<|eot_id|> " + TEXTS[0]]
    assert again(batch)["input_ids"] == tokenizer(batch)["input_ids"]
    assert again.pad_token_id == tokenizer.pad_token_id


def test_tokenizer_without_pad_gets_eos_as_pad(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "</s>": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path), padding_side="left")
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == 2 and loaded.padding_side == "left"


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    """Rebuilding from the script gives the committed files byte for byte."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_tokenizer.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        built = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        committed = hashlib.sha256((LOCAL_TOKENIZER_DIR / name).read_bytes()).hexdigest()
        assert built == committed, name
