"""Per-source row filters and language identification, applied by `prepare` before dedup.

A filtered record is neither kept nor quarantined: the manifest counts it per filter (`filters: {name: n}`), so
`records = kept + duplicates + filtered` still accounts for every record. Filters are cheap on purpose: token counts
are estimated from characters unless a `tokenizer` is named (then it is loaded once per process and counts real
tokens), and language identification uses py3langid, whose model ships inside the package (nothing is downloaded) and
classifies a row in tens of microseconds.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from pydantic import Field

from arena_dist.config import StrictModel
from arena_dist.data.records import UNKNOWN_LANGUAGE, Record
from arena_dist.errors import ConfigError

# Filter names, as counted in the manifest.
MIN_RESPONSE_CHARS = "min_response_chars"
MAX_TURNS = "max_turns"
MAX_TOKENS = "max_tokens"
LANGUAGE = "language"

DETECT_CHARS = 2000  # characters of the prompt (then the responses) looked at by language identification
TEXT_KEYS = ("prompt", "response_a", "response_b")


class FilterConfig(StrictModel):
    # A record is filtered when a response (all its turns together) is shorter than this many characters.
    min_response_chars: int | None = Field(None, ge=1)
    max_turns: int | None = Field(None, ge=1)  # ... when the prompt has more turns than this
    # ... when prompt + both responses are above this many tokens: counted by `tokenizer` when one is set, else
    # estimated as characters / chars_per_token.
    max_tokens: int | None = Field(None, ge=1)
    chars_per_token: float = Field(4.0, gt=0.0)
    # Hub id or local folder ("local": the repo's small BPE) of the tokenizer that counts max_tokens: the sum over
    # turns of its plain encoding (no special tokens, no chat template). Its own Python code (auto_map) never runs.
    tokenizer: str | None = None
    # Rows whose language is unknown (no language column, no source `language`) get one from py3langid.
    detect_language: bool = False
    languages: list[str] | None = Field(None, min_length=1)  # ... when its language is not one of these


def estimated_tokens(record: Record, chars_per_token: float) -> int:
    chars = sum(len(turn) for key in TEXT_KEYS for turn in record[key])
    return math.ceil(chars / chars_per_token)


@functools.lru_cache(maxsize=None)
def filter_tokenizer(name: str):
    """The tokenizer named by `filters.tokenizer`, loaded once per process (sources naming the same one share it).
    A local folder whose config declares its own code (`auto_map`) is refused before transformers could import it;
    a hub id is loaded with trust_remote_code=False, which transformers refuses for such a tokenizer."""
    from arena_dist.formatting.tokenizer import load_tokenizer
    from arena_dist.models.export import declared_remote_code

    found = Path(name).is_dir() and declared_remote_code(Path(name))
    if found:
        raise ConfigError(f"filters.tokenizer: {name} ships Python code (auto_map in {found}); prepare never runs "
                          "a tokenizer's own code: name one without it")
    try:
        return load_tokenizer(name, trust_remote_code=False)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # not found, offline without a cached copy, remote code, bad files
        raise ConfigError(f"filters.tokenizer: cannot load {name!r} ({exc})".replace("\n", " ")) from None


def token_count(record: Record, config: FilterConfig) -> int:
    """Tokens of prompt + both responses: real ones with `config.tokenizer`, else the character estimate."""
    if config.tokenizer is None:
        return estimated_tokens(record, config.chars_per_token)
    turns = [turn for key in TEXT_KEYS for turn in record[key]]
    if not turns:
        return 0
    encoded = filter_tokenizer(config.tokenizer)(turns, add_special_tokens=False)["input_ids"]
    return sum(len(ids) for ids in encoded)


def filter_reason(record: Record, config: FilterConfig) -> str | None:
    """The name of the first filter `record` fails, or None when it passes them all."""
    responses = [record["response_a"], record["response_b"]]
    if config.min_response_chars is not None and record["response_a"]:  # prompt-only records have no responses
        if min(sum(len(turn.strip()) for turn in response) for response in responses) < config.min_response_chars:
            return MIN_RESPONSE_CHARS
    if config.max_turns is not None and len(record["prompt"]) > config.max_turns:
        return MAX_TURNS
    if config.max_tokens is not None and token_count(record, config) > config.max_tokens:
        return MAX_TOKENS
    if config.languages is not None and record["language"] not in config.languages:
        return LANGUAGE
    return None


def detect_language(record: Record) -> str:
    """ISO 639-1 code of the record's text (prompt first), or `unknown` when it holds no letters to go by."""
    text = "\n".join(record["prompt"] + record["response_a"][:1] + record["response_b"][:1])[:DETECT_CHARS]
    if not any(char.isalpha() for char in text):
        return UNKNOWN_LANGUAGE
    import py3langid  # loads its packaged model once per process (about half a second)

    language, _score = py3langid.classify(text)
    return language


def assign_language(record: Record, config: FilterConfig) -> None:
    if config.detect_language and record["language"] == UNKNOWN_LANGUAGE:
        record["language"] = detect_language(record)
