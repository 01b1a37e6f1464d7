"""Look at a source file's bytes before parsing it: is it what its kind claims?

A wrong file (a Git LFS pointer, a zip, a parquet file named .csv, a UTF-16 export, a cp1252 file) used to parse
into garbage rows or rows full of U+FFFD. Every reader now calls `check_parquet` or `check_text` first, and each
problem is one `InputError` line naming the file and what it looks like.

Choices:

- **gzip**: csv and JSONL sources may be gzip-compressed (found by the magic bytes, whatever the file name). They are
  stream-decompressed (`gzip.GzipFile`), never unpacked to disk, so memory stays flat. A parquet source must be plain
  parquet: parquet compresses its pages itself, and a gzip around it (or parquet inside a gzip given as csv/JSONL) is
  refused with a hint to gunzip it.
- **Git LFS pointers** (a small text file standing in for the real one) are refused with a hint to `git lfs pull`.
- **Binary data** as a text kind (parquet, zip, xz, bzip2, zstd magic, or a NUL byte in the first block) is refused,
  naming what it looks like. A parquet source must start and end with the `PAR1` magic.
- **Encodings**: text is decoded strictly with the source's `encoding` (default utf-8). A validation pre-pass streams
  every byte through an incremental decoder before any row is read, so a file that is not valid in its encoding
  stops with the byte offset of the first bad byte (in the decompressed stream for gzip), never silent U+FFFD.
  Lone surrogates written as JSON escapes ("\\ud83d") are valid text and are still repaired by the readers.
- **Byte order marks**: a leading BOM matching the encoding is dropped (a UTF-8 BOM on a utf-8 source, UTF-16/32
  BOMs on utf-16/32 sources). A UTF-16/32 BOM on a source whose encoding is not UTF-16/32 is an error suggesting
  `encoding: utf-16` (or utf-32), and a UTF-8 BOM on a source with another encoding is an error too.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from arena_dist.errors import InputError

BLOCK = 1 << 16  # bytes looked at by the sniffers
CHUNK = 1 << 20  # bytes per step of the validation pre-pass

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
# Containers a source is sometimes mistaken for: (magic, what it is). bzip2 needs its block magic too: "BZh" alone
# could start a text header.
MAGICS = (
    (PARQUET_MAGIC, "a parquet file"),
    (GZIP_MAGIC, "gzip-compressed data"),
    (b"PK\x03\x04", "a zip archive (unzip it first)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (decompress it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (decompress it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive (unpack it first)"),
    (b"ARROW1", "an Arrow IPC file"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
BZIP2_BLOCK = b"1AY&SY"
UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)  # checked before UTF-16: FF FE 00 00 starts with FF FE
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# Errors a corrupt or truncated gzip stream raises while it is read.
GZIP_ERRORS = (OSError, EOFError, zlib.error)


def one_line(exc: BaseException) -> str:
    """An exception's message as one line (pyarrow and zlib messages can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def cannot_read(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or one_line(exc)})")


def codec_name(encoding: str) -> str:
    """Python's canonical name of a text encoding ("UTF8" -> "utf-8"); LookupError when unknown or not text."""
    name = codecs.lookup(encoding).name
    "".encode(name)  # refuses bytes-to-bytes and str-to-str codecs (hex, zlib, rot13)
    return name


def _family(codec: str) -> str:
    """utf-8 / utf-16 / utf-32 / other: which byte order marks belong to an encoding."""
    for family in ("utf-8", "utf-16", "utf-32"):
        if codec == family or codec.startswith(family + "-"):
            return family
    return "other"


def _ascii_compatible(codec: str) -> bool:
    try:
        return "\n,{\"a".encode(codec) == b"\n,{\"a"
    except UnicodeError:
        return False


