"""Safe writes: atomic files, atomic directory replacement, and output directories that are provably ours.

- `atomic_path` / `atomic_write_*`: write to a temporary name in the same directory, fsync, then rename. A crash
  leaves the old file or the new one, never a half-written file under the final name.
- `claim_output_dir`: a stage that writes into a directory first claims it. A new or empty directory is claimed by
  writing the ownership marker (`OWNER_MARKER`); a directory that already carries it is ours to write into; anything
  else (the user's files, the raw data, `.`) is refused with a one-line error. So no stage ever overwrites or
  removes what it did not create.
- `atomic_directory`: build a whole tree beside its target and swap it in. The old tree is replaced only when it
  carries the marker, and the swap never leaves a moment without a tree: an atomic exchange of the two names on
  Linux (`renameat2(RENAME_EXCHANGE)`), else two renames through a fixed backup name that `recover_replaced` (run
  at the start of every claim and swap) renames back when a crash fell between them.

Every file and directory is created with mode 0o666 / 0o777 and the kernel applies the process umask, so outputs
get the user's usual permissions; the process umask is never read or changed (changing it races with threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator

from arena_dist.errors import InputError

OWNER_MARKER = ".arena_dist_output"
_MARKER_TEXT = json.dumps({"created_by": "arena_dist"}) + "\n"
_REPLACED_SUFFIX = ".replaced"


# ------------------------------------------------------------------------------------------------------------ files
def _new_temp(directory: Path, name: str, create) -> Path:
    """A fresh hidden name in `directory`, made by `create` (which raises FileExistsError when it is taken): an empty
    file with mode 0o666 or a directory with 0o777, minus the umask (mkstemp / mkdtemp would give 0600 / 0700)."""
    while True:
        path = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            create(path)
            return path
        except FileExistsError:
            continue


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`, on error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(target.parent, target.name, _create_file)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def json_safe(obj):
    """`obj` with every NaN / ±Infinity float as None: they are not JSON, and strict readers refuse the file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def atomic_write_json(target: str | os.PathLike, obj) -> Path:
    """Always valid JSON: non-finite floats are written as null (see `json_safe`)."""
    return atomic_write_text(target, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ output ownership
def is_project_output(path: str | os.PathLike) -> bool:
    """True when `path` is a directory this project created (it carries the ownership marker)."""
    return (Path(path) / OWNER_MARKER).is_file()


def _mark(directory: Path) -> None:
    marker = directory / OWNER_MARKER
    if not marker.is_file():
        atomic_write_text(marker, _MARKER_TEXT)


def _foreign_entry(directory: Path) -> str | None:
    """The name of one entry of a non-empty directory (for the error), None when it is empty."""
    with os.scandir(directory) as entries:
        return next((entry.name for entry in entries), None)


def check_replaceable(target: str | os.PathLike, what: str = "output directory") -> Path:
    """Raise InputError unless `target` is absent, an empty directory, or a directory this project created."""
    target = Path(target)
    recover_replaced(target)
    if target.is_symlink() and not target.exists():
        raise InputError(f"{target}: {what} is a broken symbolic link")
    if not target.exists():
        return target
    if not target.is_dir():
        raise InputError(f"{target}: {what} exists and is not a directory")
    if is_project_output(target):
        return target
    entry = _foreign_entry(target)
    if entry is not None:
        raise InputError(f"{target}: {what} holds files arena_dist did not write (e.g. {entry!r}); "
                         "choose a new or empty directory")
    return target


# Directories claimed by this process, oldest first, with the time of the claim: a stage's start (its record's
# `started`) and where the CLI records a stage that failed after claiming (arena_dist.artefacts).
_CLAIMS: dict[Path, float] = {}


def claim_output_dir(target: str | os.PathLike, what: str = "output directory") -> Path:
    """Make `target` a directory of ours to write into (see the module docstring); returns it."""
    target = check_replaceable(target, what)
    target.mkdir(parents=True, exist_ok=True)
    _mark(target)
    _CLAIMS.pop(target.resolve(), None)
    _CLAIMS[target.resolve()] = time.time()
    return target


def claim_time(target: str | os.PathLike) -> float | None:
    """Unix time at which this process last claimed `target`, None when it did not."""
    return _CLAIMS.get(Path(target).resolve())


def claimed_dirs() -> list[Path]:
    """Directories this process claimed, in the order of their (latest) claims."""
    return list(_CLAIMS)


# ----------------------------------------------------------------------------------------------- directory swaps
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two existing paths (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # a filesystem (or kernel) without RENAME_EXCHANGE: two renames instead
    raise OSError(code, f"cannot swap {b} into place: {os.strerror(code)}")


def _replaced_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{_REPLACED_SUFFIX}")


def recover_replaced(target: str | os.PathLike) -> None:
    """Undo a swap cut short between its two renames: the old tree is back under its name."""
    target = Path(target)
    backup = _replaced_name(target)
    if backup.is_dir() and is_project_output(backup):
        if target.exists():
            shutil.rmtree(backup)  # the swap finished; only the clean-up was cut short
        else:
            os.rename(backup, target)


def _swap_in(new: Path, target: Path) -> None:
    """Put the complete tree `new` under `target`'s name; at every instant one of the two trees is there."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # now holds the old tree
        return
    backup = _replaced_name(target)
    os.rename(target, backup)
    os.rename(new, target)
    shutil.rmtree(backup)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it replaces `target`.

    An existing `target` must be ours (ownership marker) or empty: checked before any work and again before the
    swap. The new tree carries the marker, so a later run may replace it."""
    target = Path(target)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(target.parent, target.name, Path.mkdir)
    try:
        _mark(tmp)
        yield tmp
        check_replaceable(target)
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
