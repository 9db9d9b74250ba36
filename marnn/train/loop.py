"""What both trainers share (docs: book/reference/training.md): one group's way through its epochs.

:func:`marnn.train.formal.train_formal` and :func:`marnn.train.ptb.train_ptb`
keep only their data, their epoch (the batches and the loss) and their
evaluation; this module holds the rest:

* :class:`Group`: the start of a group (:func:`check_group`, deterministic
  algorithms, threads, device, clocks), its freeze masks, its tracker and its
  resumed state (:mod:`marnn.train.resume`), the end of every epoch (explosion
  check, schedule and early stopping, successive halving, the saved state, the
  epoch line, ``after_epoch``), the best weights at the end, and the parts every
  record shares (:class:`RecordParts`);
* :class:`Tracker`: the replicas of a group: per-replica schedule, early
  stopping, best snapshot, divergence, compaction of the live model;
* :func:`guarded_step`: one optimiser step that isolates diverging replicas:
  a replica whose loss or gradient norm is NaN/inf is *diverged*: masked from
  then on, its epoch and step recorded, excluded from "best of"; so is one
  whose loss explodes while staying finite: a training cross-entropy above
  :data:`EXPLODE_FACTOR` times ``log V`` (``V`` output symbols: the
  cross-entropy of a uniform guess, which an untrained model is close to)
  at the end of :data:`EXPLODE_EPOCHS` consecutive epochs
  (:meth:`Tracker.check_explosion`, recorded with ``where = "train-explode"``).
  The other replicas of the group train on unaffected.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch

from ..config import RunConfig
from . import default_device, environment, resume, set_threads
from .epochlog import formal_epoch, lines_enabled, ptb_epoch, resumed
from .optim import ReplicaOptimizer

EXPLODE_FACTOR = 10.0  # a training cross-entropy above this many times log V ...
EXPLODE_EPOCHS = 2  # ... at the end of this many consecutive epochs marks a replica diverged


def default_build(name, **kwargs):
    """:func:`marnn.models.build` (imported when first called)."""
    from ..models import build
    return build(name, **kwargs)


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or None when it is None or not finite (what a record stores)."""
    return float(x) if x is not None and math.isfinite(x) else None


def guarded_step(opt, tracker: Tracker, idx: list[int], loss: torch.Tensor, epoch: int, step: int) -> None:
    """One optimiser step for the live replicas, isolating any that diverge.

    ``loss``: ``(R_live,)``. Replicas whose loss or clipped gradient norm is not
    finite are marked diverged (with epoch, step and where) and masked, so the
    others step as if they were alone.
    """
    finite = torch.isfinite(loss)
    opt.zero_grad()
    torch.where(opt.active & finite, loss, torch.zeros((), device=loss.device)).sum().backward()
    norms = opt.mask_and_clip()
    bad = opt.active & ~(finite & torch.isfinite(norms).to(finite.device))
    for pos in torch.nonzero(bad).flatten().tolist():
        value = float(loss[pos].detach()) if not bool(finite[pos]) else float(norms[pos])
        tracker.diverge(idx[pos], epoch, step, "train-loss" if not bool(finite[pos]) else "train-grad", value)
    opt.step()


