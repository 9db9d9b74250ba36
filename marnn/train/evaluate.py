"""Evaluation: per-symbol accuracy, cross-entropy and perplexity, per length and per bin.

Every function takes a replica-batched model and returns one value per replica.
Conventions (docs: book/reference/training.md, "Formal languages"):

* a *symbol* is every predicted position, EOS included: a string of length
  ``n`` has ``n + 1`` predictions;
* ``accuracy`` = fraction of symbols whose argmax prediction equals the target;
* ``cross_entropy`` = mean negative log-likelihood per symbol (nats);
  ``perplexity = exp(cross_entropy)``;
* ``ce_diff`` = ``cross_entropy - lower_bound``, the gap to the true
  distribution of the split (:meth:`marnn.tasks.Task.lower_bound`).

Per-length lower bound: a string of length ``n`` in a bin with ``N`` valid
lengths has ``-log p(s) = log N + k log 2`` under the bin's distribution, so
its per-symbol bound is that over ``n + 1``; the symbol-weighted mean over a
bin with the same number of strings per length is the bin's bound.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

from ..kernels.loss import token_nll
from ..tasks import Task
from ..tasks import get as get_task
from ..tasks.data import Batch


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and correctness for every replica.

    ``logits``: ``(R, B, T, V)``; ``targets``: ``(B, T)`` shared or ``(R, B, T)``.
    Returns ``nll`` ``(R, B, T)`` float and ``correct`` ``(R, B, T)`` bool. ``nll``
    is :func:`marnn.kernels.loss.token_nll` (the trainers call it alone: the
    argmax over a 10,001-word vocabulary costs 6-8% of a PTB step), equal to
    ``F.cross_entropy(..., reduction="none")`` bit for bit.
    """
    R, B, T, V = logits.shape
    tgt = targets.expand(R, B, T) if targets.dim() == 2 else targets
    return token_nll(logits, tgt), logits.argmax(-1) == tgt


def model_nll(model, x: torch.Tensor, targets: torch.Tensor, state=None) -> tuple[torch.Tensor, Any]:
    """Per-token NLL ``(R, B, T)`` of ``targets`` and the model's new state: ``model.nll``
    where the model has one (:meth:`marnn.models.stack_rnn.StackRNN.nll`: for PTB the
    classifier and the loss fused replica by replica, no (R, B, T, V) logits), else
    :func:`token_nll` of ``model(x, state=state).logits``. Same numbers either way."""
    nll = getattr(model, "nll", None)
    if callable(nll):
        return nll(x, targets, state=state)
    out = model(x, state=state)
    return token_nll(out.logits, targets), out.state


@torch.no_grad()
def split_metrics(model, batches: list[Batch]) -> dict[str, Any]:
    """Summed NLL, correct count and symbol count per replica over some batches.

    Returns tensors of shape ``(R,)``: ``nll`` (float64), ``correct``, ``symbols``.
    """
    nll_sum: torch.Tensor | None = None
    correct_sum: torch.Tensor | None = None
    symbols = 0
    for b in batches:
        out = model(b.inputs)
        nll, correct = token_stats(out.logits, b.targets)
        s_nll, s_cor = nll.double().sum((1, 2)), correct.sum((1, 2)).double()
        nll_sum = s_nll if nll_sum is None else nll_sum + s_nll
        correct_sum = s_cor if correct_sum is None else correct_sum + s_cor
        symbols += b.targets.numel()
    return {"nll": nll_sum, "correct": correct_sum, "symbols": symbols}


@lru_cache(maxsize=256)
def bin_references(task_name: str, lo: int, hi: int) -> dict:
    """Lower bound, accuracy ceiling and trivial baselines of one bin (same for every run)."""
    task = get_task(task_name)
    ceiling = task.accuracy_ceiling(lo, hi)
    base = task.baselines(lo, hi)
    refs = {
        "lower_bound": task.lower_bound(lo, hi),
        "ceiling_accuracy": ceiling.accuracy,
        "ceiling_exact": bool(ceiling.exact),
    }
    for name, ref in base.items():
        refs[f"{name}_accuracy"] = ref.accuracy
        if not math.isnan(ref.cross_entropy):
            refs[f"{name}_cross_entropy"] = ref.cross_entropy
    return refs


