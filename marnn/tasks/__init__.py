"""The seven formal languages, by the names used in the paper's tables.

>>> from marnn import tasks
>>> t = tasks.get("marked-copy")
>>> t.valid_lengths(5, 9)
[5, 7, 9]
"""
from __future__ import annotations

from ..registry import lookup
from .base import EOS, Reference, Task, bayes_accuracy_bruteforce, split_distribution
from .data import Batch, TaskData, encode, make_task_data
from .languages import ALL as _ALL

REGISTRY: dict[str, type[Task]] = {cls.name: cls for cls in _ALL}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def names() -> tuple[str, ...]:
    """Task names in the order of the paper's tables."""
    return NAMES


def get(name: str) -> Task:
    """The task called ``name``; an unknown name lists every valid one."""
    return lookup("task", name, REGISTRY)()


__all__ = [
    "EOS", "Reference", "Task", "get", "names", "NAMES", "bayes_accuracy_bruteforce",
    "split_distribution", "Batch", "TaskData", "encode", "make_task_data",
]
