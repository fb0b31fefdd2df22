"""A tiny name -> factory registry shared by models, quantizers and losses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from qdistill.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names fail with the list of known ones.

    Example:
        >>> r = Registry("thing")
        >>> @r.register("one")
        ... def make_one():
        ...     return 1
        >>> r.get("one")()
        1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a factory under `name` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The factory registered as ``name``; an unknown name is a `ConfigError` listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
