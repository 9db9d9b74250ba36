"""Train a group of runs, or load a stored run: the entry points of :mod:`marnn.train`.

:func:`train` trains a group of same-kind runs (formal languages or Penn
Treebank; configs from :func:`marnn.train.formal_config` /
:func:`marnn.train.ptb_config`) as one replica-batched model and returns one
record each; :func:`run_or_load` returns the stored record of one run, or trains
it alone and stores it. The grid (:mod:`marnn.grid`) and the command line
(:mod:`marnn.cli`) call :func:`train` on the groups they claimed.
"""
from __future__ import annotations

import os

from .. import store
from ..config import RunConfig
from . import formal, ptb


def train(configs: list[dict], **kwargs) -> list[dict]:
    """Train a group of same-kind runs as one replica-batched model; one record each."""
    kinds = {RunConfig.from_dict(c).kind for c in configs}
    if kinds == {"formal"}:
        return formal.train_formal(configs, **kwargs)
    if kinds == {"ptb"}:
        return ptb.train_ptb(configs, **kwargs)
    raise ValueError(f"a group must be all formal or all ptb runs, got {sorted(kinds)}")


def run_or_load(config: dict, root: str | os.PathLike | None = None, *, progress: bool = False, **train_kwargs) -> dict:
    """The stored record of ``config``, or train it alone (``R = 1``), store it and return it.

    The run is claimed first (:func:`marnn.store.hold`); if another process is training
    it, this waits for that record instead of training it twice."""
    rec = store.load_record(config, root)
    if rec is not None:
        return rec
    with store.hold([config], root, wait=True):
        if store.load_record(config, root) is None:
            (rec,) = train([config], progress=progress, **train_kwargs)
            store.save_record(rec, root)
    rec = store.load_record(config, root)
    if rec is None:
        raise RuntimeError(f"the record of {store.config_key(config)} is missing or invalid right after it was stored")
    return rec
