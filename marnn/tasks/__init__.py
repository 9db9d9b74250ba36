"""The seven formal languages, by the names used in the paper's tables.

>>> from marnn import tasks
>>> t = tasks.get("marked-copy")
>>> t.valid_lengths(5, 9)
[5, 7, 9]
"""
from __future__ import annotations

from .base import EOS, Reference, Task, bayes_accuracy_bruteforce, split_distribution
from .data import Batch, TaskData, encode, make_task_data
from .languages import NAMES, REGISTRY, get, names

__all__ = [
    "EOS", "Reference", "Task", "get", "names", "NAMES", "bayes_accuracy_bruteforce",
    "split_distribution", "REGISTRY", "Batch", "TaskData", "encode", "make_task_data",
]
