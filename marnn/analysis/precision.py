r"""Numeric precision: what float32, bfloat16 and float16 do to the stacks and the models.

The paper's title promises a study of precision; the paper runs none. This
module runs three, each returning a tidy :class:`pandas.DataFrame`:

(a) :func:`stack_recall` -- *stack memory against depth and dtype.* A stack is
    driven by hand-set, confident actions: ``d`` pushes, then ``d - 1`` pops,
    the intended action always having probability (weight) ``1 - eps`` and the
    others sharing ``eps`` equally. After the last push and after every pop the
    top should hold the vector (symbol) pushed at that depth; the error is the
    largest absolute deviation from that exact value. Three stacks:

    * ``superposition`` (:func:`marnn.models.superposition.superposition_step`,
      Joulin & Mikolov), one stack of ``m``-vectors; per step
      ``S'[i] = a_push S[i-1] + a_noop S[i] + a_pop S[i+1]``;
    * ``vrns`` (:func:`marnn.models.rns.rns_readings`), a vector RNS with one
      state and one pushable symbol (``Q = 1, S = 2``): the read value is the
      expected top vector ``sum_(q, x) reading[q, x, :]``;
    * ``rns``, an RNS with one state and two pushable symbols (``Q = 1, S = 3``)
      pushing random symbols: the reading is the distribution of the top symbol,
      the exact value its one-hot vector.

    Action probabilities are computed in float64 and rounded to the dtype
    (what a softmax evaluated in that dtype hands to the stack); the pushed
    vectors are uniform in (0, 1) (the range of ``sigmoid``), rounded likewise.

(b) :func:`drift` -- *long-string drift.* A randomly initialised model
    (:func:`marnn.models.build`) run in a low-precision dtype against a float64
    copy of the same weights, on member strings of the task: the largest
    absolute difference of the logits and of the stack readings, and whether
    the argmax prediction agrees, at every position. :func:`path_support` says
    which dtype each forward path (fused kernel / generic loop) runs at all.

(c) :func:`trained_precision` -- *trained models at reduced precision.* The
    replica groups of the grid's own runs (:func:`marnn.analysis.weights.trained_group`)
    evaluated on the fixed test set in every dtype: accuracy per length and the
    agreement of the argmax with float64.

Every random draw comes from a ``torch.Generator`` seeded explicitly. Dtypes
are named as in :data:`DTYPES`; an unknown name raises
:class:`marnn.registry.UnknownNameError` listing the valid ones.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..registry import FORMAL_MODELS, lookup

# ---------------------------------------------------------------------------
# dtypes and per-scale sizes
# ---------------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,  # the reference: unit roundoff 1.1e-16
    "float32": torch.float32,  # what training uses: 6.0e-8
    "bfloat16": torch.bfloat16,  # float32's exponent, 8-bit significand: 3.9e-3
    "float16": torch.float16,  # 11-bit significand, smallest normal 6.1e-5: 4.9e-4
}
REFERENCE = "float64"
LOW = ("float32", "bfloat16", "float16")  # the dtypes compared with the reference
# One colour per dtype in every figure of the chapter (black = the reference).
DTYPE_COLORS: dict[str, str] = {"float64": "black", "float32": "#1f77b4", "bfloat16": "#ff7f0e",
                                "float16": "#d62728"}
STACKS = ("superposition", "vrns", "rns")


def get_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name``; an unknown name lists the valid ones."""
    return lookup("dtype", name, DTYPES)


def unit_roundoff(name: str) -> float:
    """Half the distance from 1 to the next number: the relative rounding error bound."""
    return torch.finfo(get_dtype(name)).eps / 2


def dtype_table() -> pd.DataFrame:
    """Significand bits, unit roundoff, smallest normal and largest value of every dtype."""
    rows = []
    for name, dt in DTYPES.items():
        fi = torch.finfo(dt)
        rows.append({"dtype": name, "significand bits": int(round(-np.log2(fi.eps))) + 1,
                     "unit roundoff": fi.eps / 2, "smallest normal": fi.tiny, "largest": fi.max})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PrecisionSettings:
    """Sizes of the three experiments at one scale (the book's ``scale`` parameter)."""

    depths: tuple[int, ...]  # (a) superposition / VRNS stack depths d
    rns_depths: tuple[int, ...]  # (a) RNS depths (its cost is O(d^3))
    eps: tuple[float, ...] = (0.0, 1e-3, 1e-2, 0.1)  # (a) probability mass off the intended action
    trials: int = 4  # (a) independent random vector / symbol sequences
    vector_size: int = 10  # (a) m, as in jm-10
    tol: float = 1e-2  # (a) error allowed for a depth to count as recovered
    drift_length: int = 400  # (b) longest string (the paper's longest test length)
    rns_drift_length: int = 200  # (b) rns-3-3 costs O(n^3) per string
    drift_batch: int = 4  # (b) strings per model
    drift_models: tuple[str, ...] = FORMAL_MODELS
    trained_models: tuple[str, ...] = ("lstm", "jm-10")  # (c)
    # (c): lengths evaluated per test bin, spread evenly from its shortest to its longest (all the
    # strings of each); None = every length. Each length is a batch of its own, and a bin of the
    # paper's (201-400) has 200 lengths: at 20 replicas x 5 formats, every length of the paper's bins
    # on the generic path takes hours
    trained_lengths_per_bin: int | None = None


SETTINGS: dict[str, PrecisionSettings] = {
    "smoke": PrecisionSettings(depths=(1, 2, 5, 10, 20, 40), rns_depths=(1, 2, 5, 10), trials=2,
                               drift_length=48, rns_drift_length=16, drift_batch=2),
    "quick": PrecisionSettings(depths=(1, 2, 5, 10, 20, 50, 100, 200, 400), rns_depths=(1, 2, 5, 10, 20, 50, 100)),
    # (a) and (b) train nothing: quick's sizes; (c) reads the campaign's kept weights (marnn.coverage)
    "paper-2core": PrecisionSettings(depths=(1, 2, 5, 10, 20, 50, 100, 200, 400),
                                     rns_depths=(1, 2, 5, 10, 20, 50, 100), trained_lengths_per_bin=8),
    "paper": PrecisionSettings(depths=(1, 2, 5, 10, 20, 50, 100, 200, 400),
                               rns_depths=(1, 2, 5, 10, 20, 50, 100, 200), trials=8, rns_drift_length=400,
                               trained_lengths_per_bin=16),
}


