"""A small generic registry: ``@reg.register(key)`` and ``reg.get(key)`` that lists valid keys on a miss."""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from workbench.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._items: dict[Hashable, T] = {}

    def register(self, key: Hashable) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.what} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def add(self, key: Hashable, obj: T) -> None:
        self.register(key)(obj)

    def get(self, key: Hashable) -> T:
        try:
            return self._items[key]
        except KeyError:
            valid = ", ".join(sorted(str(k) for k in self._items))
            raise ConfigError(f"Unknown {self.what} {key!r}. Valid: {valid}.") from None

    def find(self, key: Hashable) -> T | None:
        return self._items.get(key)

    def keys(self) -> list:
        return list(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items
