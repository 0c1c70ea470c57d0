"""Stage parameters: typed dataclasses built from layered sources (defaults file < --params file < command line
or papermill values), validated once at the edge, every error naming the source of the bad value."""

from __future__ import annotations

import dataclasses
import re
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


class Origins:
    """Where each dotted key's value came from (a file, a flag, a ``--set``), and in which order."""

    def __init__(self, default: str = "parameters") -> None:
        self.default = default
        self._by_key: dict[str, tuple[int, str]] = {}
        self._order = 0

    def record(self, key: str, source: str) -> None:
        self._order += 1
        for known in [k for k in self._by_key if k.startswith(key + ".")]:
            del self._by_key[known]  # a whole group replaced: its old leaves no longer apply
        self._by_key[key] = (self._order, source)

    def lookup(self, key: str) -> tuple[int, str]:
        """The source of ``key`` (or of the nearest group above it)."""
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            found = self._by_key.get(".".join(parts[:end]))
            if found:
                return found
        return (0, self.default)

    def source(self, key: str) -> str:
        return self.lookup(key)[1]

    def latest(self, keys: list[str]) -> str:
        """The source applied last among ``keys``: the value most likely to be the one to change."""
        if not keys:
            return self.default
        return max((self.lookup(k) for k in keys), key=lambda found: found[0])[1]


def _coerce(value: Any, tp: Any, key: str, origins: Origins) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases (int→float, str→Path)."""
    where = f"{origins.source(key)}: {key}"
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
                return _coerce(value, arg, key, origins)
            except FungilibError as exc:
                errors.append(str(exc))
        raise FungilibError(errors[0] if errors else f"{where}: None is not allowed")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise FungilibError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, key, origins) for v in value]
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
        return _build(tp, value, origins, key + ".")
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
        if value != value or value in (float("inf"), float("-inf")):
            raise FungilibError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise FungilibError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if isinstance(value, bool) or not isinstance(value, str | Path | int):
            raise FungilibError(f"{where}: expected a path, got {value!r}")
        return Path(str(value))
    raise FungilibError(f"{where}: unsupported parameter type {_type_name(tp)}")


def _leaf_keys(cls: Any, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _leaf_keys(hint, prefix + f.name + ".")
    return keys


def _build(cls: type[P], values: Mapping[str, Any], origins: Origins, prefix: str = "") -> P:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        key = prefix + str(unknown[0])
        required_first = sorted(fields, key=lambda n: fields[n].default is not dataclasses.MISSING
                                or fields[n].default_factory is not dataclasses.MISSING)
        raise FungilibError(f"{origins.source(key)}: unknown parameter {key!r} for {cls.__name__}; "
                            f"allowed: {', '.join(required_first)}")
    kwargs = {name: _coerce(value, hints[name], prefix + name, origins) for name, value in values.items()}
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise FungilibError(f"{origins.default}: missing required parameter {prefix + missing[0]!r} for {cls.__name__}")
    try:
        return cls(**kwargs)  # stage parameter classes check their values together in __post_init__
    except FungilibError as exc:
        message = str(exc)
        named = [k for k in _leaf_keys(cls, prefix) if re.search(rf"(?<![\w.]){re.escape(k.removeprefix(prefix))}"
                                                                   r"(?![\w])", message)]
        raise FungilibError(f"{origins.latest(named)}: {message}") from None


def build_params(cls: type[P], values: Mapping[str, Any], source: str = "parameters",
                 origins: Origins | None = None) -> P:
    """Build the dataclass ``cls`` from ``values``; an unknown key or a wrong type is a FungilibError.

    The message names where the value came from (``origins``, else ``source``), the key and what is allowed.
    """
    return _build(cls, values, origins or Origins(source))


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"the key {key!r} is given twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a file that is not one is a FungilibError naming the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        raise FungilibError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise FungilibError(f"{path}: parameter file not found") from None
    except IsADirectoryError:
        raise FungilibError(f"{path}: is a folder; expected a YAML file of parameters") from None
    except UnicodeDecodeError as exc:
        raise FungilibError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise FungilibError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise FungilibError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FungilibError(f"{path}: expected a mapping of parameter names to values")
    return data


def parse_value(raw: str, source: str) -> Any:
    """A command-line value read as YAML, so numbers, booleans, null and lists keep their types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise FungilibError(f"{source}: not a valid value ({str(exc).splitlines()[0]}); "
                            "quote strings, write lists as [a, b]") from None


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it; nested mappings merge key by key instead of being replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(target: dict[str, Any], dotted: str, value: Any, source: str = "parameters") -> None:
    """Set ``target["a"]["b"] = value`` for ``dotted == "a.b"``; a value in the way of a group is an error."""
    *parents, leaf = dotted.split(".")
    if not all(parents) or not leaf:
        raise FungilibError(f"{source}: {dotted!r} is not a parameter name (dotted keys look like fit.epochs)")
    node = target
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            group = ".".join(parents[: depth + 1])
            raise FungilibError(f"{source}: {group} is a single value ({child!r}), not a group; "
                                f"{dotted} cannot be set inside it")
        node = child
    node[leaf] = value


class ParamLayers:
    """Parameter values laid over each other in order — a defaults file, a ``--params`` file, then each
    command-line flag or ``--set`` as given — remembering where every value came from."""

    def __init__(self, default_source: str = "parameters") -> None:
        self.values: dict[str, Any] = {}
        self.origins = Origins(default_source)

    def add_mapping(self, values: Mapping[str, Any], source: str) -> ParamLayers:
        for key, value in values.items():
            self.set(str(key), value, source)
        return self

    def add_file(self, path: Path, only: set[str] | None = None) -> ParamLayers:
        data = read_yaml(path)
        return self.add_mapping({k: v for k, v in data.items() if only is None or k in only}, str(path))

    def set(self, dotted: str, value: Any, source: str) -> ParamLayers:
        *parents, leaf = dotted.split(".")
        node: Any = self.values
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        current = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, Mapping) and isinstance(current, dict):  # a group laid over a group merges
            for key, sub in value.items():
                self.set(f"{dotted}.{key}", sub, source)
            return self
        set_dotted(self.values, dotted, dict(value) if isinstance(value, Mapping) else value, source)
        self.origins.record(dotted, source)
        if isinstance(value, Mapping):
            for key in _flat_keys(value, dotted + "."):
                self.origins.record(key, source)
        return self

    def build(self, cls: type[P]) -> P:
        return _build(cls, self.values, self.origins)


def _flat_keys(values: Mapping[str, Any], prefix: str) -> list[str]:
    keys = []
    for key, value in values.items():
        keys.append(prefix + str(key))
        if isinstance(value, Mapping):
            keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def load_params(cls: type[P], path: Path | None = None, **overrides: Any) -> P:
    """The file at ``path`` ← ``overrides`` (dotted keys allowed), validated as ``cls`` (for library callers;
    the command line builds a ``ParamLayers`` with one layer per flag)."""
    layers = ParamLayers(str(path) if path is not None else "parameters")
    if path is not None:
        layers.add_file(path)
    for key, value in overrides.items():
        layers.set(key, value, "parameters")
    return layers.build(cls)


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