def settings(scale: str) -> PrecisionSettings:
    """The experiment sizes of ``scale`` (smoke, quick, paper-2core or paper)."""
    return lookup("scale", getattr(scale, "name", scale), SETTINGS)


def _check_dtypes(dtypes: Iterable[str]) -> list[str]:
    names = list(dtypes)
    for n in names:
        get_dtype(n)
    return names


def _with_reference(dtypes: Iterable[str]) -> list[str]:
    """``dtypes`` with float64 first (every error is measured against it)."""
    names = _check_dtypes(dtypes)
    return [REFERENCE] + [n for n in names if n != REFERENCE]


# ---------------------------------------------------------------------------
# (a) stack memory against depth
# ---------------------------------------------------------------------------

def _confident(eps: torch.Tensor, options: int, intended: int) -> torch.Tensor:
    """(E, options) float64 probabilities: ``1 - eps`` on ``intended``, ``eps`` shared by the rest."""
    p = (eps / (options - 1))[:, None].expand(-1, options).clone()
    p[:, intended] = 1 - eps
    return p


def _superposition_tops(vectors: torch.Tensor, eps: torch.Tensor, d: int, dtype) -> torch.Tensor:
    """Tops of a superposition stack after ``d`` pushes and each of ``d - 1`` pops.

    ``vectors``: (E*trials, 2d - 1, m) float64, pushed (with weight ``a_push``) at
    every update; rows are ordered eps-major. Returns (N, d, m) float64.
    """
    from ..models.superposition import ACTIONS, superposition_step

    N, U, m = vectors.shape
    reps = N // len(eps)
    push = _confident(eps, 3, ACTIONS.index("push")).repeat_interleave(reps, 0)  # (N, 3)
    pop = _confident(eps, 3, ACTIONS.index("pop")).repeat_interleave(reps, 0)
    push, pop = push.to(dtype).unsqueeze(1), pop.to(dtype).unsqueeze(1)  # (N, k=1, 3)
    v = vectors.to(dtype)
    stack = v.new_zeros(N, 0, m)  # (N, L, m), empty
    tops = []
    for u in range(1, U + 1):
        # cells deeper than the number of updates left can never return to the top (exact pruning)
        height = min(u, U - u + 1)
        stack = superposition_step(stack, push if u <= d else pop, v[:, u - 1], (m,), height)
        if u >= d:
            tops.append(stack[:, 0])
    return torch.stack(tops, 1).double()


