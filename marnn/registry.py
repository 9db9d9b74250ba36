"""One error type for every registry (tasks, models, freeze modes, scales)."""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the valid choices."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")


def lookup(kind: str, name: str, mapping: Mapping[str, T]) -> T:
    try:
        return mapping[name]
    except (KeyError, TypeError):
        raise UnknownNameError(kind, name, mapping) from None