class Tracker:
    """The replicas of a group: per-replica schedule, early stopping, best snapshot, divergence.

    After every epoch each replica is validated separately: a new best
    validation value snapshots its weights; ``patience`` epochs without
    improvement multiply its lr by ``factor`` (and restart the plateau count);
    ``early_stop`` epochs without improvement stop it: it is masked (no update)
    and, at the end of the epoch, dropped from the live batch. Improvement =
    strictly lower validation value.

    Replicas are named by their index ``r`` in the group. The *live* model and
    optimiser hold only the replicas still training, in the order ``idx``
    (position ``pos`` holds replica ``idx[pos]``): with ``make_model`` given,
    each time some replicas stop the live model is rebuilt without them
    (:meth:`compact`), so stopped replicas cost nothing. Their best weights
    live in ``snapshot`` (all ``R`` replicas), which :meth:`finish` loads into
    a full model.
    """

    def __init__(self, model: torch.nn.Module, opt: ReplicaOptimizer, early_stop: int, patience: int, factor: float,
                 make_model: Callable[[list[int]], torch.nn.Module] | None = None):
        self.model, self.opt, self.make_model = model, opt, make_model
        self.early_stop, self.patience, self.factor = early_stop, patience, factor
        R = self.R = opt.R
        self.idx = list(range(R))
        self.best = [math.inf] * R
        self.best_epoch: list[int | None] = [None] * R
        self.bad = [0] * R
        self.plateau = [0] * R
        self.status = ["training"] * R  # -> "early-stop" | "max-epochs" | "diverged" | "pruned"
        self.diverged: list[dict | None] = [None] * R
        self.epochs = [0] * R
        self.lr = opt.lr.tolist()
        self.steps = [0] * R
        self._high = [0] * R  # consecutive epochs above the explosion limit (check_explosion)
        with torch.no_grad():
            self.snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}

    def check_explosion(self, epoch: int, step: int, train_ce: dict[int, float | None], vocab: int) -> None:
        """Mark diverged the running replicas whose training cross-entropy (per symbol,
        ``train_ce[r]``, None when not finite) was above ``EXPLODE_FACTOR * log(vocab)``
        at the end of ``EXPLODE_EPOCHS`` consecutive epochs (see the module docstring)."""
        limit = EXPLODE_FACTOR * math.log(max(vocab, 2))
        for r, ce in train_ce.items():
            if self.status[r] != "training":
                continue
            if ce is None or ce > limit:
                self._high[r] += 1
                if self._high[r] >= EXPLODE_EPOCHS or ce is None:
                    self.diverge(r, epoch, step, "train-explode", ce if ce is not None else math.inf)
            else:
                self._high[r] = 0

    def running(self) -> list[int]:
        return [r for r, s in enumerate(self.status) if s == "training"]

    def diverge(self, r: int, epoch: int, step: int, where: str, value: float) -> None:
        if self.status[r] != "training":
            return
        self.status[r] = "diverged"
        self.diverged[r] = {"epoch": epoch, "step": step, "where": where, "value": repr(value)}
        self.opt.active[self.idx.index(r)] = False

    @torch.no_grad()
    def end_epoch(self, epoch: int, values: list[float], step: int) -> None:
        """Update the running replicas with this epoch's validation values (live order)."""
        params = dict(self.model.named_parameters())
        for pos, r in enumerate(self.idx):
            if self.status[r] != "training":
                continue
            v = values[pos]
            self.epochs[r] = epoch
            if not math.isfinite(v):
                self.diverge(r, epoch, step, "valid", v)
                continue
            if v < self.best[r]:
                self.best[r], self.best_epoch[r] = v, epoch
                self.bad[r] = self.plateau[r] = 0
                for n, p in params.items():
                    self.snapshot[n][r].copy_(p[pos])
                continue
            self.bad[r] += 1
            self.plateau[r] += 1
            if self.plateau[r] >= self.patience:
                self.opt.lr[pos] *= self.factor
                self.lr[r] = float(self.opt.lr[pos])
                self.plateau[r] = 0
            if self.bad[r] >= self.early_stop:
                self.status[r] = "early-stop"
                self.opt.active[pos] = False
        if self.make_model is not None and 0 < len(self.running()) < len(self.idx):
            self.compact()

    @torch.no_grad()
    def halve(self, units: list) -> list[int]:
        """Successive halving: stop the worse half of the running units (status "pruned").

        ``units[r]`` names the unit replica ``r`` belongs to (a learning-rate draw:
        its seed, shared by its freeze modes); a unit's value is the best validation
        value of its running replicas. The ``ceil(n / 2)`` best of the ``n`` running
        units keep training (ties go to the earlier unit), so one unit is never
        pruned. Returns the replicas pruned."""
        order: list = []
        value: dict = {}
        for r in self.running():
            u = units[r]
            if u not in value:
                order.append(u)
            value[u] = min(value.get(u, math.inf), self.best[r])
        keep = set(sorted(order, key=lambda u: (value[u], order.index(u)))[:(len(order) + 1) // 2])
        pruned = [r for r in self.running() if units[r] not in keep]
        for r in pruned:
            self.status[r] = "pruned"
            self.opt.active[self.idx.index(r)] = False
        if pruned and self.make_model is not None and self.running():
            self.compact()
        return pruned

    def _save_steps(self) -> None:
        for pos, r in enumerate(self.idx):
            self.steps[r] = int(self.opt.steps[pos])

    @torch.no_grad()
    def compact(self) -> None:
        """Rebuild the live model and optimiser with the running replicas only."""
        self._save_steps()
        keep = [pos for pos, r in enumerate(self.idx) if self.status[r] == "training"]
        reps = [self.idx[pos] for pos in keep]
        assert self.make_model is not None  # compact() runs only with make_model given
        model = self.make_model(reps)
        old = dict(self.model.named_parameters())
        for n, p in model.named_parameters():
            p.copy_(old[n][keep])
        self.opt = self.opt.subset(model.named_parameters(), keep)
        self.model, self.idx = model, reps

    @torch.no_grad()
    def finish(self) -> torch.nn.Module:
        """Stop the rest (max epochs); return a model of all replicas with their best weights."""
        for r in self.running():
            self.status[r] = "max-epochs"
        self._save_steps()
        if self.idx == list(range(self.R)):
            model = self.model
        else:
            assert self.make_model is not None  # the live replicas shrink only in compact()
            model = self.make_model(list(range(self.R)))
        for n, p in model.named_parameters():
            p.copy_(self.snapshot[n])
        return model


def per_replica_counts(model, masks: dict[str, torch.Tensor]) -> tuple[int, list[int]]:
    """The parameters of one replica, and how many of them each replica trains (its freeze masks)."""
    total = 0
    trainable: list[int] | None = None
    for n, p in model.named_parameters():
        size = p[0].numel()
        total += size
        m = masks.get(n, torch.ones(p.shape[0], dtype=torch.bool))
        add = [size * int(x) for x in m.tolist()]
        trainable = add if trainable is None else [a + b for a, b in zip(trainable, add, strict=True)]
    assert trainable is not None  # every model has parameters
    return total, trainable


def check_group(configs: list[dict], kind: str) -> list[RunConfig]:
    """The runs of a group of ``kind`` runs that can train as one batched model, typed:
    each a valid :class:`~marnn.config.RunConfig` of that kind, all with one
    :attr:`~marnn.config.RunConfig.group_key` (they differ at most in freeze mode and seed)."""
    if not configs:
        raise ValueError("empty group")
    runs = [RunConfig.from_dict(c) for c in configs]
    if runs[0].kind != kind:
        raise ValueError(f"a {kind} group got a {runs[0].kind} run")
    for run in runs[1:]:
        if run.group_key != runs[0].group_key:
            a, b = runs[0].to_dict(), run.to_dict()
            k = next(k for k in {**a, **b} if k not in ("freeze", "seed")
                     and json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))
            raise ValueError(f"runs of one group must share {k!r}: {a.get(k)!r} != {b.get(k)!r}")
    return runs


class RecordParts:
    """What every record of one trained group shares (see marnn.store for the schema)."""

    def __init__(self, tracker, configs, total_params, trainable, wall, cpu, env):
        self.tracker, self.configs, self.env = tracker, configs, env
        self.total_params, self.trainable = total_params, trainable
        self.wall, self.cpu = wall, cpu
        self.created = datetime.now(UTC).isoformat(timespec="seconds")

    def record(self, r: int, *, lr: float, clip: float, curve: list, results: dict) -> dict:
        """Replica ``r``'s record: identity and schedule, then ``results``, then run facts."""
        t, R = self.tracker, len(self.configs)
        return {
            "config": self.configs[r],
            "seed": self.configs[r]["seed"],
            "lr": lr,
            "final_lr": t.lr[r],
            "clip": clip,
            "status": t.status[r],
            "diverged": t.diverged[r],
            "epochs": t.epochs[r],
            "best_epoch": t.best_epoch[r],
            "steps": t.steps[r],
            **results,
            "curve": curve,
            "num_parameters": self.total_params,
            "trainable_parameters": self.trainable[r],
            "group": {"replicas": R, "wall_time_s": round(self.wall, 3), "cpu_time_s": round(self.cpu, 3),
                      "members": [f"{c['freeze']}/s{c['seed']}" for c in self.configs]},
            "wall_time_s": round(self.wall / R, 3),
            "env": self.env,
            "created": self.created,
        }


class Group:
    """One group of runs on its way through training: what a trainer does around its own epoch.

    Made at the start of a trainer (checks the group, turns on deterministic
    algorithms, pins the threads, picks the device, starts the clocks); then
    :meth:`track` (the model, its optimiser: the tracker, any resumed state),
    :meth:`end_epoch` after every epoch, :meth:`finish` for the best weights
    and :meth:`record_parts` for the records. ``curves[r]`` (one row per epoch
    of replica ``r``) and ``step`` (optimiser steps taken) are the trainer's to
    fill; they are saved with the state and come back on resumption.
    """

    def __init__(self, configs: list[dict], kind: str, *, device=None, threads: int | None = None,
                 state_dir=None, after_epoch: Callable[[int], None] | None = None, epoch_lines: bool = False):
        self.configs, self.kind = configs, kind
        self.runs = check_group(configs, kind)  # typed; ``configs`` stay as given for records and state
        self.first = self.runs[0]
        torch.use_deterministic_algorithms(True)
        set_threads(threads)
        self.device = torch.device(device) if device is not None else default_device()
        self.state_dir, self.after_epoch, self.epoch_lines = state_dir, after_epoch, epoch_lines
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.R = len(configs)
        self.modes = [run.freeze for run in self.runs]
        self.curves: list[list[dict]] = [[] for _ in range(self.R)]
        self.step = 0
        self.start = 1  # the first epoch to train (after a resumed state: the one after it)
        self.lines = False

    def freeze_masks(self, model) -> dict[str, torch.Tensor]:
        """The model's trainable masks for the group's freeze modes, on the device."""
        return {n: m.to(self.device) for n, m in model.freeze_masks(self.modes).items()}

    def track(self, model, masks: dict[str, torch.Tensor], opt: ReplicaOptimizer, *, early_stop: int,
              patience: int, factor: float, make_model: Callable[[list[int]], torch.nn.Module],
              compact: bool = True) -> dict | None:
        """Follow ``model`` and its optimiser with a :class:`Tracker` (``compact``: rebuild the live model
        without stopped replicas) and resume from the group's saved state, if ``state_dir`` holds one.
        Returns that state (or None)."""
        self.tracker = Tracker(model, opt, early_stop, patience, factor, make_model=make_model if compact else None)
        self.total_params, self.trainable = per_replica_counts(model, masks)
        saved = resume.load(self.configs, self.state_dir) if self.state_dir is not None else None
        if saved is not None:
            self.start, self.step, self.curves, wall0, cpu0 = resume.restore(self.tracker, saved, make_model)
            self.t0, self.c0 = self.t0 - wall0, self.c0 - cpu0
        self.lines = lines_enabled(self.epoch_lines)
        if self.lines and saved is not None:
            resumed(self.configs, self.start - 1)
        return saved

    def elapsed(self) -> tuple[float, float]:
        """Wall and CPU seconds spent on the group (a resumed group counts its earlier time)."""
        return time.perf_counter() - self.t0, time.process_time() - self.c0

    def save(self, epoch: int, partial: dict | None = None) -> None:
        """Write the group's state after ``epoch`` (:func:`marnn.train.resume.save`)."""
        wall, cpu = self.elapsed()
        resume.save(self.configs, self.state_dir, self.tracker, epoch=epoch, step=self.step, curves=self.curves,
                    wall=wall, cpu=cpu, **({"partial": partial} if partial is not None else {}))

    def end_epoch(self, epoch: int, values: list[float], train_ce: dict[int, float | None], vocab: int, *,
                  trained: list[int], max_epochs: int, started: float, halve: list | None = None) -> None:
        """After the trainer's epoch: mark exploded replicas (``train_ce``: per-symbol training
        cross-entropy of the replicas ``trained``, ``vocab`` output symbols), update schedules and
        early stopping with the validation ``values`` (live order), stop the worse half of the
        ``halve`` units (:meth:`Tracker.halve`), save the state, write the epoch's lines (when
        on; :mod:`marnn.train.epochlog`: the epoch ``started`` at this ``time.perf_counter()``)
        and call ``after_epoch``."""
        tracker = self.tracker
        tracker.check_explosion(epoch, self.step, train_ce, vocab)
        tracker.end_epoch(epoch, values, self.step)
        if halve is not None:
            tracker.halve(halve)
        if self.state_dir is not None:
            self.save(epoch)
        if self.lines and self.kind == "formal":
            formal_epoch(self.configs, tracker, trained, self.curves, epoch, max_epochs, time.perf_counter() - started)
        elif self.lines:
            ptb_epoch(self.configs, tracker, trained, self.curves, epoch, max_epochs)
        if self.after_epoch is not None:
            self.after_epoch(epoch)

    def finish(self) -> torch.nn.Module:
        """Every replica's best weights in one model, in eval mode (:meth:`Tracker.finish`)."""
        model = self.tracker.finish()
        model.eval()
        return model

    def record_parts(self) -> RecordParts:
        """What the group's records share, timed now."""
        wall, cpu = self.elapsed()
        return RecordParts(self.tracker, self.configs, self.total_params, self.trainable, wall, cpu,
                           environment(self.device))
