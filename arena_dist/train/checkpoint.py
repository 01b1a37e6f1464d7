"""Checkpoint layout, completeness markers and world-size conversion.

    <run dir>/checkpoints/step_0000040/          DeepSpeed save_checkpoint(tag="step_0000040"), one file per rank
    <run dir>/checkpoints/step_0000040/COMPLETE  written by rank 0 after every rank saved (barrier): JSON with step,
                                                 world size and data position
    <run dir>/checkpoints/step_0000040_universal/  ds_to_universal output, made once when the world size changes

A directory without COMPLETE (a crash mid-save) is never resumed from. Pure file logic: no torch.distributed here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from arena_dist.io import atomic_write_json

CHECKPOINT_DIR = "checkpoints"
MARKER = "COMPLETE"
TAG_PATTERN = re.compile(r"^step_(\d{7})$")
UNIVERSAL_SUFFIX = "_universal"


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
    work = Path(tempfile.mkdtemp(prefix=f".{universal}.", dir=root))
    try:
        output = work / "out"
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                   "--input_folder", str(root / tag), "--output_folder", str(output), "--num_extract_workers", "1",
                   "--num_merge_workers", "1"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed for {root / tag}:\n{done.stderr[-3000:]}")
        shutil.copy2(root / tag / MARKER, output / "SOURCE_COMPLETE")
        write_marker(output, {**(read_marker(root / tag) or {}), "universal_of": tag})
        if target.exists():
            shutil.rmtree(target)
        os.replace(output, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return universal