def length_lower_bound(task: Task, lo: int, hi: int, n: int) -> float:
    """Per-symbol lower bound of a length-``n`` string under the ``[lo, hi]`` distribution."""
    count = len(task.valid_lengths(lo, hi))
    return (math.log(count) + task.free_bits(task._check_length(n)) * math.log(2)) / (n + 1)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _summary(nll: float, correct: float, symbols: int, strings: int, bound: float) -> dict:
    ce = nll / symbols
    return {
        "strings": strings,
        "symbols": symbols,
        "accuracy": correct / symbols,
        "cross_entropy": _finite(ce),
        "perplexity": _finite(math.exp(ce)) if math.isfinite(ce) and ce < 700 else None,
        "lower_bound": bound,
        "ce_diff": _finite(ce - bound),
    }


@torch.no_grad()
def evaluate_bins(model, task: Task, bins: dict[str, list[Batch]], ranges: dict[str, tuple[int, int]]) -> list[dict]:
    """Test metrics for every replica: ``[{"bins": {...}, "lengths": [...]}, ...]``.

    ``bins`` maps a bin name to its batches (each batch one length);
    ``ranges`` maps it to its closed length range. Non-finite values (a
    diverged replica) are stored as ``None``.
    """
    per_len: dict[tuple[str, int], list] = {}
    for name, batches in bins.items():
        for b in batches:
            out = model(b.inputs)
            nll, correct = token_stats(out.logits, b.targets)  # (R, B, n+1)
            acc = per_len.setdefault((name, b.length), [0.0, 0.0, 0, 0])
            acc[0] = acc[0] + nll.double().sum((1, 2))
            acc[1] = acc[1] + correct.sum((1, 2)).double()
            acc[2] += b.targets.numel()
            acc[3] += b.size
    R = next(iter(per_len.values()))[0].shape[0] if per_len else 0
    results: list[dict[str, Any]] = [{"bins": {}, "lengths": []} for _ in range(R)]
    for name in bins:
        lo, hi = ranges[name]
        refs = bin_references(task.name, lo, hi)
        keys = sorted(n for (b, n) in per_len if b == name)
        for r in range(R):
            tot = [0.0, 0.0, 0, 0]
            for n in keys:
                nll, cor, sym, strings = per_len[(name, n)]
                row = _summary(float(nll[r]), float(cor[r]), sym, strings, length_lower_bound(task, lo, hi, n))
                results[r]["lengths"].append({"bin": name, "length": n, **row})
                tot[0] += float(nll[r])
                tot[1] += float(cor[r])
                tot[2] += sym
                tot[3] += strings
            if tot[2]:
                summ = _summary(tot[0], tot[1], int(tot[2]), int(tot[3]), refs["lower_bound"])
            else:
                summ = {"strings": 0, "symbols": 0}
            results[r]["bins"][name] = {"lo": lo, "hi": hi, **summ,
                                        **{k: v for k, v in refs.items() if k != "lower_bound"}}
    return results


@torch.no_grad()
def stream_cross_entropy(model, data: torch.Tensor, bptt: int, detach_state) -> torch.Tensor:
    """Mean per-token cross-entropy ``(R,)`` over a batchified token stream ``(B, L)``.

    The state is carried from chunk to chunk (and detached), as in training.
    """
    from ..ptb import chunks

    state = None
    total: torch.Tensor | None = None
    count = 0
    for x, y in chunks(data, bptt):
        nll, state = model_nll(model, x, y, state)
        state = detach_state(state)
        s = nll.double().sum((1, 2))
        total = s if total is None else total + s
        count += y.numel()
    if total is None:
        raise ValueError(f"empty token stream {tuple(data.shape)}: at least two tokens per stream are needed")
    return total / count
