"""One typed registry for every named plug-in (criteria, models, objectives, tasks, device profiles).

Unknown names get a one-line error with a "did you mean" suggestion and the list of known names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@CRITERIA.register("l1") class L1(...)`."""
        def wrap(item: T) -> T:
            self.add(name, item)
            return item
        return wrap

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        raise ValueError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        hint = difflib.get_close_matches(str(name), list(self._items), n=1, cutoff=0.5)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown {self.kind} {name!r}{did_you_mean}; known: {', '.join(sorted(self._items))}"

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
