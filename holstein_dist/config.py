"""Typed configs: YAML file + flags + dotted ``KEY=VALUE`` overrides -> frozen dataclass.

Every config in the suite is a (possibly nested) dataclass. ``load_config`` reads YAML, applies the
values of flags and overrides such as ``splits.train=8`` and validates every field against its type
hint, so a typo or a wrong type fails at once with one line naming the field and the fix, never deep
inside a run. The configs shipped with the suite (``configs/`` in the repository) are package data:
:func:`shipped` finds them in any install (docs/architecture.md, "Configs").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hpc.cli import UserError
from hpc.files import atomic_write_text

T = TypeVar("T")

ConfigError = UserError
"""The suite's one bad-input error (:class:`hpc.cli.UserError`) under the name config code has always used."""

SHIPPED_KINDS = ("data", "model", "train")
"""Sub-folders of the shipped configs: data sets, surrogate architectures, training recipes."""


def shipped(kind: str, name: str | None = None) -> Path:
    """The folder of shipped ``kind`` configs, or the file ``<kind>/<name>.yaml`` in it.

    ``holstein_dist/configs`` is a link to the repository's top-level ``configs/`` (the one copy people
    edit); a wheel carries the files themselves there (pyproject package-data), so the lookup is the same
    in a checkout, an editable install and a plain ``pip install .``.
    """
    if kind not in SHIPPED_KINDS:
        raise ValueError(f"unknown config kind {kind!r}; choose one of {', '.join(SHIPPED_KINDS)}")
    folder = Path(str(resources.files("holstein_dist") / "configs" / kind))
    return folder if name is None else folder / f"{name}.yaml"


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not KEY=VALUE; write e.g. splits.train=8")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"override {item!r} has an empty key; write e.g. splits.train=8")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass --config with a path under configs/")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of field: value at top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                flags: Mapping[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML file (optional), flag values (``{field: value}``) and dotted ``KEY=VALUE``
    overrides, in that order of precedence (later wins), validating every field."""
    return from_dict(cls, layered(path, overrides, flags))


def layered(path: str | Path | None, overrides: Sequence[str] = (), flags: Mapping[str, Any] | None = None,
            ) -> dict[str, Any]:
    """The raw mapping of :func:`load_config` before validation: file, then flags, then overrides."""
    data = read_yaml(path) if path is not None else {}
    return merge(merge(data, flags or {}), parse_overrides(overrides))


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Construct dataclass ``cls`` from ``data``; unknown keys and wrong types raise UserError."""
    if not isinstance(data, Mapping):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise UserError(f"config key '{prefix}{name}' is required; add it to the file or pass {name}=...")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"invalid config {prefix.rstrip('.') or cls.__name__}: {exc}") from None
    return obj


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"config key {name!r} has an invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"config key {name!r} is {value!r}; choose one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{name}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {name!r} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise UserError(f"config key {name!r} must have {len(args)} entries, got {len(value)}")
            return tuple(_coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"config key {name!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {name!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number the user meant.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if tp is Path:
        if not isinstance(value, (str, Path)) or value == "":
            raise UserError(f"config key {name!r} must be a path, got {value!r}")
        return Path(value)
    if tp is str:
        if isinstance(value, Path):  # a path flag given to a string field
            return str(value)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key {name!r} must be a string, got {value!r}")
        return str(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict (YAML/JSON-serialisable) view of a config dataclass."""
    return _plain(dataclasses.asdict(obj))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_resolved(obj: Any, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs (atomically), so the run can be reproduced."""
    atomic_write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), path)
