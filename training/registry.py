"""Named registries (timm-style): each loss, head, routing and augmentation part registers itself
where it is implemented, variants register in training/variants.py and are validated against the
others, so adding one is one entry."""

from __future__ import annotations

from collections.abc import Callable

from .errors import TrainingError


class UnknownNameError(TrainingError, ValueError):
    """A name no registry entry has."""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.kinds = kind + ("es" if kind.endswith("s") else "s")  # "known exit losses"
        self._entries: dict[str, Callable] = {}

    def register(self, name: str):
        """Decorator: register the function or class under `name`."""

        def add(entry):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known {self.kinds}: {', '.join(self)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def values(self) -> list:
        return list(self._entries.values())
