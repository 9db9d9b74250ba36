"""Runs that survive interruption: a group's complete state after every epoch.

A group (:func:`marnn.train.formal.train_formal`, :func:`marnn.train.ptb.train_ptb`)
given a ``state_dir`` writes, at the end of every epoch, everything the rest of
its training depends on into ``<state_dir>/<kind>-<key>.pt`` (``key``: 16 hex
digits of the SHA-256 of its configs, in order), atomically (a temporary file
replaced in one step, :func:`marnn.store.atomic_write`):

* the live model's weights (only the replicas still training, after any
  compaction) and which replicas they are;
* the optimiser: per-replica learning rates, clipping thresholds, trainable
  masks, active flags, step counters and (Adam) moments and per-parameter steps;
* the tracker: best validation value, its epoch and weights (the snapshot of
  every replica), plateau and early-stopping counters, status, divergence
  records, epochs and steps;
* the learning curves so far, the epoch and step reached (the data order of an
  epoch is a function of the data seed and the epoch number, so the epoch
  *is* the position in the data), torch's and NumPy's global random states, and
  the wall and CPU seconds spent;
* a Penn Treebank group also saves *inside* an epoch (an epoch of the whole
  stream takes an hour for a learning-rate search of 8 replicas): every
  ``state_seconds`` it writes the chunk reached, the carried state (the LSTM's
  and the stack's: each stack core's ``snapshot_state``) and the epoch's loss
  so far (:func:`partial_epoch`).

Only plain Python types and tensors go in, so ``torch.load(path,
weights_only=True)`` reads it. A group that finds its file resumes after the
saved epoch and returns bitwise the records an uninterrupted run returns
(timings, ``created`` and ``env.pid`` aside). The load-or-train path
(:func:`marnn.train.run.train_missing`, which the grid and the command line
call) keeps the files in ``<store>/.state/`` (git-ignored) and removes a
group's file once its records are written.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import cast

import numpy as np
import torch

from ..store import atomic_write, results_dir

STATE_VERSION = 1
STATE_FOLDER = ".state"
_NOT_STATE = {"model", "opt", "make_model", "snapshot", "params"}  # rebuilt, or saved on their own


def _plain(x) -> bool:
    if x is None or isinstance(x, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(x, (list, tuple)):
        return all(_plain(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    return False


def _attributes(obj) -> dict:
    """Every attribute of ``obj`` that is state: plain values, tensors and containers
    of them (so counters added to the tracker or optimiser later are saved too)."""
    out = {}
    for k, v in vars(obj).items():
        if k in _NOT_STATE or not _plain(v):
            continue
        if isinstance(v, torch.Tensor):
            v = _cpu(v)
        elif isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
            v = {n: _cpu(t) for n, t in v.items()}
        out[k] = v
    return out


def _put(obj, saved: dict, device) -> None:
    for k, v in saved.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
        elif isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
            v = {n: t.to(device) for n, t in v.items()}
        setattr(obj, k, v)


def state_dir(root: str | os.PathLike | None = None) -> Path:
    """The store's folder of group states: ``<store>/.state``."""
    return results_dir(root) / STATE_FOLDER


def state_path(configs: list[dict], folder: str | os.PathLike) -> Path:
    """Where the state of the group ``configs`` (in this order) lives."""
    text = json.dumps(configs, sort_keys=True, separators=(",", ":"))
    return Path(folder) / f"{configs[0]['kind']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pt"


def _numpy_state() -> dict:
    # the legacy (default) form is a tuple; numpy's stubs also allow the dict form
    name, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(s: dict) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def save(configs: list[dict], folder, tracker, *, epoch: int, step: int, curves: list, wall: float, cpu: float,
         partial: dict | None = None) -> Path:
    """Write the group's state after ``epoch`` (atomically); returns the file. ``partial``: the
    position inside the next epoch when the state is saved mid-epoch (:func:`partial_epoch`)."""
    opt = tracker.opt
    state = {
        "version": STATE_VERSION,
        "configs": json.dumps(configs, sort_keys=True),
        "epoch": int(epoch),
        "step": int(step),
        "curves": curves,
        "wall_s": float(wall),
        "cpu_s": float(cpu),
        "model": {n: _cpu(p) for n, p in tracker.model.named_parameters()},
        "opt": _attributes(opt),  # lr, clip, masks, active, steps, Adam moments, ...
        "tracker": _attributes(tracker),  # idx, best, counters, status, divergence, ...
        "snapshot": {n: _cpu(t) for n, t in tracker.snapshot.items()},
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(),
                **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
        **({"partial": partial} if partial is not None else {}),
    }
    path = state_path(configs, folder)
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(configs: list[dict], folder) -> dict | None:
    """The saved state of the group ``configs``, or None (no file)."""
    path = state_path(configs, folder)
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state.get("version") != STATE_VERSION or state.get("configs") != json.dumps(configs, sort_keys=True):
        raise ValueError(f"{path}: a state file of another group or version; delete it to start the group afresh")
    return state


