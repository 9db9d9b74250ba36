"""Datasets for one task at one scale.

* train / validation: ``size // batch_size`` batches; each batch draws one length
  uniformly from the valid lengths of ``scale.train_lengths`` and ``batch_size``
  strings of that length (docs: book/reference/training.md). They depend
  on the run's data seed.
* test: for every bin, ``test_per_length`` strings of every valid length (or,
  where the scale sets ``test_strings``, ``ceil(test_strings / #lengths)`` of
  each, so the bin holds at least ``test_strings``), drawn from one fixed
  evaluation seed (:data:`marnn.scales.EVAL_SEED`) so every model and freeze
  mode sees the same strings. ``test_take`` keeps the first strings of every
  length: a subset of that same set, for models too slow to evaluate it all.

Encoding: input symbol ``alphabet[i]`` is index ``i``; targets are the string
followed by EOS, whose index is ``len(alphabet)``.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..scales import EVAL_SEED, Scale, get_scale
from .base import EOS, Task
from .languages import get


@dataclass
class Batch:
    length: int
    inputs: torch.Tensor  # (B, n) long, no EOS
    targets: torch.Tensor  # (B, n + 1) long, EOS last

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class TaskData:
    task: Task
    scale: Scale
    seed: int
    train: list[Batch]
    valid: list[Batch]
    test: dict[str, list[Batch]] = field(default_factory=dict)


def encode(task: Task, strings: list[list[str]]) -> Batch:
    """Stack equal-length strings into input / target index tensors."""
    n = len(strings[0])
    if any(len(s) != n for s in strings):
        raise ValueError("all strings of a batch must have the same length")
    index = {s: i for i, s in enumerate(task.outputs)}
    tgt = torch.tensor([[index[c] for c in s] + [index[EOS]] for s in strings], dtype=torch.long)
    tgt = tgt.reshape(len(strings), n + 1)
    return Batch(n, tgt[:, :n].contiguous(), tgt)


def _random_batches(task: Task, lo: int, hi: int, size: int, batch_size: int, rng) -> list[Batch]:
    lengths = task.valid_lengths(lo, hi)
    if not lengths:
        raise ValueError(f"{task.name}: no valid length in [{lo}, {hi}]")
    batches = []
    for _ in range(max(1, size // batch_size)):
        n = int(lengths[rng.integers(len(lengths))])
        batches.append(encode(task, [task.sample(n, rng) for _ in range(batch_size)]))
    return batches


def _task_stream(task: Task, *parts: int) -> np.random.Generator:
    # a stable per-task stream: crc32 of the name, never Python's salted hash()
    return np.random.default_rng([zlib.crc32(task.name.encode()), *parts])


def test_plan(task: Task, scale: Scale | str) -> list[tuple[list[int], int]]:
    """Per test bin of ``scale``: its valid lengths and how many strings of each length are drawn
    (``test_per_length``, or ``ceil(test_strings / #lengths)`` where the scale sets
    ``test_strings``). Evaluation keeps the first ``test_take`` of them where that is set."""
    scale = get_scale(scale)
    out = []
    for i, (lo, hi) in enumerate(scale.test_bins):
        lengths = task.valid_lengths(lo, hi)
        if scale.test_strings is not None:
            per = -(-int(scale.test_strings) // len(lengths))  # ceil: at least test_strings per bin
        else:
            per = scale.test_per_length[i]
        out.append((lengths, per))
    return out


def test_batches(task: Task, scale: Scale | str) -> dict[str, list[Batch]]:
    """The fixed test bins of ``scale`` for ``task`` (same for every run)."""
    scale = get_scale(scale)
    rng = _task_stream(task, EVAL_SEED)
    out: dict[str, list[Batch]] = {}
    for name, (lengths, per) in zip(scale.bin_names, test_plan(task, scale), strict=True):
        batches = []
        for n in lengths:
            strings = [task.sample(n, rng) for _ in range(per)]
            if scale.test_take is not None:  # a prefix of every length's strings: a subset of the same set
                strings = strings[: int(scale.test_take)]
            for i in range(0, len(strings), scale.eval_batch_size):
                batches.append(encode(task, strings[i : i + scale.eval_batch_size]))
        out[name] = batches
    return out


def valid_batches(task: Task | str, scale: Scale | str, seed: int) -> list[Batch]:
    """The validation split of data seed ``seed`` alone (what :func:`make_task_data` holds as ``valid``)."""
    task = get(task) if isinstance(task, str) else task
    scale = get_scale(scale)
    lo, hi = scale.train_lengths
    return _random_batches(task, lo, hi, scale.valid_size, scale.batch_size, _task_stream(task, seed, 1))


def make_task_data(task: Task | str, scale: Scale | str, seed: int) -> TaskData:
    """Train / validation data for data seed ``seed`` and the fixed test bins."""
    task = get(task) if isinstance(task, str) else task
    scale = get_scale(scale)
    lo, hi = scale.train_lengths
    train = _random_batches(task, lo, hi, scale.train_size, scale.batch_size, _task_stream(task, seed, 0))
    return TaskData(task, scale, seed, train, valid_batches(task, scale, seed), test_batches(task, scale))
