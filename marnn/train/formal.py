"""Training on the formal languages (docs: book/reference/training.md, "Formal languages").

One call trains a *group* of runs that share task, model, scale and data seed
(typically the ``restarts x freeze modes`` of one (task, model)) as ONE model
with ``R`` replicas:

* replica ``r`` is initialised from ``seeds[r]`` (bit-for-bit the ``R = 1``
  model) and trains with its own learning rate (from its seed), its own
  freeze mode (``model.freeze_masks``), clipping and step counter
  (:class:`~marnn.train.optim.BatchedAdam`);
* all replicas see the same batches in the same order (the data seed);
* the loss of replica ``r`` on a batch of ``B`` strings of length ``n`` is
  :math:`L_r = \\frac1B \\sum_{b}\\sum_{t=0}^{n} -\\log p_r(s_{b,t} \\mid s_{b,<t})`
  (EOS included); we back-propagate :math:`\\sum_r L_r`, whose gradient with
  respect to replica ``r``'s parameters is exactly :math:`\\nabla L_r`;
* after every epoch each replica is validated separately: a new best
  validation cross-entropy snapshots its weights; ``lr_patience`` epochs
  without improvement multiply its lr by ``lr_decay``; ``early_stop`` epochs
  without improvement stop it: it is masked (no update) and, at the end of
  the epoch, dropped from the live batch (the model is rebuilt with the
  replicas still training, so stopped ones cost nothing);
* a replica whose loss or gradient norm is NaN/inf is *diverged*: masked from
  then on, its epoch and step recorded, excluded from "best of"; so is one
  whose loss explodes while staying finite: a training cross-entropy above
  :data:`EXPLODE_FACTOR` times ``log V`` (``V`` output symbols: the
  cross-entropy of a uniform guess, which an untrained model is close to)
  at the end of :data:`EXPLODE_EPOCHS` consecutive epochs
  (:meth:`Tracker.check_explosion`, recorded with ``where = "train-explode"``).
  The other replicas of the group train on unaffected.

At the end every replica gets its best-validation weights back and is
evaluated on the test bins; one record per replica is returned.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from . import (
    default_device,
    draw_seed,
    environment,
    epoch_order,
    hyperparameters,
    progress_disabled,
    resume,
    set_threads,
)
from .epochlog import formal_epoch, lines_enabled, resumed
from .evaluate import evaluate_bins, split_metrics, token_nll
from .optim import BatchedAdam, ReplicaOptimizer


def _build_default(name, **kwargs):
    from ..models import build
    return build(name, **kwargs)



EXPLODE_FACTOR = 10.0  # a training cross-entropy above this many times log V ...
EXPLODE_EPOCHS = 2  # ... at the end of this many consecutive epochs marks a replica diverged


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

    ``patience`` epochs without improvement multiply the lr by ``factor`` (and
    restart the plateau count); ``early_stop`` epochs without improvement stop
    the replica. Improvement = strictly lower validation value.

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


def _per_replica_counts(model, masks: dict[str, torch.Tensor]) -> tuple[int, list[int]]:
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


def check_group(configs: list[dict], kind: str) -> dict:
    """The first config of a group of ``kind`` runs that can train as one batched model:
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
    return configs[0]


