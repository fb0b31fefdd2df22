"""Strict config loading shared by every config dataclass: YAML as a user means it, typed fields.

`from_dict` checks every key against the dataclass fields and every value against the field's
annotation, so a bad value fails with one line naming the key and the expected type before any
data is read. The checker is generic: a field added to any config section is checked too.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, TypeVar

import yaml

from qdistill.errors import ConfigError, QdistillError

__all__ = ["apply_overrides", "from_dict", "yaml_load"]

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats include ``1e-3`` and ``1.0e9`` (YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML with safe types only; scientific notation gives floats."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def from_dict(cls: type[T], d: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``d``; unknown keys and ill-typed values raise `ConfigError`.

    ``section`` is the dotted prefix used in messages (``""`` for the top level). Nested
    dataclass fields are built from mappings recursively; ``None`` for a non-optional section
    means "all defaults" (an empty YAML section).
    """
    where = f"{section}: " if section else "config: "
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}expected a mapping, got {type(d).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            what = "unknown key" if section else "unknown top-level key"
            raise ConfigError(f"{where}{what} {key!r}; allowed: {', '.join(fields)}")
        kwargs[key] = _check(value, hints[key], f"{section}.{key}" if section else str(key))
    try:
        return cls(**kwargs)
    except QdistillError:
        raise
    except ValueError as e:  # the dataclasses' own range checks
        raise ConfigError(str(e)) from None


def _check(value: Any, tp: Any, key: str) -> Any:
    """``value`` if it fits annotation ``tp`` (ints widen to float, lists to tuples); else ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(value, option, key)
            except ConfigError as e:
                errors.append(e)
        if isinstance(value, (dict, list, tuple)):  # what is wrong inside, e.g. an unknown key
            raise errors[0]
        raise _type_error(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if value is None or isinstance(value, dict):
            return from_dict(tp, value, key)
        raise _type_error(value, tp, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, key)
        item = args[0] if args else Any
        return origin(_check(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, key)
        k_tp, v_tp = args or (Any, Any)
        return {_check(k, k_tp, key): _check(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(value, tp, key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(value, tp, key)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _type_error(value, tp, key)
    return value


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _type_error(value: Any, tp: Any, key: str) -> ConfigError:
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def apply_overrides(tree: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML: 4, 1e-3, true, [a, b])."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # an empty section in the file
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: invalid value ({' '.join(str(e).split())})") from None
    return tree
