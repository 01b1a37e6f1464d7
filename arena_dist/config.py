"""Typed stage configuration: YAML + `--set key=value` overrides, validated into pydantic models.

The pydantic model of a stage is the single source of truth for its settings. YAML files and `--set` only override
fields; an unknown key, a wrong type or an out-of-range value is one `ConfigError` line naming the key and the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from arena_dist.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML so `3`, `0.5`, `true`, `[1,2]` keep their types)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Set each dotted key; a numeric part indexes an existing list (`teachers.0.export_path=...`)."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: {part!r} is not an index of a list of {len(node)}")
                key = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ConfigError(f"--set {item!r}: {path[depth - 1]!r} is not a section")
            if last:
                node[key] = value
                break
            child = node[key] if isinstance(node, list) else node.get(key)
            if child is None:
                child = node[key] = {}
            node = child
    return data


def _format_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = first["msg"]
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    suffix = f" (+{more} more error{'s' if more > 1 else ''})" if more else ""
    return f"config error in {origin}: {key}: {message}{suffix}"


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> T:
    """Read YAML at `path` (optional), apply `--set` overrides, validate into `cls`."""
    origin = str(path) if path else "<defaults>"
    data: dict = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config error in {origin}: cannot read file ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error in {origin}: not valid YAML ({exc})".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config error in {origin}: top level must be a mapping of keys")
    overrides = list(overrides)
    if overrides:
        origin += " (with --set " + ", ".join(overrides) + ")"
    data = apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


def config_dict(config: BaseModel) -> dict:
    return json.loads(config.model_dump_json())


def config_hash(config: BaseModel) -> str:
    """Stable short hash of the resolved config (sorted keys), recorded in manifests."""
    canonical = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_resolved_config(config: BaseModel, directory: str | os.PathLike, name: str = "resolved_config.yaml") -> Path:
    """Dump the resolved config beside the stage's output, atomically."""
    from arena_dist.io import atomic_write_text

    target = Path(directory) / name
    atomic_write_text(target, yaml.safe_dump(config_dict(config), sort_keys=False))
    return target
