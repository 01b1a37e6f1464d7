"""Typed stage configuration: YAML + `--set key=value` overrides, validated into pydantic models.

The pydantic model of a stage is the single source of truth for its settings. YAML files and `--set` only override
fields; an unknown key, a wrong type or an out-of-range value is one `ConfigError` line naming the key and the file.
Numbers, booleans and strings are never converted into one another (`seed: true`, `num_shards: 2.0` and
`num_shards: "2"` are errors, not 1 and 2); the one widening kept is an integer for a float (`lr: 1`).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from arena_dist.errors import ConfigError

T = TypeVar("T", bound="StrictModel")


def _kind(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (numbers.Integral, "an integer"), (numbers.Real, "a float"),
                       (str, "a string")):  # bool first: a bool is an Integral too
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _scalar_problem(annotation: Any, value: Any) -> str | None:
    """bool / int / float / integer Literal: the message when `value` is not already of that kind, else None."""
    if annotation is bool and not isinstance(value, bool):
        return f"Input should be true or false, not {_kind(value)}"
    if annotation is int and not _is_int(value):
        return f"Input should be an integer, not {_kind(value)}"
    if annotation is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        return f"Input should be a number, not {_kind(value)}"
    if get_origin(annotation) is Literal and all(type(v) is int for v in get_args(annotation)) and not _is_int(value):
        return f"Input should be one of {', '.join(map(str, get_args(annotation)))}, not {_kind(value)}"
    return None


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus the YAML 1.2 spelling of floats with an exponent and no dot or sign (`1e-4`,
    `3e9`): YAML 1.1 reads them as text, and configs must not depend on that quirk (numbers are never converted
    from text afterwards)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)


def coercion_problem(annotation: Any, value: Any) -> str | None:
    """Why `value` would only fit `annotation` by pydantic's lax conversions between bool, int, float and str
    (True -> 1, 2.0 -> 2, "2" -> 2, 1 -> True, "yes" -> True), or None when it fits as it is or is not such a case.
    Optional/Union, Annotated and list/tuple/set/dict element types are looked through; everything else (str, Path,
    string Literals, nested sections) is left to pydantic, which already refuses numbers there."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        if value is None and len(members) < len(get_args(annotation)):
            return None
        problems = [coercion_problem(member, value) for member in members]
        return None if any(p is None for p in problems) else problems[0]
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple, set, frozenset)):
        args = get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = zip(args, value)  # fixed-length tuple; a length mismatch is pydantic's to report
        else:
            pairs = ((args[0] if args else Any, item) for item in value)
        for index, (element, item) in enumerate(pairs):
            problem = coercion_problem(element, item)
            if problem:
                return f"item {index}: {problem} (got {item!r})"
        return None
    if origin is dict and isinstance(value, dict):
        key_type, value_type = get_args(annotation) or (Any, Any)
        for key, item in value.items():
            if coercion_problem(key_type, key):
                return f"key {key!r}: {coercion_problem(key_type, key)}"
            if coercion_problem(value_type, item):
                return f"key {key!r}: {coercion_problem(value_type, item)} (got {item!r})"
        return None
    return _scalar_problem(annotation, value)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too, and numbers,
    booleans and strings are not converted into one another (a typo like `seed: true` must not become seed 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_lax_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        problem = coercion_problem(cls.model_fields[info.field_name].annotation, value)
        if problem:
            raise PydanticCustomError("strict_type", "{problem}", {"problem": problem})
        return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML so `3`, `0.5`, `true`, `[1,2]` keep their types)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
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
    message = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(first["type"])
    if message is None:
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
            data = load_yaml(text) or {}
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

    return atomic_write_text(Path(directory) / name, yaml.safe_dump(config_dict(config), sort_keys=False))
