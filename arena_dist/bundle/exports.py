"""The models a predict config uses, placed into a bundle: exports copied (with sha256 of every file), LoRA bases
copied or pointed at where the target serves them, and the config's paths rewritten to the bundle's copies.

The predict config is handled as plain YAML, not through its typed class, so the bundle keeps working whatever
shape that class takes: every mapping with an `export_path` (today each item of `models`) is a model, and every
string anywhere in the config that names a copied folder is rewritten. Paths in the bundled config are relative to the bundle folder; the
bundle's run script passes each rewritten key (`anchored`) as an absolute `--set` where the bundle lies.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from arena_dist.errors import ConfigError, InputError

EXPORTS_DIR = "exports"
BASES_DIR = "bases"
GENERIC_NAMES = {"export", "exports", "model", "final", "base"}  # a folder name that says nothing: its parent's is used


@dataclass
class Member:
    """One mapping of the predict config that names an export (`models.0`, `models.1`, ...)."""

    key: str
    node: dict  # the mapping itself, inside the config tree (edited in place)

    @property
    def export_path(self) -> str:
        return self.node["export_path"]


def find_members(tree, config_file: str | os.PathLike, key: str = "") -> list[Member]:
    """Every mapping with an `export_path`, depth first, with its dotted key."""
    found = []
    if isinstance(tree, dict):
        if "export_path" in tree:
            if not isinstance(tree["export_path"], str) or not tree["export_path"]:
                raise ConfigError(f"{config_file}: {key or '.'}.export_path should be a path, "
                                  f"got {tree['export_path']!r}")
            found.append(Member(key, tree))
        for name, value in tree.items():
            found += find_members(value, config_file, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += find_members(value, config_file, f"{key}.{index}" if key else str(index))
    return found


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _path_of(text: str) -> Path | None:
    """The folder a config string names once resolved (None for a string that cannot be a path)."""
    try:
        return _resolved(text)
    except (OSError, ValueError):  # e.g. an embedded NUL, a name too long
        return None


def folder_name(path: Path, taken: set[str]) -> str:
    """A readable, unique folder name for a copied model: `runs/student/gemma2_9b_f0/export` -> `gemma2_9b_f0`."""
    name = path.name if path.name.lower() not in GENERIC_NAMES or path.parent == path else path.parent.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"
    unique, number = name, 1
    while unique in taken:
        number += 1
        unique = f"{name}-{number}"
    taken.add(unique)
    return unique


@dataclass
class Placement:
    """Where the predict config's models go: source folder -> bundle-relative folder, and the base of each LoRA
    member that stays outside the bundle (member key -> its path on the target)."""

    exports: dict[Path, str] = field(default_factory=dict)
    bases: dict[Path, str] = field(default_factory=dict)
    external_bases: dict[str, str] = field(default_factory=dict)
    metas: dict[Path, dict] = field(default_factory=dict)


def place_models(members: list[Member], config_file: str | os.PathLike, copy_bases: bool,
                 base_paths: dict[str, str]) -> Placement:
    """Check every export (a folder with arena_dist metadata) and decide where it and its base go. Set here, in
    each LoRA member: `base_path`, the copied base (relative) or the configured path on the target."""
    from arena_dist.models.export import read_export_meta

    if not members:
        raise ConfigError(f"{config_file}: no export_path anywhere in the predict config: nothing to bundle")
    placement, taken = Placement(), set()
    for member in members:
        source = _resolved(member.export_path)
        if not source.is_dir():
            raise InputError(f"{config_file}: {member.key}.export_path {member.export_path} is not a folder")
        if source not in placement.exports:
            placement.metas[source] = read_export_meta(source)
            placement.exports[source] = f"{EXPORTS_DIR}/{folder_name(source, taken)}"
        meta = placement.metas[source]
        if not meta.get("lora") or meta.get("base_dir"):
            continue  # a full model, or a LoRA export that carries its own base: the copy holds everything
        _place_base(member, meta, config_file, copy_bases, base_paths, placement, taken)
    return placement


def _place_base(member: Member, meta: dict, config_file, copy_bases: bool, base_paths: dict[str, str],
                placement: Placement, taken: set[str]) -> None:
    given = member.node.get("base_path")
    base = given if isinstance(given, str) and given else (meta.get("base") or {}).get("name_or_path")
    setting = f"{member.key}.base_path"
    if not base:
        raise InputError(f"{member.export_path}: a LoRA export without a recorded base; set {setting}")
    if copy_bases:
        folder = _resolved(base)
        if not folder.is_dir():
            raise InputError(f"{config_file}: {setting}: the LoRA base {base} of {member.export_path} is not a "
                             "folder here to copy (a hub id?); give its folder as base_path, or leave copy_bases off "
                             "and map it in base_paths")
        if folder not in placement.bases:
            placement.bases[folder] = f"{BASES_DIR}/{folder_name(folder, taken)}"
        member.node["base_path"] = str(folder)  # `rewrite_paths` turns it into the copy's path
        return
    if base not in base_paths:
        raise ConfigError(f"{config_file}: {member.key} is a LoRA export whose base ({base}) is not bundled: set "
                          f"base_paths.{base!r} to where the target serves that model (e.g. /kaggle/input/...), "
                          "or copy_bases: true")
    member.node["base_path"] = base_paths[base]
    placement.external_bases[member.key] = base_paths[base]


def rewrite_paths(tree, sources: dict[Path, str], key: str = "") -> tuple[object, dict[str, str]]:
    """A copy of `tree` where every string that names one of `sources` (as written, or the same folder once
    resolved) is that source's bundle-relative path; also {dotted key: relative path} of every rewrite."""
    anchored: dict[str, str] = {}

    def walk(node, at: str):
        if isinstance(node, dict):
            return {name: walk(value, f"{at}.{name}" if at else str(name)) for name, value in node.items()}
        if isinstance(node, list):
            return [walk(value, f"{at}.{index}" if at else str(index)) for index, value in enumerate(node)]
        target = sources.get(_path_of(node)) if isinstance(node, str) and node else None
        if target is not None:
            anchored[at] = target
            return target
        return node

    return walk(copy.deepcopy(tree), key), anchored


# ---------------------------------------------------------------------------------------------------- copying
def _copy_file_hashed(source: Path, target: Path, advance, chunk: int = 8 << 20) -> str:
    """Copy one file and return the sha256 of the bytes written (read once for both)."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while block := reader.read(chunk):
            digest.update(block)
            writer.write(block)
            advance(len(block))
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def folder_files(source: Path) -> list[Path]:
    """The files of a model folder, relative, sorted; hidden entries (an output marker, temporary files) are not
    part of the model."""
    files = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts) or "__pycache__" in relative.parts:
            continue
        if path.is_file():
            files.append(relative)
    return files


def copy_folder(source: Path, target: Path, advance) -> dict:
    """Copy a model folder; -> {files: {relative: {size, sha256}}, size, sha256 (of the sorted file list)}."""
    files = {}
    for relative in folder_files(source):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        sha = _copy_file_hashed(source / relative, target / relative, advance)
        files[relative.as_posix()] = {"size": (source / relative).stat().st_size, "sha256": sha}
    listing = "".join(f"{sha['sha256']}  {name}\n" for name, sha in sorted(files.items()))
    return {"files": files, "size": sum(f["size"] for f in files.values()),
            "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def folders_size(folders) -> int:
    return sum((folder / relative).stat().st_size for folder in folders for relative in folder_files(folder))
