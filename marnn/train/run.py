"""The one load-or-train path: claim, resume, train a group, store its records (and weights).

:func:`train` trains a group of same-kind runs (formal languages or Penn
Treebank; :class:`marnn.config.RunConfig` dicts) as one replica-batched model
and returns one record each. :func:`train_missing` is the path everything that
trains goes through, the grid (:func:`marnn.grid.run_group`, on each group
its scheduler hands out) and the command line (``marnn train`` / ``marnn
ptb``, one run) alike:

1. drop the runs that have a record already (:func:`marnn.store.missing`);
2. claim the rest (:func:`marnn.store.hold`): runs another live process is
   training are left to it, or, with ``wait``, waited for;
3. train what is still missing among the claimed runs as one group
   (:func:`train_and_store`), resumable after every epoch from
   ``<store>/.state/`` (:mod:`marnn.train.resume`), in halves (down to one run)
   when the batched model does not fit in memory;
4. store each run's selected weights (with ``keep_weights``) and then its
   record, so a record never lacks its weights; remove the group's state file.

:func:`run_or_load` returns the record of one run, trained through the same path if it is missing.
"""
from __future__ import annotations

import os

from .. import store
from ..config import RunConfig
from . import formal, ptb, resume

Root = str | os.PathLike | None


def train(configs: list[dict], **kwargs) -> list[dict]:
    """Train a group of same-kind runs as one replica-batched model; one record each."""
    kinds = {RunConfig.from_dict(c).kind for c in configs}
    if kinds == {"formal"}:
        return formal.train_formal(configs, **kwargs)
    if kinds == {"ptb"}:
        return ptb.train_ptb(configs, **kwargs)
    raise ValueError(f"a group must be all formal or all ptb runs, got {sorted(kinds)}")


def train_missing(configs: list[dict], root: Root = None, *, keep_weights: bool = False, wait: bool = False,
                  progress: bool = False, **train_kwargs) -> list[str]:
    """Train and store every run of ``configs`` (one group) that has no record yet; returns the keys written.

    Each run is claimed first: runs another live process holds are left to it
    (with ``wait``, waited for, and trained here only if their holder died
    without storing them), so no run is ever trained twice. ``train_kwargs`` go
    to :func:`train` (``state_dir`` defaults to the store's ``.state`` folder).
    """
    todo = store.missing(configs, root)
    if not todo:
        return []
    with store.hold(todo, root, wait=wait) as mine:
        todo = store.missing(mine, root)  # one may have been finished between the look and the claim
        if not todo:
            return []
        return train_and_store(todo, root, keep_weights=keep_weights, progress=progress, **train_kwargs)


def _is_memory_error(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def train_and_store(todo: list[dict], root: Root = None, *, keep_weights: bool = False, progress: bool = False,
                    **train_kwargs) -> list[str]:
    """Train ``todo`` (claimed by the caller) as one group, in halves if it does not fit in
    memory; store the weights (``keep_weights``) and records; returns the keys written."""
    train_kwargs = {"state_dir": resume.state_dir(root), **train_kwargs}  # resumable after every epoch
    try:
        records, model = (train(todo, progress=progress, return_model=True, **train_kwargs) if keep_weights
                          else (train(todo, progress=progress, **train_kwargs), None))
    except (RuntimeError, MemoryError) as err:
        if len(todo) == 1 or not _is_memory_error(err):
            raise
        half = len(todo) // 2
        return (train_and_store(todo[:half], root, keep_weights=keep_weights, progress=progress, **train_kwargs)
                + train_and_store(todo[half:], root, keep_weights=keep_weights, progress=progress, **train_kwargs))
    written = []
    for r, rec in enumerate(records):
        if model is not None:  # the weights first: a stored record never lacks its weights
            store.save_weights(rec["config"], replica_state(model, r), root)
        store.save_record(rec, root)  # ours alone: we hold its claim
        written.append(store.config_key(rec["config"]))
    resume.remove(todo, train_kwargs["state_dir"])
    return written


def replica_state(model, r: int) -> dict:
    """Replica ``r`` of a replica-batched model as the parameters of a one-replica model."""
    return {n: p.detach()[r] for n, p in model.named_parameters()}


def run_or_load(config: dict, root: Root = None, *, progress: bool = False, **train_kwargs) -> dict:
    """The stored record of ``config``, or train it alone (``R = 1``) through :func:`train_missing`,
    waiting for it if another process is training it, and return it."""
    if store.load_record(config, root) is None:
        train_missing([config], root, wait=True, progress=progress, **train_kwargs)
    rec = store.load_record(config, root)
    if rec is None:
        raise RuntimeError(f"the record of {store.config_key(config)} is missing or invalid right after it was stored")
    return rec