def _rns_tops(eps: torch.Tensor, d: int, dtype, *, symbols: torch.Tensor | None = None,
              vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Readings of a one-state (V)RNS after ``d`` pushes and each of ``d - 1`` pops.

    RNS: ``symbols`` (N, 2d - 1) in {1, 2} (S = 3), reading = P(top symbol), (N, d, 3).
    VRNS: ``vectors`` (N, 2d - 1, m) (S = 2, always pushes symbol 1, bottom vector
    0), reading = expected top vector, (N, d, m). Float64 out.
    """
    from ..models.rns import rns_readings

    vrns = vectors is not None
    given = vectors if vectors is not None else symbols
    if given is None:
        raise ValueError("pass symbols= (RNS) or vectors= (VRNS)")
    N, U = given.shape[:2]
    reps = N // len(eps)
    Q, S = 1, (2 if vrns else 3)
    K = Q * S
    options = 2 * K + Q  # per (state, top): push (r, y) | replace (r, y) | pop r
    e = eps.repeat_interleave(reps, 0)  # (N,)
    other = (e / (options - 1)).view(N, 1, 1, 1, 1, 1)
    push = other.expand(N, U, Q, S, Q, S).clone()
    repl = other.expand(N, U, Q, S, Q, S).clone()
    pop = other[..., 0].expand(N, U, Q, S, Q).clone()
    top = torch.ones(N, U, dtype=torch.long) if vrns else given  # symbol pushed at a push step
    for u in range(d):  # push steps: push (state 0, symbol top[u]) from every configuration
        push[torch.arange(N), u, :, :, 0, top[:, u]] = (1 - e)[:, None, None]
    pop[:, d:, :, :, 0] = (1 - e).view(N, 1, 1, 1)  # pop steps
    kw = {}
    if vectors is not None:  # bottom vector 0, like the empty cells of the superposition stack
        kw = dict(pushed=vectors.to(dtype), bottom=torch.zeros(N, vectors.shape[-1], dtype=dtype))
    with torch.no_grad():
        r = rns_readings(push.to(dtype), repl.to(dtype), pop.to(dtype), **kw)  # (N, U + 1, K[*m])
    r = r[:, d:].double()  # readings after update d .. U
    if vrns:
        return r.view(N, d, K, -1).sum(2)  # expected top vector
    return r


def _exact_tops(values: torch.Tensor, d: int) -> torch.Tensor:
    """What a hard stack shows after the last push and each pop: value d-1, d-2, ..., 0."""
    return values[:, :d].flip(1)


def stack_recall(depths: Sequence[int], eps: Sequence[float] = (0.0, 1e-3, 1e-2, 0.1),
                 dtypes: Sequence[str] = tuple(DTYPES), stacks: Sequence[str] = STACKS, *,
                 m: int = 10, trials: int = 4, seed: int = 0) -> pd.DataFrame:
    """Experiment (a): error of what comes back from a stack, per (stack, depth, eps, dtype).

    For every depth ``d``: push ``d`` random values, pop ``d - 1`` times and read
    the top after the last push and after every pop (``d`` readings; exactly,
    they are the values pushed ``d, d-1, ..., 1``). Columns:

    * ``error``: max |reading - exact value| over the ``d`` readings, the
      components and the ``trials`` random sequences;
    * ``rounding``: the same against the float64 run with the same ``eps``
      (the part of the error that precision alone causes);
    * ``deepest``: ``error`` of the last reading only (the value pushed first).

    Values: uniform (0, 1) vectors of size ``m`` (superposition, vrns) or
    uniform symbols in {1, 2} (rns), from ``torch.Generator(seed)``; the same
    sequence for every eps and dtype.
    """
    names = _with_reference(dtypes)
    for s in stacks:
        lookup("stack", s, dict.fromkeys(STACKS))
    if any(int(d) < 1 for d in depths):
        raise ValueError(f"depths must be >= 1, got {list(depths)}")
    if any(not 0 <= e < 1 for e in eps):
        raise ValueError(f"eps must lie in [0, 1), got {list(eps)}")
    E = torch.tensor(list(eps), dtype=torch.float64)
    dmax = max(depths)
    gen = torch.Generator().manual_seed(seed)
    vecs = torch.rand(trials, 2 * dmax - 1, m, generator=gen, dtype=torch.float64)  # (trials, U, m)
    syms = torch.randint(1, 3, (trials, 2 * dmax - 1), generator=gen)  # (trials, U)
    rows = []
    for stack in stacks:
        for d in depths:
            U = 2 * d - 1
            if stack == "rns":
                values = torch.nn.functional.one_hot(syms[:, :d], 3).double()  # (trials, d, 3)
                inputs = dict(symbols=syms[:, :U].repeat(len(E), 1))
            else:
                values = vecs[:, :d]
                inputs = dict(vectors=vecs[:, :U].repeat(len(E), 1, 1))
            exact = _exact_tops(values, d).repeat(len(E), 1, 1)  # (N, d, width)
            ref = None
            for name in names:
                dt = get_dtype(name)
                if stack == "superposition":
                    tops = _superposition_tops(inputs["vectors"], E, d, dt)
                else:
                    tops = _rns_tops(E, d, dt, **inputs)
                if ref is None:
                    ref = tops
                err = (tops - exact).abs().view(len(E), trials, d, -1)
                rnd = (tops - ref).abs().view(len(E), trials, d, -1)
                for i, e in enumerate(eps):
                    rows.append({"stack": stack, "depth": int(d), "eps": float(e), "dtype": name,
                                 "error": float(err[i].max()), "rounding": float(rnd[i].max()),
                                 "deepest": float(err[i, :, -1].max()),
                                 "finite": bool(torch.isfinite(tops).all())})
    return pd.DataFrame(rows)


def recoverable_depth(frame: pd.DataFrame, tol: float, column: str = "error") -> pd.DataFrame:
    """Largest depth ``d`` of the grid such that every depth up to ``d`` has ``column <= tol``.

    One row per (stack, eps, dtype) of a :func:`stack_recall` frame; 0 when even
    depth 1 fails. ``all_tested`` says whether every depth of the grid passed
    (then the true limit is at least the largest depth tried).
    """
    rows = []
    for (stack, eps, dtype), part in frame.groupby(["stack", "eps", "dtype"], sort=False):
        part = part.sort_values("depth")
        ok = (part[column] <= tol).to_numpy()
        fail = np.flatnonzero(~ok)
        good = part["depth"].to_numpy()[: fail[0] if len(fail) else len(ok)]
        rows.append({"stack": stack, "eps": eps, "dtype": dtype,
                     "depth": int(good[-1]) if len(good) else 0, "all_tested": not len(fail)})
    return pd.DataFrame(rows)


def depth_table(frame: pd.DataFrame, tol: float, column: str = "error") -> pd.DataFrame:
    """:func:`recoverable_depth` as a table: rows (stack, eps), columns dtypes; ``>=d`` where nothing failed."""
    rec = recoverable_depth(frame, tol, column)
    rec["shown"] = [f">={d}" if a else str(d) for d, a in zip(rec["depth"], rec["all_tested"], strict=True)]
    order = [n for n in DTYPES if n in set(rec["dtype"])]
    stacks = [s for s in STACKS if s in set(rec["stack"])] + sorted(set(rec["stack"]) - set(STACKS))
    table = rec.pivot(index=["stack", "eps"], columns="dtype", values="shown")[order]
    return table.reindex(sorted(table.index, key=lambda k: (stacks.index(k[0]), k[1])))


def rounding_growth(frame: pd.DataFrame) -> pd.DataFrame:
    """Exponent ``b`` of ``rounding ~ depth^b``: least-squares slope of log rounding on log depth,
    per (stack, eps, dtype) of a :func:`stack_recall` frame (depths with zero rounding left out)."""
    rows = []
    for (stack, eps, dtype), part in frame[frame["dtype"] != REFERENCE].groupby(["stack", "eps", "dtype"],
                                                                                  sort=False):
        part = part[part["rounding"] > 0]
        slope = np.polyfit(np.log(part["depth"]), np.log(part["rounding"]), 1)[0] if len(part) > 1 else np.nan
        rows.append({"stack": stack, "eps": eps, "dtype": dtype, "exponent": float(slope)})
    return pd.DataFrame(rows)


def decay_bound(depth: int, eps: float) -> float:
    """Weight of the intended path, ``(1 - eps)^(2d - 1)``: the share of the deepest value that
    a superposition stack returns undiluted after ``d`` pushes and ``d - 1`` pops."""
    return (1 - eps) ** (2 * depth - 1)


def action_mass(eps: float, dtype: str) -> float:
    """Sum of the three rounded action probabilities (1 - eps, eps/2, eps/2) in ``dtype``.

    Not 1 in a low-precision dtype: the superposition stack is then scaled by
    this factor at every step, so its content drifts geometrically.
    """
    p = _confident(torch.tensor([eps], dtype=torch.float64), 3, 0).to(get_dtype(dtype)).double()
    return float(p.sum())


# ---------------------------------------------------------------------------
# (b) long-string drift of random-weight models
# ---------------------------------------------------------------------------

def member_strings(task, length: int, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, n) input indices of member strings of ``task``; ``n`` = the longest valid length
    <= ``length``; the free bits come from ``torch.Generator(seed)``."""
    from ..tasks import get as get_task
    from ..tasks.data import encode

    task = get_task(task) if isinstance(task, str) else task
    valid = task.valid_lengths(1, length)
    if not valid:
        raise ValueError(f"{task.name}: no valid length <= {length}")
    n = valid[-1]
    k = task.k_of(n)
    bits = torch.randint(0, 2, (batch, task.free_bits(k)), generator=torch.Generator().manual_seed(seed))
    return encode(task, [task.fill(k, row.tolist()) for row in bits]).inputs


@torch.no_grad()
def _run(model, x: torch.Tensor, stack: bool):
    out = model(x, return_stack=stack and model.core is not None)
    reads = None if out.stack is None else out.stack["readings"].double()  # (R, B, T, reading)
    return out.logits.double(), reads


def drift(models: Sequence[str], task: str, length: int, dtypes: Sequence[str] = LOW, *,
          batch: int = 4, seed: int = 0, max_length: dict | None = None) -> pd.DataFrame:
    """Experiment (b): a random-weight model in ``dtype`` against its float64 copy, per position.

    Each model is built with :func:`marnn.models.build` (replica seed ``seed``,
    ``fused=False`` so that every dtype takes the same generic per-step path)
    and cast with ``.to(dtype)``; the float64 copy has the same weights (they
    are drawn in float32). Inputs: ``batch`` member strings of length about
    ``length`` (``max_length[model]`` overrides it per model). Rows per (model,
    dtype, position ``p`` = 0 .. n, where ``p`` predicts symbol ``p + 1``):

    * ``logit_diff``: max |logits - logits_float64| over strings and symbols;
    * ``reading_diff``: max |stack reading - float64 reading| of the reading that
      fed position ``p`` (NaN for the LSTM and at ``p = 0``);
    * ``agree``: fraction of strings whose argmax equals float64's;
    * ``margin``: smallest gap between the two largest float64 logits over the
      strings (how close the reference prediction is to a tie).
    """
    from .. import models as model_registry

    names = _check_dtypes(dtypes)
    rows = []
    for name in models:
        n = (max_length or {}).get(name, length)
        x = member_strings(task, n, batch, seed)
        base = model_registry.build(name, task=task, replicas=1, seeds=[seed], fused=False)
        ref_logits, ref_reads = _run(copy.deepcopy(base).to(torch.float64), x, True)
        ref_arg = ref_logits.argmax(-1)
        top2 = ref_logits.topk(2, dim=-1).values  # (R, B, T + 1, 2)
        margin = (top2[..., 0] - top2[..., 1]).amin(dim=(0, 1))  # (T + 1,)
        for dname in names:
            logits, reads = _run(copy.deepcopy(base).to(get_dtype(dname)), x, True)
            ld = (logits - ref_logits).abs().amax(dim=(0, 1, 3))  # (T + 1,)
            agree = (logits.argmax(-1) == ref_arg).double().mean(dim=(0, 1))
            rd = torch.full_like(ld, float("nan"))
            if reads is not None:
                rd[1:] = (reads - ref_reads).abs().amax(dim=(0, 1, 3))
            for p in range(ld.shape[0]):
                rows.append({"model": name, "dtype": dname, "position": p, "logit_diff": float(ld[p]),
                             "reading_diff": float(rd[p]), "agree": float(agree[p]),
                             "margin": float(margin[p])})
    return pd.DataFrame(rows)


def drift_summary(frame: pd.DataFrame, upto: Sequence[int]) -> pd.DataFrame:
    """Per (model, dtype) and prefix length ``L`` in ``upto``: the largest logit and reading
    differences over positions <= L, and the fraction of (string, position) argmaxes
    that agree with float64. A prefix longer than a model's strings is cut to their length ``n``
    (so the last row of every model is its whole string)."""
    rows = []
    for (model, dtype), part in frame.groupby(["model", "dtype"], sort=False):
        n = int(part["position"].max())
        for L in sorted({min(int(L), n) for L in upto}):
            pre = part[part["position"] <= L]
            rows.append({"model": model, "dtype": dtype, "length": int(L), "logit_diff": pre["logit_diff"].max(),
                         "reading_diff": pre["reading_diff"].max(), "agree": pre["agree"].mean()})
    return pd.DataFrame(rows)


def path_support(models: Sequence[str], task: str, dtypes: Sequence[str] = tuple(DTYPES), *,
                 length: int = 20, batch: int = 2, seed: int = 0) -> pd.DataFrame:
    """Which dtype each forward path runs in, and how far its logits are from the generic float64 ones.

    For every model with a fused kernel (``StackRNN.uses_fused_kernel``) and every
    dtype: ``path`` "fused" (the hand-written kernel) or "generic" (torch per-step
    loop); ``runs``; ``error`` (exception type and message when it does not
    run); ``logit_diff`` against the generic path in float64.
    """
    from .. import models as model_registry

    names = _check_dtypes(dtypes)
    rows = []
    for name in models:
        x = member_strings(task, length, batch, seed)
        fused = model_registry.build(name, task=task, replicas=1, seeds=[seed])
        if not fused.uses_fused_kernel:
            continue
        generic = model_registry.build(name, task=task, replicas=1, seeds=[seed], fused=False)
        ref, _ = _run(copy.deepcopy(generic).to(torch.float64), x, False)
        for path, base in (("fused", fused), ("generic", generic)):
            for dname in names:
                try:
                    logits, _ = _run(copy.deepcopy(base).to(get_dtype(dname)), x, False)
                except (TypeError, RuntimeError) as err:
                    rows.append({"model": name, "path": path, "dtype": dname, "runs": False,
                                 "error": f"{type(err).__name__}: {str(err).splitlines()[0]}",
                                 "logit_diff": float("nan")})
                    continue
                rows.append({"model": name, "path": path, "dtype": dname, "runs": True, "error": "",
                             "logit_diff": float((logits - ref).abs().max())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# (c) trained models at reduced precision
# ---------------------------------------------------------------------------

def best_seeds(records: list[dict]) -> dict[str, int]:
    """Per freeze mode, the seed of the best restart (:func:`marnn.store.best_records`)."""
    from ..store import best_records

    return {mode: rec["config"]["seed"] for (mode,), rec in best_records(records, ("freeze",)).items()}


def spread_lengths(batches: list, k: int | None) -> list:
    """The batches of ``k`` of the lengths in ``batches`` (a test bin), spread evenly from the shortest to
    the longest, both included; every batch of a chosen length is kept. ``k`` None or at least the
    number of lengths: all of them."""
    lengths = sorted({b.length for b in batches})
    if k is None or k >= len(lengths):
        return list(batches)
    if k < 1:
        raise ValueError(f"trained_lengths_per_bin must be at least 1 (or None for every length), got {k}")
    pick = {lengths[round(i * (len(lengths) - 1) / (k - 1))] for i in range(k)} if k > 1 else {lengths[-1]}
    return [b for b in batches if b.length in pick]


def trained_precision(task: str, models: Sequence[str], scale: str, dtypes: Sequence[str] = tuple(DTYPES), *,
                      root=None, threads: int | None = None) -> pd.DataFrame:
    """Experiment (c): test metrics of trained replica groups in every dtype, per length.

    Groups come from :func:`marnn.analysis.weights.trained_group` (the
    weights the grid kept beside its records: every freeze mode and restart of
    the scale); the test set is the fixed one of the scale
    (``make_task_data(task, scale, 0).test``, drawn from the evaluation seed).
    Where the scale's :class:`PrecisionSettings` sets ``trained_lengths_per_bin``, only that many
    lengths of each bin (:func:`spread_lengths`, all strings of each) are evaluated.
    Rows per (model, freeze, seed, dtype, bin, length): ``accuracy``,
    ``cross_entropy`` (nats per symbol, computed in float64 from the logits),
    ``agree`` (fraction of symbols whose argmax equals float64's), ``logit_diff``
    (max |logits - float64 logits|), ``logit_scale`` (max |float64 logits|),
    ``symbols``, ``best`` (best restart of its mode), ``recorded`` (the accuracy
    the training record holds for that length: float32 on the fused path; a
    check that the rebuilt model is the trained one).
    """
    from ..tasks.data import make_task_data
    from .weights import trained_group

    names = _with_reference(dtypes)
    bins = make_task_data(task, scale, 0).test  # the fixed test set (EVAL_SEED); the data seed does not enter it
    bins = {k: spread_lengths(v, settings(scale).trained_lengths_per_bin) for k, v in bins.items()}
    rows = []
    for name in models:
        group = trained_group(task, name, scale, root=root, threads=threads)
        base = group.model.with_config(fused=False)  # every dtype takes the same generic path
        best = best_seeds(group.records)
        recorded = {(r["config"]["freeze"], r["config"]["seed"], row["bin"], row["length"]): row["accuracy"]
                    for r in group.records for row in r.get("lengths", [])}
        copies = {d: copy.deepcopy(base).to(get_dtype(d)) for d in names}
        for bin_name, batches in bins.items():
            for b in batches:
                ref = None
                for d in names:
                    with torch.no_grad():
                        logits = copies[d](b.inputs).logits.double()  # (R, B, n + 1, V)
                    R = logits.shape[0]
                    tgt = b.targets.expand(R, *b.targets.shape)
                    nll = -torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                    pred = logits.argmax(-1)
                    if ref is None:
                        ref = (logits, pred)
                    correct = (pred == tgt).double().sum((1, 2))
                    agree = (pred == ref[1]).double().sum((1, 2))
                    diff = (logits - ref[0]).abs().amax(dim=(1, 2, 3))
                    scale_ = ref[0].abs().amax(dim=(1, 2, 3))  # size of the float64 logits
                    for r, cfg in enumerate(group.configs):
                        rows.append({"model": name, "freeze": cfg["freeze"], "seed": cfg["seed"], "dtype": d,
                                     "bin": bin_name, "length": b.length, "symbols": b.targets.numel(),
                                     "correct": float(correct[r]), "agreeing": float(agree[r]),
                                     "nll": float(nll[r].sum()), "logit_diff": float(diff[r]),
                                     "logit_scale": float(scale_[r]),
                                     "best": best.get(cfg["freeze"]) == cfg["seed"],
                                     "recorded": recorded.get((cfg["freeze"], cfg["seed"], bin_name, b.length),
                                                              np.nan)})
    frame = pd.DataFrame(rows)
    keys = ["model", "freeze", "seed", "dtype", "bin", "length"]
    out = frame.groupby(keys, sort=False).agg(
        symbols=("symbols", "sum"), correct=("correct", "sum"), agreeing=("agreeing", "sum"), nll=("nll", "sum"),
        logit_diff=("logit_diff", "max"), logit_scale=("logit_scale", "max"), best=("best", "first"),
        recorded=("recorded", "first")).reset_index()
    out["accuracy"] = out["correct"] / out["symbols"]
    out["agree"] = out["agreeing"] / out["symbols"]
    out["cross_entropy"] = out["nll"] / out["symbols"]
    return out[keys + ["accuracy", "cross_entropy", "agree", "logit_diff", "logit_scale", "symbols", "best",
                       "recorded"]]


def bin_changes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, freeze, seed, dtype, bin) of a :func:`trained_precision` frame: symbols, correct and agreeing
    predictions, ``accuracy``, ``change`` (accuracy minus the float64 accuracy of the same replica and bin),
    largest ``logit_diff``, ``best``."""
    keys = ["model", "freeze", "seed", "dtype", "bin"]
    w = frame.assign(correct=frame["accuracy"] * frame["symbols"], agreeing=frame["agree"] * frame["symbols"])
    per_bin = w.groupby(keys, sort=False).agg(correct=("correct", "sum"), agreeing=("agreeing", "sum"),
                                              symbols=("symbols", "sum"), logit_diff=("logit_diff", "max"),
                                              best=("best", "first")).reset_index()
    per_bin["accuracy"] = per_bin["correct"] / per_bin["symbols"]
    ref = per_bin[per_bin["dtype"] == REFERENCE].set_index(["model", "freeze", "seed", "bin"])["accuracy"]
    per_bin["change"] = per_bin["accuracy"].to_numpy() - ref.reindex(
        pd.MultiIndex.from_frame(per_bin[["model", "freeze", "seed", "bin"]])).to_numpy()
    return per_bin


def trained_summary(frame: pd.DataFrame, by: Sequence[str] = ("model", "dtype", "bin")) -> pd.DataFrame:
    """Per ``by``, over every replica: symbol-weighted accuracy of the best restarts
    (``best_accuracy``), mean and largest change of a replica's bin accuracy against
    float64 (``mean_change``, ``max_change``), share of argmaxes that agree with float64
    (``agree``), largest logit difference (``logit_diff``). Descriptive: no verdict."""
    per_bin = bin_changes(frame)
    rows = []
    for key, part in per_bin.groupby(list(by), sort=False):
        bestp = part[part["best"]]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({"best_accuracy": bestp["correct"].sum() / bestp["symbols"].sum() if len(bestp) else np.nan,
                    "mean_change": part["change"].mean(), "max_change": part["change"].abs().max(),
                    "agree": part["agreeing"].sum() / part["symbols"].sum(), "logit_diff": part["logit_diff"].max()})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# the numbers the book's page quotes
# ---------------------------------------------------------------------------

FORMAT_COLUMNS = ["dtype", "measure", "decided by", "cells", "restarts", "mean", "lo", "hi", "verdict", "note"]


def _with_every_dtype(rows: list[dict], worst) -> pd.DataFrame:
    """The per-dtype claims ``rows`` and a last row ``all``: holds only if every dtype holds, does
    not hold if one does not; ``worst`` (max or min) picks the mean it shows."""
    from .. import verdicts

    said = {r["verdict"] for r in rows}
    word = (verdicts.HOLDS if said == {verdicts.HOLDS} else verdicts.FAILS if verdicts.FAILS in said else
            verdicts.UNSURE)
    restarts = max((r["restarts"] for r in rows), default=0)
    rows = rows + [{"dtype": "all", "measure": "every low dtype", "decided by": "every dtype holds",
                    "cells": max((r["cells"] for r in rows), default=0), "restarts": restarts,
                    "mean": worst((r["mean"] for r in rows), default=np.nan), "lo": np.nan, "hi": np.nan,
                    "verdict": word, "note": "" if word != verdicts.UNSURE else verdicts.design_note(restarts)}]
    return pd.DataFrame(rows, columns=FORMAT_COLUMNS).set_index("dtype")


def format_claims(frame: pd.DataFrame, margin: float | None = None) -> pd.DataFrame:
    """"The format does not change what the trained models get right", decided over restarts.

    The independent unit is a restart (seed): the runs of one restart share its seed across models and freeze
    modes, and the bins and lengths of a run share one model (fixed test strings, the same in every format).
    Per low dtype and restart: the largest |change| of a bin accuracy against float64 over the restart's
    (model, freeze mode, bin) cells (:func:`bin_changes`); then the t interval over restarts
    (:func:`marnn.analysis.stability.restart_claim`): ``holds`` when its upper limit is below ``margin``
    (default :data:`marnn.verdicts.MARGIN`, the book's margin for two equal accuracies), ``does not hold`` when
    its lower limit is at or above it, else ``cannot tell`` (always with one restart). The row ``all`` holds
    when every dtype holds (each at the one-sided level, so the conjunction is too), does not hold when one
    does not, else cannot tell. Index ``dtype``."""
    from .. import verdicts
    from .stability import restart_claim

    margin = verdicts.MARGIN if margin is None else margin
    per_bin = bin_changes(frame)
    per_bin = per_bin.assign(size=per_bin["change"].abs())
    rows = []
    for name in LOW:
        part = per_bin[per_bin["dtype"] == name]
        worst = part.groupby("seed")["size"].max().dropna()
        cells = int(part.groupby(["model", "freeze", "bin"]).ngroups) if len(part) else 0
        rows.append({"dtype": name, "measure": "largest |bin accuracy - float64| of a restart",
                     "decided by": f"upper limit < {margin:g}", "cells": cells,
                     **restart_claim(worst.to_numpy(), "below", margin, (0.0, 1.0))})
    return _with_every_dtype(rows, max)


# "Amplify": a rounding error that only follows the size of the logits grows as they do (ratio 1); it is called
# amplified when, from the first to the last bin, it grows at least this many times as much as the float64 logits
# (a margin, so that a slight drift of the median-of-maxima statistic is not called amplification).
AMPLIFY = 2.0


def _typical(part: pd.DataFrame, column: str) -> pd.Series:
    """Per bin: the median over lengths of the largest ``column`` over the replicas of ``part``."""
    return part.groupby(["bin", "length"])[column].max().groupby(level="bin").median()


def growth_claims(frame: pd.DataFrame, factor: float = AMPLIFY) -> pd.DataFrame:
    """"Beyond the training lengths the trained dynamics amplify small perturbations", decided over restarts.

    Per low dtype and restart (seed, the independent unit as in :func:`format_claims`): the growth from the
    first to the last bin of the typical logit difference from float64 (median over lengths of the largest over
    the restart's replicas), divided by the growth of the float64 logits themselves, in logs. ``holds`` when
    the lower limit of the t interval over restarts is above log ``factor``, ``does not hold`` when the upper
    limit is at or below it, else ``cannot tell``; the row ``all`` combines the dtypes like
    :func:`format_claims`. ``mean``, ``lo``, ``hi`` are shown as factors (exp of the logs). Index ``dtype``."""
    from .stability import restart_claim

    bins = sorted(frame["bin"].unique())
    first, last = bins[0], bins[-1]
    rows = []
    for name in LOW:
        per = []
        for _, part in frame.groupby("seed"):
            diff, size = _typical(part[part["dtype"] == name], "logit_diff"), \
                _typical(part[part["dtype"] == REFERENCE], "logit_scale")
            with np.errstate(divide="ignore", invalid="ignore"):
                per.append(float(np.log(diff[last] / diff[first]) - np.log(size[last] / size[first])))
        per_a = np.array([x for x in per if np.isfinite(x)])
        out = restart_claim(per_a, "above", float(np.log(factor)))
        out["note"] = out["note"].replace(f"both sides of {np.log(factor):.3g}", f"both sides of a factor {factor:g}")
        rows.append({"dtype": name, "measure": "growth of the logit difference / growth of the logits, first to "
                                               "last bin", "decided by": f"lower limit > {factor:g}",
                     "cells": int(frame[["model", "freeze"]].drop_duplicates().shape[0]),
                     **out, **{k: float(np.exp(out[k])) for k in ("mean", "lo", "hi")}})
    return _with_every_dtype(rows, min)


def growth_sentence(claims: pd.DataFrame) -> str:
    """The page's sentence on :func:`growth_claims`."""
    from .. import verdicts

    v = claims.at["all", "verdict"]
    factor = claims.iloc[0]["decided by"].split(">")[-1].strip()
    if v == verdicts.HOLDS:
        return (f"Beyond the training lengths the trained dynamics amplify small perturbations (in every format the "
                f"difference grows over restarts at least {factor} times as much as the logits): the sensitivity "
                f"that the paper's Appendix C lists as a stability criterion (robustness to perturbations) without "
                f"measuring it.")
    if v == verdicts.FAILS:
        each = claims.drop(index="all")
        bad = ", ".join(each.index[each["verdict"] == verdicts.FAILS])
        return (f"In {bad} the trained models do not amplify perturbations at this scale: over restarts the "
                f"difference grows less than {factor} times as much as the logits.")
    return (f"Whether the trained dynamics amplify perturbations (a difference growing at least {factor} times as "
            f"much as the logits) the restarts cannot tell ({_undecided(claims)}).")


def format_sentence(claims: pd.DataFrame, worst: float) -> str:
    """The page's sentence on :func:`format_claims` (``worst``: the largest change of any replica, descriptive)."""
    from .. import verdicts

    v = claims.at["all", "verdict"]
    hi = claims.drop(index="all")["hi"].max()
    margin = float(claims.iloc[0]["decided by"].split("<")[-1])
    seen = f"No bin accuracy of any replica moves by more than {worst:.2g} (descriptive)."
    if v == verdicts.HOLDS:
        return (f"{seen} Over restarts, the largest change of a restart stays below {margin:g} in every format "
                f"(highest upper limit {hi:.3g}): where these models are wrong on long strings they are wrong in "
                f"every format, so at this scale precision does not explain their failure to generalise.")
    if v == verdicts.FAILS:
        each = claims.drop(index="all")
        bad = ", ".join(each.index[each["verdict"] == verdicts.FAILS])
        return (f"{seen} In {bad} the largest change of a restart is at least {margin:g} over restarts: the format "
                f"changes what these models get right.")
    return (f"{seen} Whether the format leaves the accuracies within {margin:g} the restarts cannot tell "
            f"({_undecided(claims)}).")


def _undecided(claims: pd.DataFrame) -> str:
    """'float16: the 95% interval over 3 restarts reaches both sides of 0.02' for the dtypes that cannot tell."""
    from .. import verdicts

    each = claims.drop(index="all")
    return "; ".join(f"{d}: {n.split('. ', 1)[0]}" for d, n, v in zip(each.index, each["note"], each["verdict"],
                                                                        strict=True) if v == verdicts.UNSURE)


def _short(dtype: str) -> str:
    return dtype.replace("float", "f")  # float32 -> f32, bfloat16 -> bf16


def recall_facts(frame: pd.DataFrame) -> dict:
    """Numbers of experiment (a) quoted in prose, from a :func:`stack_recall` frame holding every
    stack, every dtype and at least two eps > 0 (``small`` = the smallest, ``mid`` = the next).

    ``<stack>_round_<dtype>``: largest rounding over eps > 0 at the stack's largest depth;
    ``sup_..._at_rns_top``: the superposition stack at the RNS's largest depth;
    ``*_growth_*``: median over eps of :func:`rounding_growth`; ``mass_*``/``massdrift_*``:
    :func:`action_mass` and its power ``2d - 1`` at the largest depth; ``tape_units``: the
    largest rounding of the RNS / VRNS in units of the dtype's unit roundoff.
    """
    def at(stack, dtype, eps, column="error", depth=None):
        part = frame[(frame["stack"] == stack) & (frame["dtype"] == dtype) & (frame["eps"] == eps)]
        return float(part[part["depth"] == (part["depth"].max() if depth is None else depth)][column].iloc[0])

    top = {s: int(frame[frame["stack"] == s]["depth"].max()) for s in STACKS}
    if top["rns"] not in set(frame[frame["stack"] == "superposition"]["depth"]):
        raise ValueError(f"the superposition depths must include the largest RNS depth {top['rns']}")
    soft = sorted(e for e in frame["eps"].unique() if e > 0)
    if len(soft) < 2:
        raise ValueError(f"need at least two eps > 0, got {soft}")
    hard = frame[frame["eps"] == 0]
    growth = rounding_growth(frame[frame["eps"] > 0])
    facts = {
        "exact64": hard[hard["dtype"] == REFERENCE]["error"].max(),
        "hard_bf16": hard[hard["dtype"] == "bfloat16"]["error"].max(),
        "hard_f16": hard[hard["dtype"] == "float16"]["error"].max(),
        "u_bf16": unit_roundoff("bfloat16"), "u_f16": unit_roundoff("float16"),
        "sup_top": top["superposition"], "rns_top": top["rns"],
        "eps_small": soft[0], "eps_mid": soft[1],
        "sup_err_small": at("superposition", REFERENCE, soft[0]),
        "sup_share_small": decay_bound(top["superposition"], soft[0]),
        "rns_err_small": at("rns", REFERENCE, soft[0]),
        "vrns_err_small": at("vrns", REFERENCE, soft[0]),
        "sup_err_small_at_rns_top": at("superposition", REFERENCE, soft[0], depth=top["rns"]),
    }
    for name in LOW:
        key = _short(name)
        for stack in STACKS:
            facts[f"{stack}_round_{key}"] = max(at(stack, name, e, "rounding") for e in soft)
        facts[f"sup_round_{key}_at_rns_top"] = max(at("superposition", name, e, "rounding", top["rns"])
                                                   for e in soft)
        g = growth[growth["dtype"] == name].groupby("stack")["exponent"].median()
        facts[f"sup_growth_{key}"], facts[f"vrns_growth_{key}"] = float(g["superposition"]), float(g["vrns"])
    for tag, eps in (("small", soft[0]), ("mid", soft[1])):
        facts[f"mass_bf16_{tag}"] = action_mass(eps, "bfloat16")
        facts[f"massdrift_bf16_{tag}"] = action_mass(eps, "bfloat16") ** (2 * top["superposition"] - 1)
    facts["p_bf16_small"] = float(torch.tensor(1 - soft[0], dtype=torch.float64).to(torch.bfloat16))
    facts["deep_bf16_small"] = at("superposition", "bfloat16", soft[0], "deepest")
    facts["deep_f64_small"] = at("superposition", REFERENCE, soft[0], "deepest")
    tape = frame[frame["stack"].isin(["vrns", "rns"]) & (frame["dtype"] != REFERENCE)]
    facts["tape_units"] = float((tape["rounding"] / tape["dtype"].map(unit_roundoff)).max())
    facts["all_finite"] = bool(frame["finite"].all())
    return facts


def drift_facts(frame: pd.DataFrame, summary: pd.DataFrame, support: pd.DataFrame) -> dict:
    """Numbers of experiment (b): from :func:`drift`, its :func:`drift_summary` and :func:`path_support`.

    ``drift_growth``: largest ratio, over (model, dtype), of the logit difference over the whole
    string to that over the shortest prefix of ``summary``; ``tie_margin``: the largest float64
    top-2 logit gap at a position where some argmax disagrees; ``fused_vs_generic_f16``: mean
    ratio of the fused and generic float16 logit differences.
    """
    by = frame.groupby("dtype")
    first = summary.groupby(["model", "dtype"])["logit_diff"].first()
    last = summary.groupby(["model", "dtype"])["logit_diff"].last()
    fused = support.query("path == 'fused'").set_index(["model", "dtype"])
    generic = support.query("path == 'generic'").set_index(["model", "dtype"])
    f16 = fused.xs("float16", level="dtype")["logit_diff"] / generic.xs("float16", level="dtype")["logit_diff"]
    bf16 = fused.xs("bfloat16", level="dtype")
    disagree = frame[frame["agree"] < 1]
    facts: dict[str, Any] = {f"drift_{_short(d)}": float(by["logit_diff"].max()[d]) for d in LOW}
    facts.update({f"agree_min_{_short(d)}": float(summary[summary["dtype"] == d]["agree"].min()) for d in LOW})
    facts.update({
        "drift_growth": float((last / first).max()),
        "reading_bf16": float(by["reading_diff"].max()["bfloat16"]),
        "fused_bf16_fails": bool(not bf16["runs"].any()),
        "fused_bf16_error": bf16["error"].iloc[0] if len(bf16) else "",
        "fused_vs_generic_f16": float(f16.mean()),
        "tie_margin": float(disagree["margin"].max()) if len(disagree) else float("nan"),
        "median_margin": float(frame["margin"].median()),
    })
    return facts


def trained_facts(frame: pd.DataFrame) -> dict:
    """Numbers of experiment (c) from a :func:`trained_precision` frame.

    ``acc_change_<dtype>``: largest |change| of a replica's bin accuracy against float64;
    ``diff_first/last_<dtype>``: largest logit difference in the first / last bin;
    ``typical_growth_<dtype>``: ratio last bin / first bin of the median over lengths of the
    per-length largest logit difference; ``scale_first/last``: largest float64 logit per bin.
    """
    summary = trained_summary(frame)
    low = summary[summary["dtype"] != REFERENCE]
    bins = sorted(frame["bin"].unique())
    first, last = bins[0], bins[-1]
    per_length = frame.groupby(["dtype", "bin", "length"])["logit_diff"].max()  # worst replica per length
    ref = frame[frame["dtype"] == REFERENCE]
    facts: dict = {"n_models": int(frame[["model", "freeze", "seed"]].drop_duplicates().shape[0]),
                   "first_bin": first, "last_bin": last}
    for name in LOW:
        key = _short(name)
        part = low[low["dtype"] == name]
        typical = per_length[name].groupby(level="bin").median()
        facts.update({
            f"acc_change_{key}": float(part["max_change"].max()),
            f"agree_{key}": float(part["agree"].min()),
            f"diff_first_{key}": float(part[part["bin"] == first]["logit_diff"].max()),
            f"diff_last_{key}": float(part[part["bin"] == last]["logit_diff"].max()),
            f"typical_growth_{key}": float(typical[last] / typical[first]),
        })
    facts["mean_change_bf16_last"] = float(low[(low["dtype"] == "bfloat16") & (low["bin"] == last)]["mean_change"]
                                           .mean())
    facts["scale_first"] = float(ref[ref["bin"] == first]["logit_scale"].max())
    facts["scale_last"] = float(ref[ref["bin"] == last]["logit_scale"].max())
    f32 = frame[frame["dtype"] == "float32"]
    facts["record_gap"] = float((f32["accuracy"] - f32["recorded"]).abs().max())
    return facts


def facts_table(facts: dict) -> pd.DataFrame:
    """The numbers a page glues into its prose, one row each, floats to 5 significant digits."""
    def shown(v):
        v = v.item() if hasattr(v, "item") else v
        return f"{v:.5g}" if isinstance(v, float) else str(v)
    return pd.DataFrame({"value": [shown(v) for v in facts.values()]}, index=list(facts))


__all__ = [
    "DTYPES", "REFERENCE", "LOW", "DTYPE_COLORS", "STACKS", "PrecisionSettings", "SETTINGS", "settings",
    "get_dtype", "unit_roundoff", "dtype_table", "stack_recall", "recoverable_depth", "depth_table", "rounding_growth",
    "decay_bound", "action_mass", "member_strings", "drift", "drift_summary",
    "path_support", "trained_precision", "trained_summary", "best_seeds", "recall_facts", "drift_facts",
    "trained_facts", "facts_table", "bin_changes", "format_claims", "format_sentence",
    "AMPLIFY", "growth_claims", "growth_sentence",
]
