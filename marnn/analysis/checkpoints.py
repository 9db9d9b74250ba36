"""Trained models for the analyses that need weights, not just records.

:func:`trained_group` trains one replica group of the formal grid -- one
(task, model) with the given freeze modes and restarts, exactly the configs
of :func:`marnn.grid.formal_grid` -- and keeps its weights in a checkpoint::

    <root>/checkpoints/<scale>/<task>/<model>-<key>.pt

``key`` hashes the group's configs (:func:`marnn.store.config_key` of the
list), so a changed scale or protocol never reuses an old file. The file holds
the configs, the records training produced and the state dict of the
R-replica model (replica ``r`` = ``configs[r]``); writes are atomic, so an
interrupted run leaves no half-written checkpoint. Loading rebuilds the model
with :func:`marnn.models.build` and checks that the configs match.

The file holds plain types only (dicts, lists, strings, numbers, booleans,
None and tensors) and is read with ``torch.load(..., weights_only=True)``:
a planted file that would run code when unpickled is refused (moved to
``<root>/invalid/`` with a one-line warning, like an invalid record) and the
group is retrained.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.torch_version import TorchVersion

from .. import store

if TYPE_CHECKING:
    from ..models.stack_rnn import StackRNN


class NotStored(RuntimeError):
    """A group the store does not hold, asked for where nothing may be trained."""


class Group(NamedTuple):
    model: StackRNN  # R replicas, eval mode, replica r trained with configs[r]
    configs: list[dict]
    records: list[dict]
    path: Path


def group_configs(task: str, model: str, scale: str, modes: Iterable[str] | None = None,
                  restarts: int | None = None, data_seed: int = 0) -> list[dict]:
    """The formal-grid configs of one (task, model): modes x restarts."""
    from ..grid import formal_grid
    return formal_grid(scale, tasks=[task], models=[model], modes=modes, restarts=restarts, data_seed=data_seed)


def checkpoint_path(configs: list[dict], root: str | os.PathLike | None = None) -> Path:
    first = configs[0]
    key = store.config_key({"group": configs})
    return (store.results_dir(root) / "checkpoints" / first["scale"] / first["task"]
            / f"{first['model']}-{key}.pt")


def _build(configs: list[dict]) -> StackRNN:
    from .. import models
    first = configs[0]
    return models.build(first["model"], task=first["task"], replicas=len(configs),
                        seeds=[c["seed"] for c in configs])


def _plain(x):
    """Plain JSON types (tuples as lists, str subclasses such as torch's version
    string as str), what is stored and what a weights-only load compares with."""
    return json.loads(json.dumps(x, default=store._json_default))


def _save(obj: dict, path: Path) -> None:
    store.atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_group(configs: list[dict], root: str | os.PathLike | None = None) -> Group | None:
    """The stored checkpoint of ``configs``, or None."""
    path = checkpoint_path(configs, root)
    if not path.exists():
        return None
    try:
        # TorchVersion: a str subclass that checkpoints written before plain types were enforced hold in
        # records[*].env.torch; allowing it admits no code (the unpickler still refuses everything else)
        with torch.serialization.safe_globals([TorchVersion]):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...: not ours
        reason = " ".join(str(err).split())[:120]
        store.quarantine(path, f"not a plain checkpoint, refused by torch.load(weights_only=True): "
                               f"{type(err).__name__}: {reason}", store.results_dir(root),
                         still_bad=lambda p: p.exists())
        return None
    if not isinstance(blob, dict) or _plain(blob.get("configs")) != _plain(configs):
        raise ValueError(f"{path} holds other configs than asked for (hash collision or edited file)")
    model = _build(configs)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return Group(model, configs, blob["records"], path)


def stored_group(configs: list[dict], root: str | os.PathLike | None = None) -> Group | None:
    """The grid's own trained models of ``configs``: the records and the weights the
    grid kept beside them (:func:`marnn.store.load_weights`), or None unless every
    config has both. ``path`` is then the first config's weights file."""
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
    """The trained models of one (task, model) group: the grid's own (records and
    kept weights in the store, :func:`stored_group`), else this module's checkpoint,
    else train the group and save a checkpoint.

    Training uses :func:`marnn.train.formal.train_formal` with the grid's
    configs, so the records equal the grid's when the group is the same.
    """
    configs = group_configs(task, model, scale, modes, restarts)
    found = stored_group(configs, root)
    if found is not None:
        return found
    found = load_group(configs, root)
    if found is not None:
        return found
    if not store.may_train():
        raise NotStored(f"{task}/{model} at {scale}: neither kept weights nor a checkpoint in the store, and "
                        f"the pages train nothing here (${store.NO_TRAIN_ENV}=1)")
    from ..train.formal import train_formal
    records, trained = train_formal(configs, device="cpu", progress=progress, threads=threads, return_model=True)
    path = checkpoint_path(configs, root)
    _save({"configs": _plain(configs), "records": _plain(records),
           "state_dict": {k: v.detach().cpu() for k, v in trained.state_dict().items()}}, path)
    group = load_group(configs, root)
    if group is None:
        raise RuntimeError(f"the checkpoint {path} is missing or invalid right after it was saved")
    return group
