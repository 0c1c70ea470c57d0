"""Stage parameters: typed dataclasses loaded from YAML or papermill values, validated once at the edge."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_open

P = TypeVar("P")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases (int→float, str→Path)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except FungilibError as exc:
                errors.append(str(exc))
        raise FungilibError(errors[0] if errors else f"{where}: None is not allowed")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise FungilibError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise FungilibError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):  # a group of parameters, e.g. model: {base: ..., weights: ...}
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise FungilibError(f"{where}: expected a mapping of {tp.__name__} parameters, got {value!r}")
        return build_params(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise FungilibError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FungilibError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FungilibError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise FungilibError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise FungilibError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise FungilibError(f"{where}: unsupported parameter type {_type_name(tp)}")


def build_params(cls: type[P], values: Mapping[str, Any], source: str = "parameters") -> P:
    """Build the dataclass ``cls`` from ``values``; an unknown key or a wrong type is a FungilibError.

    The message names ``source`` (a file name or "papermill parameters"), the key and what is allowed.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise FungilibError(
            f"{source}: unknown parameter {unknown[0]!r} for {cls.__name__}; allowed: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{source}: {name}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise FungilibError(f"{source}: missing required parameter {missing[0]!r} for {cls.__name__}")
    try:
        params = cls(**kwargs)  # stage parameter classes validate themselves in __post_init__
    except FungilibError as exc:
        raise FungilibError(f"{source}: {exc}") from None
    return params


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a file that is not one is a FungilibError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FungilibError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise FungilibError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FungilibError(f"{path}: expected a mapping of parameter names to values")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it; nested mappings merge key by key instead of being replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_to_nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.base": "X"}`` → ``{"model": {"base": "X"}}``."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_params(cls: type[P], path: Path | None = None, **overrides: Any) -> P:
    """Defaults ← the YAML file at ``path`` ← ``overrides`` (dotted keys allowed), validated as ``cls``."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "parameters"
    values = deep_merge(values, dotted_to_nested({k: v for k, v in overrides.items() if v is not None}))
    return build_params(cls, values, source)


def params_from_namespace(cls: type[P], namespace: Mapping[str, Any]) -> P:
    """Build ``cls`` from the variables of a notebook's parameters cell (the names of ``cls``'s fields)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return build_params(cls, {n: namespace[n] for n in names if n in namespace}, "notebook parameters")


def params_to_dict(params: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able values (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(params))


def write_params(path: Path, params: Any) -> None:
    """Write the resolved parameters beside a stage's outputs, so the folder describes itself."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(params_to_dict(params), handle, sort_keys=False)
