"""Training on the formal languages (PAPER.md, "Training protocol").

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
  without improvement stop it (it stays in the batch, masked: no update);
* a replica whose loss or gradient norm is NaN/inf is *diverged*: masked from
  then on, its epoch and step recorded, excluded from "best of".

At the end every replica gets its best-validation weights back and is
evaluated on the test bins; one record per replica is returned.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import default_device, environment, progress_disabled, set_threads, epoch_order, hyperparameters, scale_from_config
from .evaluate import evaluate_bins, split_metrics, token_stats
from .optim import BatchedAdam, ReplicaOptimizer


def _build_default(name, **kwargs):
    from ..models import build
    return build(name, **kwargs)


class Tracker:
    """Per-replica early stopping, lr schedule, best snapshot and divergence.

    ``patience`` epochs without improvement multiply the lr by ``factor`` (and
    restart the plateau count); ``early_stop`` epochs without improvement stop
    the replica. Improvement = strictly lower validation value.
    """

    def __init__(self, model: torch.nn.Module, opt: ReplicaOptimizer, early_stop: int, patience: int, factor: float):
        self.model, self.opt = model, opt
        self.early_stop, self.patience, self.factor = early_stop, patience, factor
        R = opt.R
        self.best = [math.inf] * R
        self.best_epoch: list[int | None] = [None] * R
        self.bad = [0] * R
        self.plateau = [0] * R
        self.status = ["training"] * R  # -> "early-stop" | "max-epochs" | "diverged"
        self.diverged: list[dict | None] = [None] * R
        self.epochs = [0] * R
        with torch.no_grad():
            self.snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}

    def running(self) -> list[int]:
        return [r for r, s in enumerate(self.status) if s == "training"]

    def diverge(self, r: int, epoch: int, step: int, where: str, value: float) -> None:
        if self.status[r] != "training":
            return
        self.status[r] = "diverged"
        self.diverged[r] = {"epoch": epoch, "step": step, "where": where, "value": repr(value)}
        self.opt.active[r] = False

    @torch.no_grad()
    def end_epoch(self, epoch: int, values: list[float], step: int) -> None:
        """Update every running replica with its validation value of this epoch."""
        for r in self.running():
            v = values[r]
            self.epochs[r] = epoch
            if not math.isfinite(v):
                self.diverge(r, epoch, step, "valid", v)
                continue
            if v < self.best[r]:
                self.best[r], self.best_epoch[r] = v, epoch
                self.bad[r] = self.plateau[r] = 0
                for n, p in self.model.named_parameters():
                    self.snapshot[n][r].copy_(p[r])
                continue
            self.bad[r] += 1
            self.plateau[r] += 1
            if self.plateau[r] >= self.patience:
                self.opt.lr[r] *= self.factor
                self.plateau[r] = 0
            if self.bad[r] >= self.early_stop:
                self.status[r] = "early-stop"
                self.opt.active[r] = False

    @torch.no_grad()
    def finish(self) -> None:
        """Stop the rest (max epochs) and put every replica's best weights back."""
        for r in self.running():
            self.status[r] = "max-epochs"
            self.opt.active[r] = False
        for n, p in self.model.named_parameters():
            p.copy_(self.snapshot[n])


def _per_replica_counts(model, masks: dict[str, torch.Tensor]) -> tuple[int, list[int]]:
    total, trainable = 0, None
    for n, p in model.named_parameters():
        size = p[0].numel()
        total += size
        m = masks.get(n, torch.ones(p.shape[0], dtype=torch.bool))
        add = [size * int(x) for x in m.tolist()]
        trainable = add if trainable is None else [a + b for a, b in zip(trainable, add)]
    return total, trainable


def check_group(configs: list[dict], shared: tuple[str, ...]) -> dict:
    if not configs:
        raise ValueError("empty group")
    first = configs[0]
    for c in configs[1:]:
        for k in shared:
            if c.get(k) != first.get(k):
                raise ValueError(f"runs of one group must share {k!r}: {first.get(k)!r} != {c.get(k)!r}")
    return first


