"""Text repair, normalisation and stable hashes (pure: no heavy imports).

- `repair_text` turns lone UTF-16 surrogates (from JSON escapes like "\\ud83d" or undecodable bytes read with
  `surrogateescape`) into U+FFFD, so every text can be encoded as UTF-8; valid pairs are joined.
- `normalize_text` is the comparison form used for dedup and fold grouping: NFKC, case-folded, whitespace collapsed.
- Hashes are blake2b, never Python's `hash()` (salted per process), so shards and folds are the same on every run.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

_SURROGATE = re.compile("[\ud800-\udfff]")
_TURN_SEP = "\x1f"  # unit separator: cannot collide with text after normalisation joins
_PART_SEP = "\x1e"


def repair_text(text: str) -> tuple[str, bool]:
    """(text with lone surrogates replaced by U+FFFD, whether anything was repaired)."""
    if not _SURROGATE.search(text):
        return text, False
    # Round-trip through UTF-16 joins valid high+low pairs into one code point and replaces the lone halves.
    repaired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return repaired, True


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split())  # str.split() splits on every Unicode whitespace; faster than a regex


def normalized_turns(turns: Sequence[str]) -> str:
    return _TURN_SEP.join(normalize_text(turn) for turn in turns)


def hash64(text: str, salt: str = "") -> int:
    """Stable unsigned 64-bit hash of `text` (blake2b)."""
    digest = hashlib.blake2b(f"{salt}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def prompt_key(prompt: Sequence[str]) -> str:
    """Normalised prompt (all turns): the unit of fold grouping."""
    return normalized_turns(prompt)


def comparison_hash(
    prompt: Sequence[str], response_a: Sequence[str], response_b: Sequence[str], key: str | None = None
) -> int:
    """Content hash of a comparison; (A, B) and (B, A) of the same prompt hash the same.

    `key` is `prompt_key(prompt)` when the caller already has it (it is also the fold key)."""
    a, b = sorted((normalized_turns(response_a), normalized_turns(response_b)))
    return hash64(_PART_SEP.join((prompt_key(prompt) if key is None else key, a, b)), salt="comparison")


class SeenHashes:
    """A set of 64-bit hashes in about 8 bytes per entry.

    Recent hashes sit in a small Python set; when it fills up they are merged into a sorted numpy array that is
    searched with `searchsorted`. A plain Python set of 1M ints costs about 60 MB, this about 8 MB, which keeps
    `prepare`'s peak memory nearly flat in the number of rows.

    The sorted array lives at the front of a buffer with spare capacity (grown by doubling, in place where the
    allocator can: `ndarray.resize`), and a flush merges the new hashes into it in place, moving the old ones right
    in chunks from the back. No flush allocates anything the size of the whole set: `np.union1d` did (a concatenated
    copy, a sorted copy, a masked copy), so every flush churned several whole-set temporaries and the peak grew with
    the rows.
    """

    _MOVE_CHUNK = 65536  # old entries moved per step of a flush (the only temporaries: this many, twice)

    def __init__(self, buffer_size: int = 65536):
        self._buffer = np.empty(0, dtype=np.uint64)
        self._size = 0  # entries in use at the front of `_buffer`, sorted, distinct
        self._recent: set[int] = set()
        self._buffer_size = buffer_size

    @property
    def _sorted(self) -> np.ndarray:
        return self._buffer[:self._size]

    def __len__(self) -> int:
        return self._size + len(self._recent)

    def __contains__(self, value: int) -> bool:
        if value in self._recent:
            return True
        sorted_ = self._sorted
        index = int(np.searchsorted(sorted_, np.uint64(value)))
        return index < len(sorted_) and int(sorted_[index]) == value

    def add(self, value: int) -> bool:
        """Add `value`; True if it was new."""
        if value in self:
            return False
        self._recent.add(value)
        if len(self._recent) >= self._buffer_size:
            self._flush()
        return True

    def update(self, values: Iterable[int]) -> None:
        for value in values:
            self.add(value)

    def _flush(self) -> None:
        if not self._recent:
            return
        # Distinct, and none already in the array (`add` checks), so the merge never meets equal values.
        fresh = np.sort(np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent)))
        self._recent.clear()
        old, total = self._size, self._size + len(fresh)
        if total > len(self._buffer):
            self._buffer.resize(max(total, 2 * len(self._buffer), 1024), refcheck=False)
        buffer = self._buffer
        # Fresh value j goes to j + (old entries below it); worked out before the old entries move.
        fresh_slots = np.searchsorted(buffer[:old], fresh) + np.arange(len(fresh))
        # Old entry i goes to i + (fresh values below it); from the back, so no entry is overwritten before it moved.
        for high in range(old, 0, -self._MOVE_CHUNK):
            low = max(0, high - self._MOVE_CHUNK)
            chunk = buffer[low:high].copy()
            buffer[np.arange(low, high) + np.searchsorted(fresh, chunk)] = chunk
        buffer[fresh_slots] = fresh
        self._size = total
