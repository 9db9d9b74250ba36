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
* after every epoch each replica is validated separately (cross-entropy per
  symbol); what follows is shared with PTB (:mod:`marnn.train.loop`): a new
  best snapshots its weights; ``lr_patience`` epochs without improvement
  multiply its lr by ``lr_decay``; ``early_stop`` epochs without improvement
  stop it (masked, then dropped from the live batch); a replica whose loss or
  gradient is not finite, or whose training cross-entropy explodes, is
  *diverged* (:func:`marnn.train.loop.guarded_step`,
  :meth:`marnn.train.loop.Tracker.check_explosion`) while the others train on.

At the end every replica gets its best-validation weights back and is
evaluated on the test bins; one record per replica is returned.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from . import draw_seed, epoch_order, hyperparameters, large_blocks_kept, progress_disabled
from .evaluate import evaluate_bins, split_metrics, token_nll
from .loop import Group, default_build, finite_or_none, guarded_step
from .optim import BatchedAdam, ReplicaOptimizer


@large_blocks_kept()  # no page faults for the step's large temporaries, step after step
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
    replicas from the live batch (see :class:`marnn.train.loop.Tracker`); ``threads``: torch
    intra-op threads. ``return_model``: return ``(records, model)``, the
    model holding every replica's best weights in config order (eval mode).
    ``state_dir``: save the group's state there after every epoch and resume
    from it (:mod:`marnn.train.resume`); ``after_epoch(epoch)`` is called once
    that state is written (tests interrupt a run from it). ``epoch_lines``: one
    line for the group on stderr after every epoch (:mod:`marnn.train.epochlog`).
    """
    from ..tasks import get as get_task
    from ..tasks.data import make_task_data

    group = Group(configs, "formal", device=device, threads=threads, state_dir=state_dir, after_epoch=after_epoch,
                  epoch_lines=epoch_lines)
    first, device, R = group.first, group.device, group.R
    build = build or default_build

    assert first.task is not None  # a formal RunConfig always names its task
    task = get_task(first.task)
    scale = first.scale
    data = make_task_data(task, scale, first.data_seed)
    seeds = [draw_seed(c) for c in configs]  # the restart index unless the scale has independent_draws
    hps = [hyperparameters(s, scale.lr_range) for s in seeds]

    def make_model(reps: list[int]):
        return build(first.model, task=task.name, replicas=len(reps), seeds=[seeds[r] for r in reps], device=device)

    model = make_model(list(range(R)))
    masks = group.freeze_masks(model)
    opt: ReplicaOptimizer = BatchedAdam(model.named_parameters(), lr=[h["lr"] for h in hps], clip=scale.clip,
                                        masks=masks)
    group.track(model, masks, opt, early_stop=scale.early_stop, patience=scale.lr_patience, factor=scale.lr_decay,
                make_model=make_model, compact=compact)
    tracker, curves = group.tracker, group.curves
    train_bound = task.lower_bound(*scale.train_lengths)

    def to_dev(b):
        return b.inputs.to(device), b.targets.to(device)

    bar = tqdm(range(group.start, scale.max_epochs + 1), desc=desc or f"{task.name}/{first.model} x{R}",
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
        for i in epoch_order(first.data_seed, epoch, len(data.train)):
            x, y = to_dev(data.train[i])
            B = x.shape[0]
            out = model(x)
            nll = token_nll(out.logits, y)  # (R_live, B, n+1)
            loss = nll.sum((1, 2)) / B  # (R_live,) summed over symbols, averaged over the batch
            guarded_step(opt, tracker, idx, loss, epoch, group.step)
            tr_nll[live] += nll.detach().double().sum((1, 2)).cpu()
            tr_sym += y.numel()
            group.step += 1
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
                "train_cross_entropy": finite_or_none(float(tr_nll[r]) / tr_sym),
                "valid_cross_entropy": finite_or_none(ce),
                "valid_ce_diff": finite_or_none(ce - train_bound),
                "valid_accuracy": v_acc[pos],
                "seconds": round(time.perf_counter() - t_epoch, 3),
            })
        group.end_epoch(epoch, v_ce, {r: curves[r][-1]["train_cross_entropy"] for r in idx if r in running},
                        len(task.outputs), trained=running, max_epochs=scale.max_epochs, started=t_epoch)
        if progress:
            finite_best = [b for b in tracker.best if math.isfinite(b)]
            bar.set_postfix(running=len(tracker.running()),
                            best_diff=f"{min(finite_best) - train_bound:.3f}" if finite_best else "nan")
    bar.close()
    model = group.finish()

    ranges = dict(zip(scale.bin_names, scale.test_bins, strict=True))
    test = {name: [type(b)(b.length, *to_dev(b)) for b in batches] for name, batches in data.test.items()}
    metrics = evaluate_bins(model, task, test, ranges)
    # the untrained reference of Thm 3.4 (marnn.analysis.stability): every distinct initialisation of the
    # group (one per restart; its freeze modes share it), rebuilt from its seed and tested on the same
    # strings, once here rather than on every build of the page (rns-3-3: O(n^3) per string)
    inits = sorted(set(seeds))
    start = build(first.model, task=task.name, replicas=len(inits), seeds=inits, device=device).eval()
    untrained = dict(zip(inits, (m["lengths"] for m in evaluate_bins(start, task, test, ranges)), strict=True))
    common = group.record_parts()
    records = []
    for r in range(len(configs)):
        best = tracker.best[r]
        records.append(common.record(r, lr=hps[r]["lr"], clip=scale.clip, curve=curves[r], results={
            "valid": {
                "cross_entropy": finite_or_none(best),
                "lower_bound": train_bound,
                "ce_diff": finite_or_none(best - train_bound),
                "perplexity": finite_or_none(math.exp(best)) if math.isfinite(best) and best < 700 else None,
                "accuracy": _best_valid_acc(curves[r], tracker.best_epoch[r]),
            },
            "bins": metrics[r]["bins"],
            "lengths": metrics[r]["lengths"],
            "untrained_lengths": untrained[seeds[r]],
        }))
    return (records, model) if return_model else records


def _best_valid_acc(curve: list[dict], best_epoch: int | None) -> float | None:
    for row in curve:
        if row["epoch"] == best_epoch:
            return row["valid_accuracy"]
    return None