def _head(path: Path, size: int = BLOCK) -> bytes:
    """The first bytes of a source, which must not be a Git LFS pointer (a stand-in for the real file)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(size)
    except OSError as exc:
        raise cannot_read(path, exc) from None
    if head.startswith(LFS_POINTER):
        raise InputError(f"{path}: a Git LFS pointer, not the data: fetch the real file (git lfs pull)")
    return head


def _looks_like(head: bytes) -> str | None:
    """What a block of bytes looks like when it is a known container, else None."""
    for magic, what in MAGICS:
        if head.startswith(magic):
            return what
    if head.startswith(b"BZh") and head[4:10] == BZIP2_BLOCK:
        return "bzip2-compressed data (decompress it first)"
    return None


# ---------------------------------------------------------------------------------------------------------- parquet
def check_parquet(path: Path) -> None:
    """A parquet source starts and ends with PAR1; anything else is one InputError saying what the file looks like."""
    head = _head(path)
    if head.startswith(GZIP_MAGIC):
        raise InputError(f"{path}: gzip-compressed, not a parquet file (parquet compresses itself: gunzip it)")
    if not head:
        raise InputError(f"{path}: empty file (0 bytes), not a parquet file")
    if not head.startswith(PARQUET_MAGIC):
        what = _looks_like(head) or ("text (csv or JSONL?)" if _is_text(head) else "binary data of unknown format")
        raise InputError(f"{path}: not a parquet file (no PAR1 magic; it looks like {what})")
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, io.SEEK_END)
            handle.seek(max(0, size - 4))
            tail = handle.read(4)
    except OSError as exc:
        raise cannot_read(path, exc) from None
    if size < 12 or tail != PARQUET_MAGIC:
        raise InputError(f"{path}: truncated or damaged parquet file (no PAR1 magic at the end)")


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoder.decode(head)
    except UnicodeDecodeError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------------- text
@dataclass(frozen=True)
class TextFile:
    """A checked text source: how to open it (gzip or not) and decode it."""

    path: Path
    codec: str
    compressed: bool

    def open_binary(self) -> BinaryIO:
        if self.compressed:
            return gzip.open(self.path, "rb")  # type: ignore[return-value]
        return open(self.path, "rb")

    def lines(self, newline: str | None) -> Iterator[str]:
        """The decoded lines, without a leading BOM. Errors after the checks (the file changed meanwhile) are
        InputErrors too."""
        try:
            with self.open_binary() as binary, io.TextIOWrapper(binary, self.codec, "strict", newline) as text:
                for number, line in enumerate(text):
                    yield line[1:] if number == 0 and line.startswith("\ufeff") else line
        except (UnicodeDecodeError, *GZIP_ERRORS) as exc:
            raise cannot_read(self.path, exc) from None


def check_text(path: Path, encoding: str, what: str) -> TextFile:
    """Sniff a csv/JSONL source (`what` names the kind in messages), then validate every byte in its encoding."""
    codec = codec_name(encoding)
    head = _head(path)
    compressed = head.startswith(GZIP_MAGIC)
    if compressed:
        head = _gunzip_head(path)
    looks = _looks_like(head)
    if looks:
        inside = "gzip-compressed file holding " if compressed else ""
        raise InputError(f"{path}: {inside}{looks}, not {what}")
    _check_bom(path, head, codec, encoding)
    if _has_nul(head, codec):
        utf16 = _utf16_without_bom(head)
        looks = f"UTF-16 text without a byte order mark (set encoding: {utf16})" if utf16 else "binary data"
        raise InputError(f"{path}: NUL bytes in the first {BLOCK // 1024} KiB: {looks}, not {what}")
    text_file = TextFile(path, codec, compressed)
    _validate(text_file, encoding)
    return text_file


def _gunzip_head(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(BLOCK)
    except GZIP_ERRORS as exc:
        raise InputError(f"{path}: damaged gzip file ({one_line(exc)})") from None


def _check_bom(path: Path, head: bytes, codec: str, encoding: str) -> None:
    family = _family(codec)
    for boms, bom_family in ((UTF32_BOMS, "utf-32"), (UTF16_BOMS, "utf-16")):
        if head.startswith(boms):
            if family == bom_family:
                return
            raise InputError(f"{path}: starts with a {bom_family.upper()} byte order mark but is read as {encoding}; "
                             f"set encoding: {bom_family} for this source")
    if head.startswith(codecs.BOM_UTF8) and family != "utf-8":
        raise InputError(
            f"{path}: starts with a UTF-8 byte order mark but is read as {encoding}; remove the encoding option"
        )


def _has_nul(head: bytes, codec: str) -> bool:
    """NUL in the first block. For encodings that are not ASCII-based (UTF-16/32) NUL bytes are normal: look for
    decoded NUL characters instead."""
    if _ascii_compatible(codec):
        return b"\x00" in head
    return "\x00" in head.decode(codec, "replace")


def _utf16_without_bom(head: bytes) -> str | None:
    """utf-16-le / utf-16-be when ASCII-range text in UTF-16 is likely (a NUL in nearly every other byte)."""
    sample = head[:1024]
    pairs = len(sample) // 2
    if pairs < 4:
        return None
    for order, nul_at in (("utf-16-le", 1), ("utf-16-be", 0)):
        nuls = sum(sample[i] == 0 for i in range(nul_at, 2 * pairs, 2))
        others = sum(sample[i] == 0 for i in range(1 - nul_at, 2 * pairs, 2))
        if nuls >= 0.9 * pairs and others == 0:
            return order
    return None


def _validate(text_file: TextFile, encoding: str) -> None:
    """Stream every byte through a strict incremental decoder: the first bad byte stops with its offset."""
    decoder = codecs.getincrementaldecoder(text_file.codec)("strict")
    offset = 0  # bytes fed to the decoder so far
    try:
        with text_file.open_binary() as handle:
            while block := handle.read(CHUNK):
                _decode(text_file, encoding, decoder, block, offset)
                offset += len(block)
            _decode(text_file, encoding, decoder, b"", offset, final=True)
    except GZIP_ERRORS as exc:
        if text_file.compressed:
            raise InputError(f"{text_file.path}: damaged gzip file ({one_line(exc)})") from None
        raise cannot_read(text_file.path, exc) from None


def _decode(text_file: TextFile, encoding: str, decoder, block: bytes, offset: int, final: bool = False) -> None:
    pending = decoder.getstate()[0]  # bytes of an incomplete character held back from the previous block
    try:
        decoder.decode(block, final)
    except UnicodeDecodeError as exc:
        where = offset - len(pending) + exc.start
        bad = exc.object[exc.start : exc.start + 4].hex(" ")
        stream = " of the decompressed data" if text_file.compressed else ""
        hint = (
            "set this source's encoding (e.g. encoding: cp1252 or latin-1) if the file is in another one"
            if _family(text_file.codec) == "utf-8"
            else "check the source's encoding"
        )
        raise InputError(
            f"{text_file.path}: not valid {encoding} at byte offset {where:,}{stream} (bytes {bad}: {exc.reason}); "
            f"{hint}"
        ) from None
