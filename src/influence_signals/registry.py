"""One generic registry, instantiated once per concept (data sets, glitches, models, signals, figure kinds).

Each concept module declares its entries next to their implementation; the config schema's enums, the
wildcard constraints, the plot labels and the default signal list are read from these registries, so a
new entry is added in one place. Importing a registry imports no torch or scikit-learn: implementations
import them when called.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


class UnknownName(ValueError):
    """A name that no registry entry has."""


@dataclass(frozen=True)
class Entry:
    """What every registry entry declares: its name, a label for plots, and its options' JSON schema."""

    name: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)  # JSON-schema "properties" of its options

    def options_schema(self) -> dict[str, Any]:
        """The schema its options are validated against: known keys only."""
        return {"type": "object", "properties": dict(self.options), "additionalProperties": False}


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Entries of one concept by name, in declaration order."""

    def __init__(self, concept: str) -> None:
        self.concept = concept
        self._entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        if entry.name in self._entries:
            raise ValueError(f"{self.concept} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.concept} {name!r}; known: {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def labels(self) -> dict[str, str]:
        return {name: entry.label for name, entry in self._entries.items()}