def train_formal(configs: list[dict], *, build: Callable | None = None, device=None, progress: bool = False,
                 desc: str | None = None, threads: int | None = None) -> list[dict]:
    """Train a group of formal-language runs as one replica-batched model.

    ``configs`` come from :func:`marnn.train.formal_config` and must share
    task, model, scale and data seed (freeze mode and seed may differ).
    ``build(name, task=..., replicas=R, seeds=[...], device=...)`` defaults to
    :func:`marnn.models.build`. Returns one record per config, in order
    (see :mod:`marnn.store` for the schema).
    """
    from ..tasks import get as get_task
    from ..tasks.data import make_task_data

    first = check_group(configs, ("kind", "task", "model", "scale", "scale_fields", "data_seed", "protocol"))
    torch.use_deterministic_algorithms(True)
    set_threads(threads)
    device = torch.device(device) if device is not None else default_device()
    build = build or _build_default
    t0 = time.perf_counter()

    task = get_task(first["task"])
    scale = scale_from_config(first)
    data = make_task_data(task, scale, first["data_seed"])
    R = len(configs)
    seeds = [c["seed"] for c in configs]
    modes = [c["freeze"] for c in configs]
    hps = [hyperparameters(s, scale.lr_range) for s in seeds]

    model = build(first["model"], task=task.name, replicas=R, seeds=seeds, device=device)
    masks = {n: m.to(device) for n, m in model.freeze_masks(modes).items()}
    opt = BatchedAdam(model.named_parameters(), lr=[h["lr"] for h in hps], clip=scale.clip, masks=masks)
    tracker = Tracker(model, opt, scale.early_stop, scale.lr_patience, scale.lr_decay)
    train_bound = task.lower_bound(*scale.train_lengths)
    total_params, trainable = _per_replica_counts(model, masks)

    def to_dev(b):
        return b.inputs.to(device), b.targets.to(device)

    curves: list[list[dict]] = [[] for _ in range(R)]
    step = 0
    bar = tqdm(range(1, scale.max_epochs + 1), desc=desc or f"{task.name}/{first['model']} x{R}",
               disable=progress_disabled(progress), leave=False)
    for epoch in bar:
        running = tracker.running()
        if not running:
            break
        lrs = opt.lr.tolist()
        t_epoch = time.perf_counter()
        tr_nll = torch.zeros(R, dtype=torch.float64)
        tr_sym = 0
        model.train()
        for i in epoch_order(first["data_seed"], epoch, len(data.train)):
            x, y = to_dev(data.train[i])
            B = x.shape[0]
            out = model(x)
            nll, _ = token_stats(out.logits, y)  # (R, B, n+1)
            loss = nll.sum((1, 2)) / B  # (R,) summed over symbols, averaged over the batch
            finite = torch.isfinite(loss)
            live = opt.active & finite
            opt.zero_grad()
            torch.where(live, loss, torch.zeros((), device=loss.device)).sum().backward()
            norms = opt.mask_and_clip()
            bad = opt.active & ~(finite & torch.isfinite(norms).to(finite.device))
            for r in torch.nonzero(bad).flatten().tolist():
                value = float(loss[r].detach()) if not bool(finite[r]) else float(norms[r])
                tracker.diverge(r, epoch, step, "train-loss" if not bool(finite[r]) else "train-grad", value)
            opt.step()
            tr_nll += torch.where(finite, nll.detach().double().sum((1, 2)), torch.full_like(loss, math.nan, dtype=torch.float64)).cpu()
            tr_sym += y.numel()
            step += 1
        model.eval()
        v = split_metrics(model, [type(b)(b.length, *to_dev(b)) for b in data.valid])
        v_ce = (v["nll"] / v["symbols"]).tolist()
        v_acc = (v["correct"] / v["symbols"]).tolist()
        for r in running:
            ce = v_ce[r]
            curves[r].append({
                "epoch": epoch,
                "lr": lrs[r],
                "train_cross_entropy": _num(float(tr_nll[r]) / tr_sym),
                "valid_cross_entropy": _num(ce),
                "valid_ce_diff": _num(ce - train_bound),
                "valid_accuracy": v_acc[r],
                "seconds": round(time.perf_counter() - t_epoch, 3),
            })
        tracker.end_epoch(epoch, v_ce, step)
        if progress:
            finite_best = [b for b in tracker.best if math.isfinite(b)]
            bar.set_postfix(running=len(tracker.running()),
                            best_diff=f"{min(finite_best) - train_bound:.3f}" if finite_best else "nan")
    bar.close()
    tracker.finish()
    model.eval()

    ranges = dict(zip(scale.bin_names, scale.test_bins))
    test = {name: [type(b)(b.length, *to_dev(b)) for b in batches] for name, batches in data.test.items()}
    metrics = evaluate_bins(model, task, test, ranges)
    wall = time.perf_counter() - t0
    env = environment(device)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = []
    for r, cfg in enumerate(configs):
        best = tracker.best[r]
        records.append({
            "config": cfg,
            "seed": cfg["seed"],
            "lr": hps[r]["lr"],
            "final_lr": float(opt.lr[r]),
            "clip": scale.clip,
            "status": tracker.status[r],
            "diverged": tracker.diverged[r],
            "epochs": tracker.epochs[r],
            "best_epoch": tracker.best_epoch[r],
            "steps": int(opt.steps[r]),
            "valid": {
                "cross_entropy": _num(best),
                "lower_bound": train_bound,
                "ce_diff": _num(best - train_bound),
                "perplexity": _num(math.exp(best)) if math.isfinite(best) else None,
                "accuracy": _best_valid_acc(curves[r], tracker.best_epoch[r]),
            },
            "bins": metrics[r]["bins"],
            "lengths": metrics[r]["lengths"],
            "curve": curves[r],
            "num_parameters": total_params,
            "trainable_parameters": trainable[r],
            "group": {"replicas": R, "wall_time_s": round(wall, 3), "members": [f"{c['freeze']}/s{c['seed']}" for c in configs]},
            "wall_time_s": round(wall / R, 3),
            "env": env,
            "created": created,
        })
    return records


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _best_valid_acc(curve: list[dict], best_epoch: int | None) -> float | None:
    for row in curve:
        if row["epoch"] == best_epoch:
            return row["valid_accuracy"]
    return None