@torch.no_grad()
def restore(tracker, state: dict, make_model) -> tuple[int, int, list, float, float]:
    """Put a fresh group's ``tracker`` (model, optimiser, counters) in the saved state.

    ``make_model(replicas)`` builds the live model of the saved replicas when
    some had stopped. Returns ``(next_epoch, step, curves, wall_s, cpu_s)``.
    """
    idx = list(state["tracker"]["idx"])
    if idx != tracker.idx:  # the saved live model held fewer replicas (compaction)
        model = make_model(idx)
        tracker.opt = tracker.opt.subset(model.named_parameters(), [tracker.idx.index(r) for r in idx])
        tracker.model = model
    params = dict(tracker.model.named_parameters())
    for n, t in state["model"].items():
        params[n].copy_(t)
    device = next(iter(params.values())).device
    _put(tracker.opt, state["opt"], device)
    _put(tracker, state["tracker"], device)
    for n, t in state["snapshot"].items():
        tracker.snapshot[n].copy_(t)
    torch.set_rng_state(state["rng"]["torch"])
    _set_numpy_state(state["rng"]["numpy"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"] + 1, state["step"], state["curves"], state["wall_s"], state["cpu_s"]


def partial_epoch(epoch: int, chunk: int, carry, train_nll: torch.Tensor, train_tokens: int,
                  seconds: float) -> dict | None:
    """The position inside PTB epoch ``epoch`` after ``chunk`` chunks, for :func:`save`: the carried
    state (``carry``: the LSTM's ``h`` and ``c`` and, for a stack model, the stack core's state as
    its ``snapshot_state`` gives it), the training loss summed so far and the epoch's seconds.
    None when the carried state cannot be saved (a core without ``snapshot_state``): such a
    group saves at epoch ends only."""
    packed = _pack_carry(carry)
    if packed is None:
        return None
    return {"epoch": int(epoch), "chunk": int(chunk), "carry": packed, "train_nll": _cpu(train_nll),
            "train_tokens": int(train_tokens), "seconds": float(seconds)}


def _pack_carry(carry) -> dict | None:
    from ..models.stack_rnn import ModelState

    if isinstance(carry, torch.Tensor):
        return {"tensor": _cpu(carry)}
    if not isinstance(carry, ModelState):
        return None
    packed = {"h": _cpu(carry.h), "c": _cpu(carry.c)}
    if carry.memory is None and carry.core is None:
        return packed
    if carry.memory is None or not hasattr(carry.core, "snapshot_state"):
        return None
    packed["memory"] = carry.core.snapshot_state(carry.memory)
    return packed


def carried_state(partial: dict, device, core=None):
    """The carried state a :func:`partial_epoch` holds, on ``device``; ``core``: the stack core of the
    model that continues (the state of a stack model holds it)."""
    from ..models.stack_rnn import ModelState

    packed = partial["carry"]
    if "tensor" in packed:
        return packed["tensor"].to(device)
    h, c = packed["h"].to(device), packed["c"].to(device)
    if "memory" not in packed:
        return ModelState(h, c)
    if core is None or not hasattr(core, "restore_state"):
        raise ValueError("this saved PTB state carries a stack; resume it with the model's stack core")
    return ModelState(h, c, core.restore_state(packed["memory"], device), core)


def progress(configs: list[dict], folder) -> dict | None:
    """Where the group ``configs`` stands in its saved state, or None (no file): ``epoch``
    (finished epochs), ``chunk`` (PTB: the chunk reached inside the next epoch, else None),
    ``running`` (replicas still training), ``cpu_s`` and ``wall_s`` spent, ``saved`` (the
    file's modification time). Reads the file memory-mapped: only these fields are loaded."""
    path = state_path(configs, folder)
    try:
        saved = path.stat().st_mtime
        state = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except (FileNotFoundError, RuntimeError, OSError):
        return None  # gone (the group just finished) or mid-replacement: nothing to report
    partial = state.get("partial")
    return {"epoch": int(state["epoch"]), "chunk": int(partial["chunk"]) if partial else None,
            "running": len(state["tracker"].get("idx", [])) or len(configs),
            "cpu_s": float(state["cpu_s"]), "wall_s": float(state["wall_s"]), "saved": saved}


def remove(configs: list[dict], folder) -> None:
    """Delete the group's state file (once its records are written)."""
    try:
        state_path(configs, folder).unlink()
    except FileNotFoundError:
        pass
