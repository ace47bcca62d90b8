"""A small explicit registry: names map to classes or factories, registered next to their base."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lpsd_search.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects registered with a decorator.

    Example:
        >>> MODELS: Registry[Callable[..., object]] = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny() -> object:
        ...     return object()
        >>> MODELS.names()
        ['tiny']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry called ``name``; the error lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names())
            raise UserInputError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
