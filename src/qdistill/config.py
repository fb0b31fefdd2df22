"""Small helpers shared by the config dataclasses: strict dict loading and dotted overrides."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import yaml

__all__ = ["apply_overrides", "from_dict"]

T = TypeVar("T")


def from_dict(cls: type[T], d: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``d``; an unknown key fails naming the section and allowed keys."""
    d = dict(d or {})
    if not isinstance(d, dict):
        raise ValueError(f"{section}: expected a mapping, got {type(d).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in d:
        if key not in known:
            raise ValueError(f"{section}: unknown key {key!r}; allowed: {', '.join(known)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{section}: {e}") from None


def apply_overrides(tree: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML: 4, 1e-3, true, [a, b])."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return tree
