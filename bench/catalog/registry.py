"""Names as the interface: datasets, models, methods and presets, each registered once.

Entries are registered with a decorator and a one-line description (timm's
``@register_model`` habit); ``lorita-bench list`` prints them. Asking for a name that
is not registered raises ``UsageError`` naming close matches and every accepted name.

This module is generic and imports no plug-in: as in timm, the package ``bench.catalog``
imports the modules that fill the tables, so any import of the catalog sees them full.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bench.records.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A name → entry table that refuses duplicates and explains unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, *, description: str, **meta: Any) -> T:
        """Register ``obj`` under ``name``. Raises ``ValueError`` if the name is taken."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, obj, description, dict(meta))
        return obj

    def register(self, name: str, *, description: str, **meta: Any) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        def deco(obj: T) -> T:
            return self.add(name, obj, description=description, **meta)
        return deco

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``; ``UsageError`` listing close matches and all names if unknown."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"unknown {self.kind} {name!r}{hint}; accepted: "
                             f"{', '.join(sorted(self._entries))}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
MODELS: Registry[Callable[..., Any]] = Registry("model")
METHODS: Registry[Any] = Registry("method")
PRESETS: Registry[Any] = Registry("preset")

