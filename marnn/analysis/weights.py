"""The trained models of the grid's own runs, for the analyses that need weights.

Every formal run the trainer stores with ``keep_weights`` has its selected
(best-on-validation) weights beside its record (:func:`marnn.store.save_weights`,
``<record>.pt``). :func:`stored_group` rebuilds one (task, model) group -- the
configs of :func:`marnn.grid.formal_grid`, every mode and restart -- as one
replica-batched model from those files, so the stability, precision and memory
chapters analyse the very runs the tables show.

:func:`trained_group` returns that group, first training the runs that have no
record yet through the one load-or-train path
(:func:`marnn.train.run.train_missing` with ``keep_weights``: claims, resume,
weights before records), where the pages may train (:func:`marnn.store.may_train`).
A run stored without its weights is not retrained silently: that would replace a
committed record; the error says which run and what to do.

:func:`revalidate` checks that loaded weights are their records' runs: it
evaluates them on the run's validation split and compares with the validation
score the record selected them by.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import torch

from .. import store

if TYPE_CHECKING:
    from pathlib import Path

    from ..models.stack_rnn import StackRNN


class NotStored(RuntimeError):
    """A group the store does not hold (records or weights), asked for where nothing may be trained."""


class Group(NamedTuple):
    model: StackRNN  # R replicas, eval mode, replica r trained with configs[r]
    configs: list[dict]
    records: list[dict]
    path: Path  # the first run's weights file


def group_configs(task: str, model: str, scale: str, modes: Iterable[str] | None = None,
                  restarts: int | None = None, data_seed: int = 0) -> list[dict]:
    """The formal-grid configs of one (task, model): modes x restarts."""
    from ..grid import formal_grid
    return formal_grid(scale, tasks=[task], models=[model], modes=modes, restarts=restarts, data_seed=data_seed)


def _build(configs: list[dict]) -> StackRNN:
    from .. import models
    first = configs[0]
    return models.build(first["model"], task=first["task"], replicas=len(configs),
                        seeds=[c["seed"] for c in configs])


def stored_group(configs: list[dict], root: str | os.PathLike | None = None) -> Group | None:
    """The grid's own trained models of ``configs``: the records and the weights kept
    beside them (:func:`marnn.store.load_weights`), or None unless every config has both."""
    records: list[dict] = []
    states: list[dict] = []
    for c in configs:
        rec = store.load_record(c, root)
        state = store.load_weights(c, root) if rec is not None else None
        if rec is None or state is None:
            return None
        records.append(rec)
        states.append(state)
    model = _build(configs)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(n not in s or s[n].shape != p.shape[1:] for s in states):
                raise ValueError(f"the kept weights of {configs[0]['task']}/{configs[0]['model']} do not fit "
                                 f"the model: parameter {n!r}")
            p.copy_(torch.stack([s[n] for s in states]))
    model.eval()
    return Group(model, configs, records, store.weights_path(configs[0], root))


def trained_group(task: str, model: str, scale: str, modes: Iterable[str] | None = None,
                  restarts: int | None = None, *, root: str | os.PathLike | None = None,
                  progress: bool = False, threads: int | None = None) -> Group:
    """The trained models of one (task, model) group (:func:`stored_group`), training the
    runs without a record first (:func:`marnn.train.run.train_missing`, weights kept)."""
    configs = group_configs(task, model, scale, modes, restarts)
    found = stored_group(configs, root)
    if found is not None:
        return found
    bare = [c for c in configs if store.load_record(c, root) is not None and not store.weights_path(c, root).exists()]
    if bare:
        raise NotStored(f"{task}/{model} at {scale}: {len(bare)} stored run(s) have no kept weights (first: "
                        f"{store.record_path(bare[0], root)}); delete those records and run this again to "
                        f"retrain them with their weights")
    if not store.may_train():
        raise NotStored(f"{task}/{model} at {scale}: not every run has a record and kept weights in the store, "
                        f"and the pages train nothing here (${store.NO_TRAIN_ENV}=1)")
    from ..train.run import train_missing
    train_missing(configs, root, keep_weights=True, wait=True, progress=progress, device="cpu", threads=threads)
    found = stored_group(configs, root)
    if found is None:
        raise RuntimeError(f"{task}/{model} at {scale}: records or weights missing right after training")
    return found


def revalidate(group: Group) -> list[dict]:
    """One row per run: its validation cross-entropy and accuracy recomputed from the
    loaded weights against the values its record selected the weights by."""
    from ..config import RunConfig
    from ..tasks.data import valid_batches
    from ..train.evaluate import split_metrics

    first = RunConfig.from_dict(group.configs[0])
    v = split_metrics(group.model, valid_batches(group.configs[0]["task"], first.scale, first.data_seed))
    rows = []
    for r, (config, rec) in enumerate(zip(group.configs, group.records, strict=True)):
        rows.append({"key": store.config_key(config), "freeze": config["freeze"], "seed": config["seed"],
                     "valid_cross_entropy": float(v["nll"][r]) / v["symbols"],
                     "record_cross_entropy": rec["valid"]["cross_entropy"],
                     "valid_accuracy": float(v["correct"][r]) / v["symbols"],
                     "record_accuracy": rec["valid"]["accuracy"]})
    return rows


def reproduced(rows: Iterable[dict], tol: float = 1e-6) -> tuple[int, int]:
    """How many :func:`revalidate` rows reproduce their record (accuracy equal, cross-entropy
    within ``tol`` relative), and how many rows there are."""
    rows = list(rows)
    ok = sum(r["record_cross_entropy"] is not None and r["record_accuracy"] is not None
             and r["valid_accuracy"] == r["record_accuracy"]
             and abs(r["valid_cross_entropy"] - r["record_cross_entropy"]) <= tol * abs(r["record_cross_entropy"])
             for r in rows)
    return ok, len(rows)
