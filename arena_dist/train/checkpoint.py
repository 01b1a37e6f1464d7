"""Checkpoint layout, completeness markers and world-size conversion.

    <run dir>/checkpoints/step_0000040/          DeepSpeed save_checkpoint(tag="step_0000040"), one file per rank
    <run dir>/checkpoints/step_0000040/COMPLETE  written by rank 0 after every rank saved (barrier): JSON with step,
                                                 world size and data position
    <run dir>/checkpoints/step_0000040_universal/  ds_to_universal output, made once when the world size changes

A directory without COMPLETE (a crash mid-save) is never resumed from. After each complete save rank 0 keeps only
the newest `training.keep_last` (`prune_checkpoints`). Pure file logic: no torch.distributed here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from arena_dist.io import atomic_directory, atomic_write_json

CHECKPOINT_DIR = "checkpoints"
MARKER = "COMPLETE"
TAG_PATTERN = re.compile(r"^step_(\d{7})$")
UNIVERSAL_SUFFIX = "_universal"
PRUNING_SUFFIX = ".pruning"  # hidden name of a checkpoint being deleted
PRUNING_PATTERN = re.compile(r"^\.step_\d{7}(_universal)?\.pruning$")


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def write_marker(directory: Path, info: dict) -> Path:
    return atomic_write_json(Path(directory) / MARKER, info)


def read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def complete_checkpoints(root: str | os.PathLike) -> list[tuple[int, str, dict]]:
    """(step, tag, marker) of every complete checkpoint, oldest first."""
    root = Path(root)
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = TAG_PATTERN.match(entry.name)
            if match and entry.is_dir():
                marker = read_marker(entry)
                if marker is not None:
                    found.append((int(match.group(1)), entry.name, marker))
    return sorted(found)


def latest_complete(root: str | os.PathLike) -> tuple[str, dict] | None:
    found = complete_checkpoints(root)
    return (found[-1][1], found[-1][2]) if found else None


def remove_incomplete(root: str | os.PathLike, tag: str) -> bool:
    """Remove `tag` when it exists without a marker (leftover of a crash), so a new save starts clean."""
    directory = Path(root) / tag
    if directory.is_dir() and read_marker(directory) is None:
        shutil.rmtree(directory)
        return True
    return False


def ensure_universal(root: str | os.PathLike, tag: str, timeout: float = 3600) -> str:
    """Convert checkpoint `tag` to DeepSpeed's universal format once (atomically); returns the universal tag.

    Called by one process (rank 0) while the others wait at a barrier."""
    root = Path(root)
    universal = tag + UNIVERSAL_SUFFIX
    target = root / universal
    if read_marker(target) is not None:
        return universal
    # Built beside its final name and swapped in (arena_dist.io.atomic_directory): a crash leaves no half
    # conversion under the name, and the tree gets the user's umask.
    with atomic_directory(target) as output:
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                   "--input_folder", str(root / tag), "--output_folder", str(output), "--num_extract_workers", "1",
                   "--num_merge_workers", "1"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed for {root / tag}:\n{done.stderr[-3000:]}")
        shutil.copy2(root / tag / MARKER, output / "SOURCE_COMPLETE")
        write_marker(output, {**(read_marker(root / tag) or {}), "universal_of": tag})
    return universal


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[str]:
    """Keep the newest `keep_last` complete checkpoints (with their universal conversions); returns the removed tags.

    A 70B ZeRO-3 checkpoint is over 1 TB, so old ones must go, but only ever ones this project wrote: `step_XXXXXXX`
    folders with a COMPLETE marker, and a `_universal` folder whose marker names that source. Anything else (unknown
    files, folders without a marker) is left alone. Called by one process (rank 0) after a new checkpoint is
    complete. The checkpoint a run resumed from is safe until then: it was the newest complete one, and the newest is
    always kept (keep_last >= 1); a newer save counts only once its marker exists.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(root)
    remove_pruning_leftovers(root)
    removed = []
    for _, tag, _ in complete_checkpoints(root)[:-keep_last]:
        universal = universal_of(root, tag)
        if universal is not None:  # first: a crash in between leaves the source, pruned again next time
            removed.append(_remove(universal))
        removed.append(_remove(root / tag))
    return removed


def universal_of(root: Path, tag: str) -> Path | None:
    """`tag`'s universal conversion, when ensure_universal wrote it (its marker names `tag`)."""
    universal = root / (tag + UNIVERSAL_SUFFIX)
    marker = read_marker(universal) if universal.is_dir() else None
    return universal if marker is not None and marker.get("universal_of") == tag else None


def _remove(directory: Path) -> str:
    """Rename to a hidden name first (atomic: from then on it matches no tag, so it is never resumed from, even if
    the deletion below is cut short), then delete."""
    hidden = directory.with_name(f".{directory.name}{PRUNING_SUFFIX}")
    os.replace(directory, hidden)
    shutil.rmtree(hidden)
    return directory.name


def remove_pruning_leftovers(root: Path) -> None:
    """Hidden folders of a deletion a crash cut short (only prune_checkpoints makes these names)."""
    if root.is_dir():
        for entry in root.iterdir():
            if PRUNING_PATTERN.match(entry.name) and entry.is_dir():
                shutil.rmtree(entry)
