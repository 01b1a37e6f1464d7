"""filters.max_tokens with a real tokenizer (`filters.tokenizer`) instead of the character estimate."""

from __future__ import annotations

import json

import pytest
from prepare_fixtures import write_jsonl

from arena_dist.data.filters import FilterConfig, estimated_tokens, filter_tokenizer, token_count
from arena_dist.data.sources import SourceConfig
from arena_dist.data.store import build_dataset, read_records
from arena_dist.errors import ConfigError
from arena_dist.stages import prepare

# Prompt + responses of 125 characters in 64 words, and of 206 characters in 5 words.
ROWS = [
    {"id": "short_words", "prompt": " ".join(["a"] * 60), "response_a": "b c", "response_b": "d e",
     "language": "en"},
    {"id": "long_word", "prompt": "x" * 200, "response_a": "b c", "response_b": "d e", "language": "en"},
    {"id": "small", "prompt": "a question", "response_a": "b c", "response_b": "d e", "language": "en"},
]
MAX_TOKENS = 40


@pytest.fixture
def word_tokenizer(tmp_path):
    """A tokenizer with one token per whitespace-separated word (any unknown word is one [UNK]), saved the way a hub
    tokenizer folder is: its counts differ from characters / 4 in both directions."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = tmp_path / "word_tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(directory)
    yield directory
    filter_tokenizer.cache_clear()


def kept_and_filtered(tmp_path, filters: FilterConfig, name: str) -> tuple[list[str], dict]:
    path = write_jsonl(tmp_path / "pool.jsonl", ROWS)
    counts = build_dataset([SourceConfig(name="p", kind="pool", path=path, filters=filters)], tmp_path / name,
                           num_shards=1, num_folds=2, seed=0)["sources"]["p"]
    assert counts["read"] == counts["kept"] + counts["duplicates"] + counts["filtered"] + counts["quarantined"]
    return sorted(r["id"] for r in read_records(tmp_path / name, "pool")), counts


def test_max_tokens_counts_real_tokens_when_a_tokenizer_is_set(tmp_path, word_tokenizer):
    by_tokenizer = FilterConfig(max_tokens=MAX_TOKENS, tokenizer=str(word_tokenizer))
    by_estimate = FilterConfig(max_tokens=MAX_TOKENS)
    records = {row["id"]: {key: [row[key]] for key in ("prompt", "response_a", "response_b")} for row in ROWS}
    # The estimate and the real count disagree in both directions about the first two rows.
    assert estimated_tokens(records["short_words"], 4.0) == 32 and token_count(records["short_words"],
                                                                               by_tokenizer) == 64
    assert estimated_tokens(records["long_word"], 4.0) == 52 and token_count(records["long_word"], by_tokenizer) == 5

    kept, counts = kept_and_filtered(tmp_path, by_tokenizer, "tokens")
    assert kept == ["p/long_word", "p/small"]  # 206 characters but 5 tokens: kept; 64 short words: filtered
    assert counts["filters"] == {"max_tokens": 1} and (counts["read"], counts["filtered"]) == (3, 1)

    kept, counts = kept_and_filtered(tmp_path, by_estimate, "estimate")  # without a tokenizer: characters / 4
    assert kept == ["p/short_words", "p/small"]
    assert counts["filters"] == {"max_tokens": 1} and (counts["read"], counts["filtered"]) == (3, 1)


def test_a_tokenizer_with_its_own_code_is_refused_before_any_source_is_opened(tmp_path, word_tokenizer):
    config_file = word_tokenizer / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": ["tok.WordTokenizer", None]}}))
    filters = FilterConfig(max_tokens=MAX_TOKENS, tokenizer=str(word_tokenizer))
    # The input file is missing too: prepare would report that first if it loaded the tokenizer only at a row.
    source = SourceConfig(name="p", kind="pool", path=tmp_path / "missing.jsonl", filters=filters)
    with pytest.raises(ConfigError, match="filters.tokenizer: .*auto_map"):
        prepare.run(prepare.Config(output_dir=tmp_path / "ds", sources=[source]))
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ConfigError, match="filters.tokenizer: cannot load"):
        filter_tokenizer(str(tmp_path / "no_such_tokenizer"))