def train_formal(configs: list[dict], *, build: Callable | None = None, device=None, progress: bool = False,
                 desc: str | None = None, threads: int | None = None, compact: bool = True,
                 return_model: bool = False, state_dir=None, after_epoch: Callable[[int], None] | None = None,
                 epoch_lines: bool = False):
    """Train a group of formal-language runs as one replica-batched model.

    ``configs`` come from :func:`marnn.train.formal_config` and must share
    task, model, scale and data seed (freeze mode and seed may differ).
    ``build(name, task=..., replicas=R, seeds=[...], device=...)`` defaults to
    :func:`marnn.models.build`. Returns one record per config, in order
    (see :mod:`marnn.store` for the schema). ``compact``: drop stopped
    replicas from the live batch (see :class:`Tracker`); ``threads``: torch
    intra-op threads. ``return_model``: return ``(records, model)``, the
    model holding every replica's best weights in config order (eval mode).
    ``state_dir``: save the group's state there after every epoch and resume
    from it (:mod:`marnn.train.resume`); ``after_epoch(epoch)`` is called once
    that state is written (tests interrupt a run from it). ``epoch_lines``: one
    line for the group on stderr after every epoch (:mod:`marnn.train.epochlog`).
    """
    from ..tasks import get as get_task
    from ..tasks.data import make_task_data

    first = check_group(configs, "formal")
    torch.use_deterministic_algorithms(True)
    set_threads(threads)
    device = torch.device(device) if device is not None else default_device()
    build = build or _build_default
    t0, c0 = time.perf_counter(), time.process_time()

    task = get_task(first["task"])
    scale = RunConfig.from_dict(first).scale
    data = make_task_data(task, scale, first["data_seed"])
    R = len(configs)
    seeds = [draw_seed(c) for c in configs]  # the restart index unless the scale has independent_draws
    modes = [c["freeze"] for c in configs]
    hps = [hyperparameters(s, scale.lr_range) for s in seeds]

    def make_model(reps: list[int]):
        return build(first["model"], task=task.name, replicas=len(reps), seeds=[seeds[r] for r in reps], device=device)

    model = make_model(list(range(R)))
    masks = {n: m.to(device) for n, m in model.freeze_masks(modes).items()}
    opt: ReplicaOptimizer = BatchedAdam(model.named_parameters(), lr=[h["lr"] for h in hps], clip=scale.clip,
                                        masks=masks)
    tracker = Tracker(model, opt, scale.early_stop, scale.lr_patience, scale.lr_decay,
                      make_model=make_model if compact else None)
    train_bound = task.lower_bound(*scale.train_lengths)
    total_params, trainable = _per_replica_counts(model, masks)

    def to_dev(b):
        return b.inputs.to(device), b.targets.to(device)

    curves: list[list[dict]] = [[] for _ in range(R)]
    step = 0
    start = 1
    saved = resume.load(configs, state_dir) if state_dir is not None else None
    if saved is not None:
        start, step, curves, wall0, cpu0 = resume.restore(tracker, saved, make_model)
        t0, c0 = t0 - wall0, c0 - cpu0
    lines = lines_enabled(epoch_lines)
    if lines and saved is not None:
        resumed(configs, start - 1)
    bar = tqdm(range(start, scale.max_epochs + 1), desc=desc or f"{task.name}/{first['model']} x{R}",
               disable=progress_disabled(progress), leave=False)
    for epoch in bar:
        running = tracker.running()
        if not running:
            break
        model, opt, idx = tracker.model, tracker.opt, tracker.idx
        live = torch.tensor(idx, dtype=torch.long)
        lrs = dict(zip(idx, opt.lr.tolist(), strict=True))
        t_epoch = time.perf_counter()
        tr_nll = torch.zeros(R, dtype=torch.float64)
        tr_sym = 0
        model.train()
        for i in epoch_order(first["data_seed"], epoch, len(data.train)):
            x, y = to_dev(data.train[i])
            B = x.shape[0]
            out = model(x)
            nll = token_nll(out.logits, y)  # (R_live, B, n+1)
            loss = nll.sum((1, 2)) / B  # (R_live,) summed over symbols, averaged over the batch
            guarded_step(opt, tracker, idx, loss, epoch, step)
            tr_nll[live] += nll.detach().double().sum((1, 2)).cpu()
            tr_sym += y.numel()
            step += 1
        model.eval()
        v = split_metrics(model, [type(b)(b.length, *to_dev(b)) for b in data.valid])
        v_ce = (v["nll"] / v["symbols"]).tolist()
        v_acc = (v["correct"] / v["symbols"]).tolist()
        for pos, r in enumerate(idx):
            if r not in running:  # stopped before this epoch (only without compaction)
                continue
            ce = v_ce[pos]
            curves[r].append({
                "epoch": epoch,
                "lr": lrs[r],
                "train_cross_entropy": _num(float(tr_nll[r]) / tr_sym),
                "valid_cross_entropy": _num(ce),
                "valid_ce_diff": _num(ce - train_bound),
                "valid_accuracy": v_acc[pos],
                "seconds": round(time.perf_counter() - t_epoch, 3),
            })
        tracker.check_explosion(epoch, step, {r: curves[r][-1]["train_cross_entropy"] for r in idx if r in running},
                                len(task.outputs))
        tracker.end_epoch(epoch, v_ce, step)
        if state_dir is not None:
            resume.save(configs, state_dir, tracker, epoch=epoch, step=step, curves=curves,
                        wall=time.perf_counter() - t0, cpu=time.process_time() - c0)
        if lines:
            formal_epoch(configs, tracker, running, curves, epoch, scale.max_epochs, time.perf_counter() - t_epoch)
        if after_epoch is not None:
            after_epoch(epoch)
        if progress:
            finite_best = [b for b in tracker.best if math.isfinite(b)]
            bar.set_postfix(running=len(tracker.running()),
                            best_diff=f"{min(finite_best) - train_bound:.3f}" if finite_best else "nan")
    bar.close()
    model = tracker.finish()
    model.eval()

    ranges = dict(zip(scale.bin_names, scale.test_bins, strict=True))
    test = {name: [type(b)(b.length, *to_dev(b)) for b in batches] for name, batches in data.test.items()}
    metrics = evaluate_bins(model, task, test, ranges)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    common = RecordParts(tracker, configs, total_params, trainable, wall, cpu, environment(device))
    records = []
    for r in range(len(configs)):
        best = tracker.best[r]
        records.append(common.record(r, lr=hps[r]["lr"], clip=scale.clip, curve=curves[r], results={
            "valid": {
                "cross_entropy": _num(best),
                "lower_bound": train_bound,
                "ce_diff": _num(best - train_bound),
                "perplexity": _num(math.exp(best)) if math.isfinite(best) and best < 700 else None,
                "accuracy": _best_valid_acc(curves[r], tracker.best_epoch[r]),
            },
            "bins": metrics[r]["bins"],
            "lengths": metrics[r]["lengths"],
        }))
    return (records, model) if return_model else records


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


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _best_valid_acc(curve: list[dict], best_epoch: int | None) -> float | None:
    for row in curve:
        if row["epoch"] == best_epoch:
            return row["valid_accuracy"]
    return None
