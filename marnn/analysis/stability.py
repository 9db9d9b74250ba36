"""The practical stability criteria of the paper's Appendix C, measured on our runs.

The paper (Section 3, Appendix C; docs: book/reference/claims.md, "Stability theory") calls a model
*stable* for a language when it does not degrade as strings grow longer, and
proposes six criteria to check in practice. It measures none of them. This
module turns five of them into numbers computed from stored formal-language
records (``record["lengths"]``, one row per test length) and the sixth, with a
bonus, from trained weights (:mod:`marnn.analysis.weights`).

Per-length quantities (a record row of length ``n``)::

    e(n)   = ce_diff(n)                      excess cross-entropy over the true distribution (nats/symbol)
    g(n)   = log V - lower_bound(n)          the excess of uniform guessing (the bin's chance reference)
    rho(n) = e(n) / g(n)                     0 = at the bound, 1 = as bad as uniform guessing
    E(n)   = e(n) * (n + 1)                  excess nats per *string* (n symbols + EOS)

Length ranges, from the scale's training lengths ``[lo, hi]`` (quick: 10-20,
test lengths up to 100; smoke: 8-16, up to 48); each is intersected with the
lengths actually tested:

    short      [lo, hi]                the training range
    just past  [hi + 1, 1.25 hi]       right after the longest training string (Thm 3.7)
    long       [2 hi, 4 hi]            "2-4x the training length" (Appendix C)
    tail       [0.8 n_max, n_max]      the longest test strings (Thm 3.7's last phase)
    onset      [lo, 2 hi]              where Thm 3.7 puts the super-linear phase

The criteria (columns of :func:`run_table`), each with the threshold that
makes it pass:

(a) bounded        ``max_rho = max_n rho(n) <= 1``: the per-symbol loss never
                   exceeds that of uniform guessing anywhere in the test range.
(b) low variance   ``std_rho = std_n rho(n) <= 0.1`` (population std over the
                   tested lengths; ``std_excess`` is the same in nats).
(c) long vs short  ``long_short = mean rho(long) - mean rho(short) <= 0.1``;
                   a rise of ``>= 0.25`` (a quarter of the way from the bound to
                   chance) is *degradation*.
(d) growth rate    fit ``E(n) ~ a n^b + c`` by least squares: ``b`` on a grid
                   (0.1 ... 6, step 0.01) with ``a >= 0`` and ``c`` solved
                   exactly for each ``b``. Classes (a definition of this project, band 0.2 around b = 1):
                   ``flat`` (``a = 0``, or the fitted rise over the test range
                   is under 0.05 nats per symbol of the longest string),
                   ``sub-linear`` (b < 0.8), ``linear`` (0.8 <= b <= 1.2),
                   ``super-linear`` (b > 1.2). Passes unless super-linear
                   (Appendix C: sub-linear / linear = stable). We read Thm
                   3.6's loss of a string ``x`` as the loss summed over the
                   string, hence ``E`` and not ``e``: a constant per-symbol
                   excess is then linear growth, which Appendix C calls
                   stable. The fit is unweighted over the tested lengths.
                   The same fit over the onset range alone gives ``b_onset``
                   and ``growth_onset`` (reported, not used by the verdict):
                   an excess that rises and then saturates is super-linear
                   there and close to linear over the whole range.
(e) not untrained  Thm 3.4 says an unstable model's loss approaches that of a
                   model with random parameters. ``long_rho = mean rho(long)``
                   measures it against uniform guessing, ``long_rho_mf``
                   against the bin's most-frequent-symbol predictor, and
                   ``long_rho_untrained`` against the run's own initial
                   weights (:func:`untrained_lengths`, where computed). Passes
                   when ``long_rho <= 0.5`` and, if known,
                   ``long_rho_untrained <= 0.5``: the model is closer to the
                   bound than to an untrained model.

Label per run (this project's rules, not the paper's; a description of one
run, since one restart carries no measure of how much restarts differ; the
column is called ``verdict`` for compatibility):

* **stable**: all five criteria pass;
* **unstable**: the loss degrades with length: ``long_short >= 0.25``, or the
  growth is super-linear;
* **undecided**: everything else, e.g. a model that is flat but no better than
  an untrained one (it passes (a)-(d) and fails (e)); ``reason`` names the
  criteria that failed. A run with fewer than four finite per-length losses
  (a diverged run) is undecided too.

The theorems' predictions are not decided on these labels nor by a majority
of runs: :func:`theorem_checks` decides each over restarts, the independent
unit, with the thresholds above as margins of a t interval over restarts
(:mod:`marnn.verdicts`), and says ``cannot tell`` when the restarts do not
reach its level.

Perturbation robustness (Appendix C's last criterion) and unseen patterns are
:func:`perturbation_table`'s job; its operationalisation is documented there.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

# ---- thresholds of the per-run labels (the rules above); margins of the theorem checks -------------------
BOUND_RHO = 1.0  # (a) never worse than uniform guessing
STD_RHO = 0.1  # (b) spread of rho over lengths
NO_RISE = 0.1  # (c) long - short at most this: passes; a cell does not rise: upper limit over restarts below it
DEGRADES = 0.25  # (c) long - short at least this: degradation; a cell degrades: lower limit over restarts above it
GROWTH_TOL = 0.2  # (d) |b - 1| within this: linear
FLAT_RISE = 0.05  # (d) fitted rise under this many nats per symbol of the longest string: flat
LEARNED = 0.5  # (e) long-range excess at most half that of chance / the untrained model
# Thm 3.7's "near-zero loss" just past the training length: the restart mean of rho there has its upper limit
# below a tenth of chance's excess (a margin, not a per-run cut-off)
NEAR_ZERO = 0.1
# Equivalence margin of "close to" a random model's loss (Thm 3.4): the excess ratio within a factor 1 + CLOSE
# either way, by two one-sided tests on the restart mean of its log. A quarter of chance's excess is the step
# criterion (c) calls degradation: a gap smaller than what we call getting worse is not claimed as a difference.
CLOSE = 0.25
B_GRID = np.round(np.arange(0.1, 6.0 + 1e-9, 0.01), 2)
MIN_LENGTHS = 4  # fewer finite per-length losses than this: no verdict

VERDICTS = ("stable", "unstable", "undecided")  # the per-run labels (descriptive)
GROWTH_CLASSES = ("flat", "sub-linear", "linear", "super-linear", "none")  # none: too few lengths to fit
LENGTH_KEYS = ("length", "bin", "cross_entropy", "lower_bound", "ce_diff", "accuracy")


# ---- one record ----------------------------------------------------------------------
def _where(record: object) -> str:
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        c = record["config"]
        return f"{c.get('task')}/{c.get('model')}/{c.get('freeze')}/s{c.get('seed')}"
    return "record"


def train_lengths(record: dict) -> tuple[int, int]:
    """The training length range ``(lo, hi)`` of a record (``config.scale_fields.train_lengths``)."""
    try:
        lo, hi = record["config"]["scale_fields"]["train_lengths"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{_where(record)}: no config.scale_fields.train_lengths [lo, hi] in the record") from None
    lo, hi = int(lo), int(hi)
    if not 0 < lo <= hi:
        raise ValueError(f"{_where(record)}: train_lengths must satisfy 0 < lo <= hi, got [{lo}, {hi}]")
    return lo, hi


def _arrays(record: dict) -> dict[str, np.ndarray]:
    """:func:`profile`'s columns as numpy arrays (sorted by length, finite losses only)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a record (dict), got {type(record).__name__}")
    rows, bins = record.get("lengths"), record.get("bins")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{_where(record)}: no per-length metrics ('lengths'); is it a formal-language record?")
    if not isinstance(bins, dict) or not bins:
        raise ValueError(f"{_where(record)}: no test bins ('bins') with the chance references")
    cols: dict[str, list] = {k: [] for k in PROFILE_COLUMNS}
    for row in rows:
        missing = [k for k in LENGTH_KEYS if k not in row]
        if missing:
            raise ValueError(f"{_where(record)}: a 'lengths' row lacks {missing}")
        ref = bins.get(row["bin"])
        if not isinstance(ref, dict) or "chance_cross_entropy" not in ref:
            raise ValueError(f"{_where(record)}: bin {row['bin']!r} has no chance_cross_entropy reference")
        n = int(row["length"])
        lb, chance = float(row["lower_bound"]), float(ref["chance_cross_entropy"])
        if not chance > lb:
            raise ValueError(f"{_where(record)}: chance cross-entropy {chance} is not above the bound {lb} at "
                             f"length {n}")
        mf = ref.get("most-frequent_cross_entropy")
        mf = float("nan") if mf is None else float(mf)
        e = float("nan") if row["ce_diff"] is None else float(row["ce_diff"])
        values = {"length": n, "bin": row["bin"], "strings": row.get("strings") or 0,
                  "accuracy": float(row["accuracy"]), "cross_entropy": _num(row["cross_entropy"]),
                  "lower_bound": lb, "ce_diff": e, "chance_ce": chance,
                  "chance_accuracy": _num(ref.get("chance_accuracy")), "mf_ce": mf, "rho": e / (chance - lb),
                  "rho_mf": e / (mf - lb) if mf > lb else float("nan"), "excess_per_string": e * (n + 1)}
        for k, v in values.items():
            cols[k].append(v)
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    keep = np.isfinite(arrays["ce_diff"])
    order_ = np.argsort(arrays["length"][keep], kind="stable")
    return {k: v[keep][order_] for k, v in arrays.items()}


def _num(x) -> float:
    return float("nan") if x is None else float(x)


PROFILE_COLUMNS = ("length", "bin", "strings", "accuracy", "cross_entropy", "lower_bound", "ce_diff", "chance_ce",
                   "chance_accuracy", "mf_ce", "rho", "rho_mf", "excess_per_string")


def profile(record: dict) -> pd.DataFrame:
    """The per-length table of one formal-language record, with the references.

    Columns: length, bin, strings, accuracy, cross_entropy, lower_bound,
    ce_diff (``e``), chance_ce, chance_accuracy, mf_ce (most-frequent
    cross-entropy of the length's bin), rho (``e / (chance_ce - lower_bound)``),
    rho_mf (``e / (mf_ce - lower_bound)``) and excess_per_string (``E``).
    Lengths whose loss is not finite (a diverged run) are dropped.
    Raises ``ValueError`` when the record lacks what the criteria need.
    """
    return pd.DataFrame(_arrays(record), columns=list(PROFILE_COLUMNS))


def ranges(train: tuple[int, int], max_length: int) -> dict[str, tuple[int, int]]:
    """The closed length ranges of the criteria (module docstring) for training range ``train``."""
    lo, hi = train
    return {"short": (lo, hi), "just_past": (hi + 1, int(math.floor(1.25 * hi))),
            "long": (2 * hi, 4 * hi), "tail": (int(math.ceil(0.8 * max_length)), int(max_length)),
            "onset": (lo, 2 * hi)}


def _in(frame, lo_hi: tuple[int, int]):
    """The rows of ``frame`` (a DataFrame or :func:`_arrays`' dict) with length in the closed range."""
    lo, hi = lo_hi
    keep = (frame["length"] >= lo) & (frame["length"] <= hi)
    if isinstance(frame, dict):
        return {k: v[keep] for k, v in frame.items()}
    return frame[keep]


# ---- growth fit ---------------------------------------------------------------------
def fit_growth(n: ArrayLike, y: ArrayLike, b_grid: ArrayLike = B_GRID) -> dict:
    """Least-squares fit of ``y ~ a n^b + c`` with ``a >= 0`` (numpy only).

    For every ``b`` of ``b_grid`` the best ``(a, c)`` is the simple linear
    regression of ``y`` on ``n^b`` (``a`` clipped at 0, then ``c = mean y``);
    the ``b`` with the smallest squared error wins (the first, on ties). When
    no ``b`` gives ``a > 0`` the fit is the constant ``mean y`` and ``b`` is NaN.
    Returns ``{"a", "b", "c", "sse", "rise", "cls"}``: ``rise`` = ``a (n_max^b -
    n_min^b)``; ``cls`` the growth class of the module docstring, with the
    rise judged against ``FLAT_RISE * (n_max + 1)`` nats.
    """
    return _fit_growth(np.asarray(n, dtype=float), np.asarray(y, dtype=float), b_grid)


def _fit_growth(n: np.ndarray, y: np.ndarray, b_grid: ArrayLike) -> dict:
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"n and y must be 1-d of the same length, got shapes {n.shape} and {y.shape}")
    ok = np.isfinite(n) & np.isfinite(y)
    n, y = n[ok], y[ok]
    if len(n) < 3 or len(np.unique(n)) < 3:
        raise ValueError(f"need at least 3 distinct finite lengths to fit a n^b + c, got {len(np.unique(n))}")
    if (n <= 0).any():
        raise ValueError("lengths must be positive")
    grid = np.asarray(b_grid, dtype=float)
    x = n[None, :] ** grid[:, None]  # (G, N)
    xm, ym = x.mean(1, keepdims=True), y.mean()
    xc = x - xm
    a = np.maximum((xc * (y - ym)).sum(1) / (xc**2).sum(1), 0.0)  # (G,)
    c = ym - a * xm[:, 0]
    sse = ((a[:, None] * x + c[:, None] - y[None, :]) ** 2).sum(1)
    i = int(np.argmin(sse))
    if a[i] <= 0:
        return {"a": 0.0, "b": float("nan"), "c": float(ym), "sse": float(((y - ym) ** 2).sum()), "rise": 0.0,
                "cls": "flat"}
    b = float(grid[i])
    rise = float(a[i] * (n.max() ** b - n.min() ** b))
    if rise < FLAT_RISE * (n.max() + 1):
        cls = "flat"
    elif b > 1 + GROWTH_TOL:
        cls = "super-linear"
    elif b < 1 - GROWTH_TOL:
        cls = "sub-linear"
    else:
        cls = "linear"
    return {"a": float(a[i]), "b": b, "c": float(c[i]), "sse": float(sse[i]), "rise": rise, "cls": cls}


def growth_curve(fit: Mapping, n: ArrayLike) -> np.ndarray:
    """The fitted per-*symbol* excess ``(a n^b + c) / (n + 1)`` at lengths ``n`` (for plots)."""
    n = np.asarray(n, dtype=float)
    if not np.isfinite(fit["b"]):
        return np.full_like(n, fit["c"]) / (n + 1)
    return (fit["a"] * n ** fit["b"] + fit["c"]) / (n + 1)


# ---- criteria and verdict of one run ----------------------------------------------------
def _mean(frame, col: str) -> float:
    v = np.asarray(frame[col], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def untrained_rho(prof, untrained_rows: Sequence[Mapping], rng: tuple[int, int]) -> float:
    """Mean over ``rng`` of a run's excess (its :func:`profile`) divided by its untrained model's excess,
    length by length."""
    prof = _in(prof, rng)
    ref = {int(r["length"]): r["ce_diff"] for r in untrained_rows if r.get("ce_diff") is not None}
    ratios = [e / ref[n] for n, e in zip(prof["length"], prof["ce_diff"], strict=True) if n in ref and ref[n] > 0]
    return float(np.mean(ratios)) if ratios else float("nan")


def criteria(record: dict, untrained_rows: Sequence[Mapping] | None = None) -> dict:
    """Every criterion, the verdict and its reason for one run (module docstring).

    ``untrained_rows``: the ``lengths`` rows of the run's model at its initial
    weights (:func:`untrained_lengths`), or None.
    """
    prof = _arrays(record)
    train = train_lengths(record)
    if len(prof["length"]) < MIN_LENGTHS:
        out: dict[str, Any]
        out = {k: float("nan") for k in ("max_excess", "max_rho", "std_excess", "std_rho", "short_rho", "long_rho",
                                         "long_short", "a", "b", "c", "b_onset", "long_rho_mf",
                                         "long_rho_untrained", "just_past_rho", "tail_rho", "tail_accuracy",
                                         "chance_accuracy", "short_excess", "long_excess", "last_accuracy",
                                         "trivial_accuracy", "ceiling_accuracy", "repeat_accuracy")}
        out.update({"growth": "none", "growth_onset": "none", "bounded": False, "low_variance": False,
                    "no_rise": False, "growth_ok": False, "learned": False, "verdict": "undecided",
                    "reason": f"only {len(prof['length'])} finite per-length losses"})
        return out
    rg = ranges(train, int(prof["length"].max()))
    short, long = _in(prof, rg["short"]), _in(prof, rg["long"])
    if not len(short["length"]):
        raise ValueError(f"{_where(record)}: no finite test length in the training range {list(rg['short'])}")
    if not len(long["length"]):
        raise ValueError(f"{_where(record)}: no finite test length in the long range {list(rg['long'])} "
                         f"(2-4x the longest training length); the test bins must reach it")
    fit = fit_growth(prof["length"], prof["excess_per_string"])
    onset = _in(prof, rg["onset"])
    fit_on = (fit_growth(onset["length"], onset["excess_per_string"]) if len(np.unique(onset["length"])) >= 3
              else {"b": float("nan"), "cls": "none"})
    last = max(record["bins"], key=lambda k: record["bins"][k].get("hi", 0))
    lb = record["bins"][last]
    out = {
        "max_excess": float(prof["ce_diff"].max()), "max_rho": float(prof["rho"].max()),
        "std_excess": float(prof["ce_diff"].std()), "std_rho": float(prof["rho"].std()),
        "short_excess": _mean(short, "ce_diff"), "long_excess": _mean(long, "ce_diff"),
        "short_rho": _mean(short, "rho"), "long_rho": _mean(long, "rho"),
        "a": fit["a"], "b": fit["b"], "c": fit["c"], "growth": fit["cls"],
        "b_onset": fit_on["b"], "growth_onset": fit_on["cls"],
        "long_rho_mf": _mean(long, "rho_mf"),
        "long_rho_untrained": (untrained_rho(prof, untrained_rows, rg["long"]) if untrained_rows is not None
                               else float("nan")),
        "just_past_rho": _mean(_in(prof, rg["just_past"]), "rho"),
        "tail_rho": _mean(_in(prof, rg["tail"]), "rho"),
        "tail_accuracy": _mean(_in(prof, rg["tail"]), "accuracy"),
        "chance_accuracy": _mean(prof, "chance_accuracy"),
        "last_accuracy": lb.get("accuracy", float("nan")),
        "trivial_accuracy": max(lb.get(f"{r}_accuracy", float("nan")) or float("nan")
                                for r in ("chance", "most-frequent", "repeat-previous")),
        "ceiling_accuracy": lb.get("ceiling_accuracy", float("nan")),
        "repeat_accuracy": _num(lb.get("repeat-previous_accuracy")),
    }
    out["long_short"] = out["long_rho"] - out["short_rho"]
    out["bounded"] = out["max_rho"] <= BOUND_RHO
    out["low_variance"] = out["std_rho"] <= STD_RHO
    out["no_rise"] = out["long_short"] <= NO_RISE
    out["growth_ok"] = fit["cls"] != "super-linear"
    u = out["long_rho_untrained"]
    out["learned"] = bool(out["long_rho"] <= LEARNED and (not np.isfinite(u) or u <= LEARNED))
    out["verdict"], out["reason"] = verdict(out)
    return out


def verdict(c: Mapping) -> tuple[str, str]:
    """``(verdict, reason)`` from the criteria of one run (rules in the module docstring)."""
    triggers = []
    if c["long_short"] >= DEGRADES:
        triggers.append(f"long - short {c['long_short']:.3g} >= {DEGRADES}")
    if c["growth"] == "super-linear":
        triggers.append(f"super-linear growth (b = {c['b']:.3g})")
    if triggers:
        return "unstable", "; ".join(triggers)
    checks = {"bounded": "(a) exceeds chance", "low_variance": "(b) varies with length",
              "no_rise": "(c) long above short", "growth_ok": "(d) super-linear",
              "learned": "(e) near untrained"}
    failed = [text for key, text in checks.items() if not c[key]]
    if not failed:
        return "stable", "all five criteria pass"
    return "undecided", "; ".join(failed)


# ---- many runs ------------------------------------------------------------------------
def run_key(record: dict) -> str:
    """The record's store key (records fresh from training have none yet: it is the config's hash)."""
    from ..store import config_key

    return record.get("key") or config_key(record["config"])


def load_records(scale: str, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                 modes: Iterable[str] | None = None, root: str | None = None) -> list[dict]:
    """The stored records of the formal grid at ``scale`` (nothing is trained; missing runs are absent)."""
    from .. import report, store

    configs = report.formal_configs(scale, tasks, models, modes)
    return [r for r in (store.load_record(c, root) for c in configs) if r is not None]


def run_table(records: Iterable[dict], untrained: Mapping[tuple, Sequence[Mapping]] | None = None) -> pd.DataFrame:
    """One row per run: its ids, every criterion and the verdict (:func:`criteria`).

    ``untrained``: ``{(task, model, seed): lengths rows}`` from :func:`untrained_losses`.
    Rows are in the paper's order (tasks, models, modes, seeds).
    """
    from ..report import order

    rows = []
    for rec in records:
        c = rec["config"]
        u = None if untrained is None else untrained.get((c["task"], c["model"], c["seed"]))
        rows.append({"key": run_key(rec), "task": c["task"], "model": c["model"], "freeze": c["freeze"],
                     "seed": c["seed"], "status": rec.get("status"), **criteria(rec, u)})
    if not rows:
        raise ValueError("no records to judge")
    return order(pd.DataFrame(rows))


def summary(table: pd.DataFrame, by: Sequence[str] = ("model", "freeze")) -> pd.DataFrame:
    """Per group: runs, verdict counts, share of super-linear fits and medians of the main criteria."""
    from ..report import order

    g = table.groupby(list(by), sort=False)
    out = g.size().rename("runs").to_frame()
    for v in VERDICTS:
        out[v] = g["verdict"].apply(lambda s, v=v: int((s == v).sum()))
    out["super-linear"] = g["growth"].apply(lambda s: float((s == "super-linear").mean()))
    for col in ("b", "short_rho", "long_rho", "long_short", "std_rho", "max_rho"):
        out[f"median {col}"] = g[col].median()
    return order(out.reset_index()).set_index(list(by))


def length_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Every record's :func:`profile` stacked, with the run's ids (for plots)."""
    parts = []
    for rec in records:
        c = rec["config"]
        p = profile(rec)
        for k in ("task", "model", "freeze", "seed"):
            p[k] = c[k]
        p["key"] = run_key(rec)
        parts.append(p)
    return pd.concat(parts, ignore_index=True)


def best_keys(records: Iterable[dict]) -> dict[tuple, str]:
    """``{(task, model, freeze): key}`` of the restart with the lowest validation cross-entropy
    (:func:`marnn.store.best_records`)."""
    from ..store import best_records

    return {cell: run_key(rec) for cell, rec in best_records(records).items()}


# ---- the untrained model (Thm 3.4) -----------------------------------------------------------
def untrained_lengths(task: str, model: str, scale: str, seeds: Sequence[int]) -> list[list[dict]]:
    """Per-length test metrics of ``model`` at its initial weights, one list per seed.

    The model is :func:`marnn.models.build` with the same seeds as the runs,
    i.e. exactly the weights training started from, evaluated on the fixed test
    bins its trained runs were evaluated on: the scale's, with the model's own cuts
    (:meth:`marnn.scales.Scale.for_model`; rns-3-3 at ``paper-2core`` takes 2 strings
    per length, not 2,500 per bin).
    """
    import torch

    from .. import models
    from .. import tasks as _tasks
    from ..scales import get_scale
    from ..tasks.data import test_batches
    from ..train.evaluate import evaluate_bins

    sc = get_scale(scale).for_model(model)
    t = _tasks.get(task)
    m = models.build(model, task=t, replicas=len(seeds), seeds=list(seeds))
    m.eval()
    with torch.no_grad():
        res = evaluate_bins(m, t, test_batches(t, sc), dict(zip(sc.bin_names, sc.test_bins, strict=True)))
    return [r["lengths"] for r in res]


def untrained_losses(records: Iterable[dict], models: Iterable[str] | None = None) -> dict[tuple, list[dict]]:
    """``{(task, model, seed): lengths rows}`` of the untrained models behind ``records``.

    A record's own ``untrained_lengths`` (the trainer evaluates each initialisation of a
    group once, on the same test strings) where it has them; the rest computed here
    (:func:`untrained_lengths`: records trained before the trainer kept them).
    ``models``: restrict to these model names (None: every model in ``records``).
    """
    from ..train import draw_seed

    wanted: dict[tuple[str, str, str], dict[int, int]] = {}  # restart -> the seed its init came from
    keep = None if models is None else set(models)
    out = {}
    for rec in records:
        c = rec["config"]
        if keep is None or c["model"] in keep:
            if rec.get("untrained_lengths") is not None:
                out[(c["task"], c["model"], int(c["seed"]))] = rec["untrained_lengths"]
            else:
                wanted.setdefault((c["task"], c["model"], c["scale"]), {})[int(c["seed"])] = draw_seed(c)
    for (task, model, scale), seeds in sorted(wanted.items()):
        restarts = sorted(seeds)
        inits = untrained_lengths(task, model, scale, [seeds[s] for s in restarts])
        for seed, rows in zip(restarts, inits, strict=True):
            out[(task, model, seed)] = rows
    return out


# ---- the paper's theorems, checked over restarts ------------------------------------------------------
# A prediction is decided over restarts, the independent unit: the runs of one restart share its seed and
# learning rate across languages and models, and its lengths share one model. Per restart, a run quantity is
# averaged over the cells the prediction is about (fixed, like the lengths of a bin); then the t interval over
# restarts (:func:`marnn.verdicts.t_limits`) is set against the prediction's margin.
CLOSE_LOG = math.log(1 + CLOSE)  # "close to": a ratio within a factor 1 + CLOSE either way, |log ratio| <= this
DEGRADING, NOT_RISING = "degrades", "does not rise"
NO_CELL = "no cell applies"


def cell_trends(table: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, freeze) cell: the restart mean of ``long_short`` with its t interval over restarts,
    and the cell's trend: ``degrades`` (lower limit above :data:`DEGRADES`), ``does not rise`` (upper limit
    below :data:`NO_RISE`) or ``cannot tell`` (one restart: always). Runs without ``long_short`` (diverged)
    are left out."""
    from .. import verdicts

    rows = []
    for (task, model, freeze), g in table.groupby(["task", "model", "freeze"], sort=False):
        vals = g["long_short"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        if not len(vals):
            continue
        mean, lo, hi = (float(x) for x in verdicts.t_limits(vals))
        trend = DEGRADING if lo > DEGRADES else (NOT_RISING if hi < NO_RISE else "cannot tell")
        rows.append({"task": task, "model": model, "freeze": freeze, "restarts": len(vals), "long_short": mean,
                     "lo": lo, "hi": hi, "trend": trend})
    return pd.DataFrame(rows, columns=["task", "model", "freeze", "restarts", "long_short", "lo", "hi", "trend"])


def restart_means(runs: pd.DataFrame, col: str) -> tuple[np.ndarray, int]:
    """Per restart (seed), ``col`` averaged over the (task, model, freeze) cells of ``runs``; cells without a
    finite value at every restart are left out (a diverged run). Returns (means, cells used)."""
    if runs.empty:
        return np.array([]), 0
    wide = runs.assign(_v=runs[col].astype(float)).pivot_table(
        index="seed", columns=["task", "model", "freeze"], values="_v", aggfunc="first", dropna=False)
    wide = wide.loc[:, np.isfinite(wide.to_numpy()).all(axis=0)]
    if wide.shape[1] == 0:
        return np.array([]), 0
    return wide.to_numpy().mean(axis=1), wide.shape[1]


def restart_claim(per_restart: np.ndarray, kind: str, bound: float,
                  possible: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Decide one prediction on its restart values (:func:`restart_means`) by the book's one rule.

    ``kind``: ``above`` (holds when the lower limit of the t interval over restarts is above ``bound``, does
    not when the upper limit is at or below it), ``below`` (the mirror image) or ``within`` (two one-sided
    tests, :func:`marnn.verdicts.within`: holds when the interval lies inside ``+-bound``, does not when it
    lies wholly outside). Otherwise, and with fewer than two restarts, ``cannot tell``, with the reason and
    what the design can reach (:func:`marnn.verdicts.design_note`). ``possible``: the range the quantity can
    take; the interval is cut to it after the decision (:func:`marnn.verdicts.clipped`), which the truth, inside
    it, never changes. Returns mean, lo, hi, restarts, verdict, note."""
    from .. import verdicts

    if kind not in ("above", "below", "within"):
        raise ValueError(f"kind must be 'above', 'below' or 'within', got {kind!r}")
    d = np.asarray(per_restart, dtype=float)
    r = len(d)
    if r == 0:
        return {"mean": np.nan, "lo": np.nan, "hi": np.nan, "restarts": 0, "verdict": NO_CELL, "note": ""}
    mean, lo, hi = (float(x) for x in verdicts.t_limits(d))
    if kind == "above":
        v = verdicts.decide(lo, hi, bound)
    elif kind == "below":
        v = verdicts.decide(-hi, -lo, -bound)
    else:
        v = verdicts.within(lo, hi, -bound, bound, 0.0)
    note = ""
    if v == verdicts.UNSURE:
        side = f"±{bound:.3g}" if kind == "within" else f"{bound:.3g}"
        why = ("one restart gives no interval" if r < 2 else
               f"the {verdicts.LEVEL:.0%} interval over {r} restarts reaches both sides of {side}")
        note = f"{why}. {verdicts.design_note(r)}"
    lo, hi, _ = verdicts.clipped(lo, hi, *possible)
    return {"mean": mean, "lo": lo, "hi": hi, "restarts": r, "verdict": v, "note": note}


CHECK_COLUMNS = ["theorem", "prediction", "measure", "decided by", "cells", "restarts", "mean", "lo", "hi",
                 "verdict", "note", "runs", "share (descriptive)"]


def checks_view(checks: pd.DataFrame) -> pd.DataFrame:
    """:func:`theorem_checks` as the page shows it, narrow enough for the book's column: the
    interval as one text column (``mean [lo, hi]``), restarts x cells as one, no note and no
    descriptive share (the side-by-side table shows those)."""
    interval = [f"{m:.3g} [{lo:.3g}, {hi:.3g}]" if np.isfinite(m) else "-"
                for m, lo, hi in zip(checks["mean"], checks["lo"], checks["hi"], strict=True)]
    design = [f"{r} x {c}" if c else "-" for r, c in zip(checks["restarts"], checks["cells"], strict=True)]
    return pd.DataFrame({"theorem": checks["theorem"], "prediction": checks["prediction"],
                         "measure": checks["measure"], "decided by": checks["decided by"],
                         "restarts x cells": design, "mean [95% interval]": interval,
                         "verdict": checks["verdict"]}, index=checks.index)


def theorem_checks(table: pd.DataFrame) -> pd.DataFrame:
    """The predictions of Thm 3.4-3.7 that our records can test, each decided over restarts.

    One row per check (index ``check``, a short name used by the book page). The unit is a restart: per
    restart the ``measure`` of each run is averaged over the cells the prediction is about, and the t interval
    over restarts (``mean``, ``lo``, ``hi``) is set against the margin in ``decided by``
    (:func:`restart_claim`); ``verdict`` is holds / does not hold / cannot tell (``note`` says why) / no cell
    applies. *Degrading* cells are the fully trained cells whose ``long_short`` degrades by
    :func:`cell_trends` (criterion (c) alone, so that the growth checks are not circular); memory models
    exclude the plain LSTM. ``runs`` and ``share (descriptive)``: how many runs of those cells there are and
    the share where the prediction holds run by run against the same number (a description, not a verdict).
    A flat growth fit (``a = 0``) counts as exponent 0.
    """
    from ..verdicts import MARGIN, UNSURE, design_note

    t = table.copy()
    t["b"] = t["b"].where(~(t["a"] == 0), 0.0)  # a constant fit: no growth
    for col in ("long_rho", "long_rho_untrained", "tail_rho"):  # ratios to a reference: judged in logs
        v = t[col].astype(float)
        t[f"log_{col}"] = np.log(v.where(v > 0))
    t["tail_gap"] = t["tail_accuracy"] - t["chance_accuracy"]
    cells = cell_trends(t)
    deg_cells = cells[(cells["freeze"] == "none") & (cells["trend"] == DEGRADING)]
    keys = ["task", "model", "freeze"]
    deg = t.merge(deg_cells[keys], on=keys) if len(deg_cells) else t.iloc[:0]
    full = t[t["freeze"] == "none"]
    memory = t[t["model"] != "lstm"]
    cm = memory[memory["freeze"] == "c"]
    pair = _paired(memory, "c", "none").reset_index() if len(memory) else pd.DataFrame()
    pair = (pair.assign(freeze="c - none", diff=pair["c"] - pair["none"]) if len(pair) else
            pd.DataFrame(columns=["task", "model", "seed", "freeze", "diff"]))
    restarts = int(t["seed"].nunique())
    rows = []

    def add(check, thm, prediction, runs, col, kind, bound, decided, measure, run_holds, possible=(-np.inf, np.inf)):
        per, used = restart_means(runs, col)
        out = restart_claim(per, kind, bound, possible)
        if out["verdict"] == NO_CELL and restarts < 2:  # no cell could be called degrading with one restart
            out.update(verdict=UNSURE, note=f"the cells cannot be selected. {design_note(restarts)}")
        n = len(runs)
        rows.append({"check": check, "theorem": thm, "prediction": prediction, "measure": measure,
                     "decided by": decided, "cells": used, **out, "runs": n,
                     "share (descriptive)": float(np.mean(run_holds)) if n else float("nan")})

    lim = f"{1 + GROWTH_TOL:g}"
    add("full_stable", "3.5", "fully trained models are stable: no rise of the loss from the training lengths "
        "to 2-4x them", full, "long_short", "below", NO_RISE, f"upper limit < {NO_RISE:g}", "long_short",
        full["long_short"] <= NO_RISE)
    if t["long_rho_untrained"].notna().any():  # computed (untrained models evaluated)
        add("deg_near_untrained", "3.4/3.5", "a degrading model's long-range loss is close to its untrained "
            "model's", deg, "log_long_rho_untrained", "within", CLOSE_LOG,
            f"interval within ±log {1 + CLOSE:g}", "log long_rho_untrained",
            deg["log_long_rho_untrained"].abs() <= CLOSE_LOG)
    add("deg_near_chance", "3.4/3.5", "a degrading model's long-range loss is close to chance's", deg,
        "log_long_rho", "within", CLOSE_LOG, f"interval within ±log {1 + CLOSE:g}", "log long_rho",
        deg["log_long_rho"].abs() <= CLOSE_LOG)
    add("deg_superlinear", "3.6", "a degrading model grows super-linearly", deg, "b", "above", 1 + GROWTH_TOL,
        f"lower limit > {lim}", "b", deg["b"] > 1 + GROWTH_TOL)
    add("deg_superlinear_onset", "3.7", "a degrading model grows super-linearly over the onset range", deg,
        "b_onset", "above", 1 + GROWTH_TOL, f"lower limit > {lim}", "b_onset", deg["b_onset"] > 1 + GROWTH_TOL)
    add("c_at_most_linear", "3.6", "a controller-frozen memory model grows at most linearly", cm, "b", "below",
        1 + GROWTH_TOL, f"upper limit < {lim}", "b", cm["b"] <= 1 + GROWTH_TOL)
    add("c_beats_none", "3.6", "controller-frozen beats fully trained on the long range (paired by task, model "
        "and restart)", pair, "diff", "below", 0.0, "upper limit < 0", "long_rho (c - none)", pair["diff"] < 0)
    add("deg_near_zero_past", "3.7", "a degrading model is near zero just past the training length", deg,
        "just_past_rho", "below", NEAR_ZERO, f"upper limit < {NEAR_ZERO:g}", "just_past_rho",
        deg["just_past_rho"] <= NEAR_ZERO)
    add("deg_tail_ce", "3.7", "a degrading model's loss on the longest strings is at least chance's", deg,
        "log_tail_rho", "above", -CLOSE_LOG, f"lower limit > -log {1 + CLOSE:g}", "log tail_rho",
        deg["log_tail_rho"] > -CLOSE_LOG)
    add("deg_tail_accuracy", "3.7", "a degrading model's accuracy on the longest strings is at most chance's",
        deg, "tail_gap", "below", MARGIN, f"upper limit < {MARGIN:g}", "tail_accuracy - chance",
        deg["tail_gap"] < MARGIN, (-1.0, 1.0))
    return pd.DataFrame(rows, columns=["check", *CHECK_COLUMNS]).set_index("check")


def stable_cells(table: pd.DataFrame, df: pd.DataFrame, split: str) -> pd.DataFrame:
    """The (task, model, freeze) cells with at least one run the criteria call stable, each judged over
    *all* its restarts on ``split`` (the last test bin) by the book's one rule (:mod:`marnn.verdicts`):
    above the best trivial predictor (95% t interval over restarts, :func:`marnn.verdicts.positions`) and
    equal to repeat-previous (two one-sided tests within :data:`marnn.verdicts.MARGIN`,
    :func:`marnn.verdicts.baseline_equality`). A run is one restart, so no verdict is drawn per run.

    ``table``: :func:`run_table`; ``df``: the store's tidy rows of the same runs (``report.formal_results``).
    Columns: task, model, freeze, stable (stable runs of the cell's restarts), mean - trivial [interval],
    vs trivial (above / not above / cannot tell), repeat-previous [interval] (mean - repeat-previous),
    at repeat-previous (at a baseline / above / below / cannot tell)."""
    from .. import report, verdicts

    keys = ["task", "model", "freeze"]
    cols = keys + ["stable", "mean − trivial [95% interval over restarts]", "vs trivial",
                   "mean − repeat-previous [95% interval]", "at repeat-previous"]
    stable = table[table["verdict"] == "stable"]
    if stable.empty:
        return pd.DataFrame(columns=cols)
    runs = table.groupby(keys)["seed"].nunique()
    cells = stable.groupby(keys)["seed"].nunique()
    pos = verdicts.positions(df, [dict(zip(keys, c, strict=True)) for c in cells.index], split)
    refs = report.references_long(df)
    repeat = refs[(refs["reference"] == "repeat-previous") & (refs["split"] == split)]
    rows = []
    for r in pos.to_dict("records"):
        cell = {k: r[k] for k in keys}
        eq = verdicts.baseline_equality(df, repeat, cell)
        eq = eq[eq["split"] == split]
        rows.append({**cell, "stable": f"{cells[tuple(cell.values())]} of {runs[tuple(cell.values())]}",
                     "mean − trivial [95% interval over restarts]": r["mean − trivial [95% interval over restarts]"],
                     "vs trivial": r["vs trivial"],
                     "mean − repeat-previous [95% interval]": eq["interval"].iloc[0] if len(eq) else "-",
                     "at repeat-previous": eq["position"].iloc[0] if len(eq) else "no reference"})
    return report.order(pd.DataFrame(rows, columns=cols))


def _paired(table: pd.DataFrame, a: str, b: str, col: str = "long_rho") -> pd.DataFrame:
    """``col`` of modes ``a`` and ``b`` side by side per (task, model, seed)."""
    part = table[table["freeze"].isin([a, b])]
    wide = part.pivot_table(index=["task", "model", "seed"], columns="freeze", values=col, aggfunc="first")
    return wide.dropna(subset=[m for m in (a, b) if m in wide.columns]).reindex(columns=[a, b]).dropna()


# ---- perturbation robustness and unseen patterns (trained weights) -------------------------------
PERTURB_SEED = 31  # the perturbation strings' own stream, apart from the test bins'


def perturbation_strings(task: str, lengths: tuple[int, int], per_length: int, seed: int = PERTURB_SEED):
    """Clean members and their one-symbol corruptions, with the positions each target depends on.

    For every valid length in ``lengths`` (closed), ``per_length`` uniformly
    random members. In each, a free bit ``j`` is drawn uniformly and the
    symbol at its *first* occurrence (position ``i``, inside ``w``) is swapped
    for the bit's other symbol. Yields dicts with ``length``, ``clean`` and
    ``corrupt`` (lists of symbols), ``pos`` (``i``), ``affected`` (target
    positions > i that the template ties to bit ``j``: later copies of the
    corrupted symbol) and ``unaffected`` (target positions > i, EOS included,
    that are *determined* given the length and the earlier symbols and do not
    depend on bit ``j``: markers, copies of other bits, EOS). A language
    without free bits (count-3) has nothing to corrupt this way and raises
    ``ValueError``.
    """
    from .. import tasks as _tasks
    from ..scales import EVAL_SEED

    t = _tasks.get(task)
    rng = np.random.default_rng([zlib.crc32(t.name.encode()), EVAL_SEED, seed])
    out = []
    for n in t.valid_lengths(*lengths):
        k = t._check_length(n)
        if t.free_bits(k) == 0:
            raise ValueError(f"{task}: strings have no free symbols, so a one-symbol corruption has no "
                             f"language-implied effect to compare with")
        tpl = t.template(k)
        first: dict[int, int] = {}
        for p, tok in enumerate(tpl):
            if tok[0] == "w":
                first.setdefault(tok[1], p)
        for _ in range(per_length):
            bits = rng.integers(0, 2, size=t.free_bits(k)).tolist()
            clean = t.fill(k, bits)
            j = int(rng.integers(t.free_bits(k)))
            i = first[j]
            ren = tpl[i][2]
            corrupt = list(clean)
            corrupt[i] = ren[1 - bits[j]]
            affected, unaffected = [], []
            for p in range(i + 1, n + 1):  # target positions after the corrupted input; n = EOS
                tok = tpl[p] if p < n else ("lit", None)
                if tok[0] == "w" and tok[1] == j:
                    affected.append(p)
                elif tok[0] == "lit" or first[tok[1]] < p:
                    unaffected.append(p)
            out.append({"length": n, "clean": clean, "corrupt": corrupt, "pos": i, "bit": j,
                        "affected": affected, "unaffected": unaffected})
    return out


def training_strings(task: str, scale: str, data_seed: int = 0) -> set[tuple[str, ...]]:
    """Every string of the training split of ``(task, scale, data_seed)`` (as tuples of symbols)."""
    from .. import tasks as _tasks
    from ..tasks.data import make_task_data

    t = _tasks.get(task)
    data = make_task_data(t, scale, data_seed)
    names = t.outputs
    return {tuple(names[i] for i in row) for b in data.train for row in b.inputs.tolist()}


def perturbation_table(group, per_length: int = 20) -> pd.DataFrame:
    """Robustness to a one-symbol corruption and the unseen-pattern gap, per replica of a trained group.

    **The project's operationalisation** (the paper names the criteria but
    defines no measurement). On the strings of :func:`perturbation_strings`
    (training lengths, so that the clean predictions are as good as the model
    gets), with argmax predictions of the replica on the clean and on the
    corrupted string:

    * ``clean_acc`` / ``corrupt_acc``: accuracy on the *unaffected* targets
      (the language says their answer does not change); ``drop`` =
      ``clean_acc - corrupt_acc``; a model that computes the language's
      function has ``drop = 0`` whatever it saw at position ``i``;
    * ``agreement``: share of unaffected targets where the two predictions are
      equal (ideal 1);
    * ``follows``: on the affected targets (later copies of the corrupted
      symbol), the share predicted as the *corrupted* symbol, i.e. the model
      copies what it was shown (ideal 1; ``affected_clean_acc`` is the same
      targets' accuracy on the clean string, for scale);
    * ``unseen_gap``: unseen patterns, the other weights-only criterion: mean
      per-symbol cross-entropy on clean strings that do *not* occur in the
      training split minus that on strings that do, per length then averaged
      over the lengths that have both (nats; ideal 0). NaN when no length has
      both kinds.

    ``group``: :class:`marnn.analysis.weights.Group`. Returns one row per
    replica with its config ids and key.
    """
    import torch
    import torch.nn.functional as F

    from .. import store
    from .. import tasks as _tasks

    cfg0 = group.configs[0]
    task, scale = cfg0["task"], cfg0["scale"]
    t = _tasks.get(task)
    index = {s: i for i, s in enumerate(t.outputs)}
    lo, hi = tuple(cfg0["scale_fields"]["train_lengths"])
    items = perturbation_strings(task, (lo, hi), per_length)
    seen = training_strings(task, scale, cfg0.get("data_seed", 0))
    R = len(group.configs)
    tot = {k: np.zeros(R) for k in ("u", "u_clean", "u_corrupt", "u_agree", "a", "a_follow", "a_clean")}
    ce_seen: dict[int, list] = {}
    by_len: dict[int, list[dict]] = {}
    for it in items:
        by_len.setdefault(it["length"], []).append(it)
    group.model.eval()
    with torch.no_grad():
        for n, batch in sorted(by_len.items()):
            clean = torch.tensor([[index[s] for s in it["clean"]] for it in batch])  # (B, n)
            corrupt = torch.tensor([[index[s] for s in it["corrupt"]] for it in batch])  # (B, n)
            targets = torch.cat([clean, torch.full((len(batch), 1), index[_tasks.EOS])], 1)  # (B, n+1)
            lc = group.model(clean).logits  # (R, B, n+1, V)
            lx = group.model(corrupt).logits
            pc, px = lc.argmax(-1).numpy(), lx.argmax(-1).numpy()  # (R, B, n+1)
            nll = F.cross_entropy(lc.reshape(-1, lc.shape[-1]).float(), targets.expand(R, -1, -1).reshape(-1),
                                  reduction="none").view(R, len(batch), n + 1).double().mean(-1).numpy()  # (R, B)
            tg = targets.numpy()
            for b, it in enumerate(batch):
                u, a = it["unaffected"], it["affected"]
                if u:
                    tot["u"] += len(u)
                    tot["u_clean"] += (pc[:, b, u] == tg[b, u]).sum(-1)
                    tot["u_corrupt"] += (px[:, b, u] == tg[b, u]).sum(-1)
                    tot["u_agree"] += (pc[:, b, u] == px[:, b, u]).sum(-1)
                if a:
                    flipped = np.array([index[_flip(t, it, p)] for p in a])
                    tot["a"] += len(a)
                    tot["a_follow"] += (px[:, b, a] == flipped).sum(-1)
                    tot["a_clean"] += (pc[:, b, a] == tg[b, a]).sum(-1)
                ce_seen.setdefault(n, []).append((tuple(it["clean"]) in seen, nll[:, b]))
    gaps = []
    for _, vals in sorted(ce_seen.items()):
        s = [v for flag, v in vals if flag]
        u = [v for flag, v in vals if not flag]
        if s and u:
            gaps.append(np.mean(u, 0) - np.mean(s, 0))
    gap = np.mean(gaps, 0) if gaps else np.full(R, np.nan)
    n_seen = sum(flag for vals in ce_seen.values() for flag, _ in vals)
    rows = []
    for r, c in enumerate(group.configs):
        rows.append({"key": store.config_key(c), "task": task, "model": c["model"], "freeze": c["freeze"],
                     "seed": c["seed"], "strings": len(items), "seen": n_seen,
                     "clean_acc": tot["u_clean"][r] / tot["u"][r], "corrupt_acc": tot["u_corrupt"][r] / tot["u"][r],
                     "drop": (tot["u_clean"][r] - tot["u_corrupt"][r]) / tot["u"][r],
                     "agreement": tot["u_agree"][r] / tot["u"][r],
                     "follows": tot["a_follow"][r] / tot["a"][r] if tot["a"][r] else float("nan"),
                     "affected_clean_acc": tot["a_clean"][r] / tot["a"][r] if tot["a"][r] else float("nan"),
                     "unseen_gap": float(gap[r])})
    return pd.DataFrame(rows)


def _flip(task, item: dict, p: int) -> str:
    """The symbol at target position ``p`` (a copy of the corrupted bit) in the corrupted reading."""
    tok = task.template(task.k_of(item["length"]))[p]
    ren = tok[2]
    return ren[1 - ren.index(item["clean"][p])]


# ---- tables for the book page (its figures: marnn.plotting) ------------------------------------------
def rules() -> pd.DataFrame:
    """The criteria, what each measures and when it passes, from the module's constants: the per-run labels
    (descriptive) and the cell trends over restarts that select the degrading cells."""
    rows = [
        ("(a) bounded", "max over test lengths of rho = e / (chance excess)", f"max_rho <= {BOUND_RHO:g}"),
        ("(b) low variance", "std of rho over test lengths", f"std_rho <= {STD_RHO:g}"),
        ("(c) long vs short", "mean rho on [2 hi, 4 hi] minus mean rho on [lo, hi]",
         f"long_short <= {NO_RISE:g} (>= {DEGRADES:g}: degradation)"),
        ("(d) growth rate", f"b of E(n) ~ a n^b + c over the test range (tolerance {GROWTH_TOL:g})",
         f"not super-linear (b <= {1 + GROWTH_TOL:g}, or flat)"),
        ("(e) not untrained (Thm 3.4)", "mean rho on [2 hi, 4 hi], against chance and the untrained model",
         f"long_rho <= {LEARNED:g} and long_rho_untrained <= {LEARNED:g}"),
        ("run label (descriptive): stable", "one run", "(a)-(e) all pass"),
        ("run label (descriptive): unstable", "one run", f"long_short >= {DEGRADES:g} or super-linear growth"),
        ("run label (descriptive): undecided", "one run", "anything else"),
        ("cell over restarts: degrades", "restart mean of long_short, 95% t interval",
         f"lower limit > {DEGRADES:g}"),
        ("cell over restarts: does not rise", "restart mean of long_short, 95% t interval",
         f"upper limit < {NO_RISE:g}"),
    ]
    return pd.DataFrame(rows, columns=["criterion", "measure", "passes when"]).set_index("criterion")


def mode_profile(lengths: pd.DataFrame, width: int = 5, col: str = "rho") -> pd.DataFrame:
    """Median and quartiles of ``col`` per freeze mode and length group of ``width`` (runs pooled)."""
    part = lengths.assign(group=(lengths["length"] // width) * width + (width - 1) / 2)
    g = part.groupby(["freeze", "group"])[col]
    out = pd.DataFrame({"median": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75), "runs": g.size()})
    return out.reset_index()


def untrained_table(records: Iterable[dict], untrained: Mapping[tuple, Sequence[Mapping]]) -> pd.DataFrame:
    """Per (task, model, seed): the untrained model's mean rho over the whole test range and the long range,
    i.e. how far an untrained model sits from uniform guessing (1 = exactly as bad)."""
    rows, done = [], set()
    for rec in records:
        c = rec["config"]
        cell = (c["task"], c["model"], c["seed"])
        if cell in done or cell not in untrained:
            continue
        done.add(cell)
        prof = _arrays({**rec, "lengths": list(untrained[cell])})
        rg = ranges(train_lengths(rec), int(prof["length"].max()))
        rows.append({"task": cell[0], "model": cell[1], "seed": cell[2], "rho": _mean(prof, "rho"),
                     "long_rho": _mean(_in(prof, rg["long"]), "rho"), "accuracy": _mean(prof, "accuracy")})
    return pd.DataFrame(rows, columns=["task", "model", "seed", "rho", "long_rho", "accuracy"])


def theorem_readings(verdict: Mapping[str, str], mean: Mapping[str, float]) -> list[str]:
    """The sentences that read the theorem checks together (``verdict`` and ``mean`` per check id, as
    the checks table gives them): one for each pattern the verdicts show, none when none does."""
    from .. import verdicts

    out = []
    if verdict["deg_superlinear_onset"] == verdicts.HOLDS != verdict["deg_superlinear"]:
        out.append("The excess rises steeply once the training lengths are left behind and then levels off, so "
                   "the per-string loss turns linear with a large offset: whether the growth looks super-linear "
                   "depends on the window it is fitted on.")
    if verdict["deg_near_zero_past"] == verdicts.FAILS:
        out.append("There is no near-zero phase: the loss is already rising just past the training lengths.")
    if verdict["deg_tail_ce"] == verdicts.HOLDS and verdict["deg_tail_accuracy"] == verdicts.FAILS:
        out.append("On the longest strings the models are confidently wrong: worse than guessing in "
                   "cross-entropy, better in accuracy.")
    if verdict["deg_near_chance"] == verdicts.FAILS and mean["deg_near_chance"] > 0:
        out.append("Degrading models do not drift towards an untrained model (whose loss is uniform guessing's, "
                   "see above); they overshoot it.")
    return out


def robustness_readings(claims: pd.DataFrame, by_mode: pd.DataFrame) -> list[str]:
    """The sentences that read the robustness claims (:func:`perturbation_claims`) together, with the
    agreement and follow rates of modes none and c (``by_mode``: indexed by freeze mode)."""
    from .. import verdicts

    said = claims["verdict"]

    def rate(mode: str, column: str) -> float:
        return float(by_mode.loc[mode, column]) if mode in by_mode.index else float("nan")

    out = []
    if said["c_agrees_more"] == verdicts.HOLDS and said["c_follows_less"] == verdicts.HOLDS:
        out.append(f"The frozen controllers look more robust, but they copy the corrupted symbol into its later "
                   f"copies less often than the trained ones ({rate('c', 'follows'):.0%} against "
                   f"{rate('none', 'follows'):.0%}): their predictions move less because they use the input "
                   f"less, the same pattern as their flat loss against length.")
    if said["none_follows_short"] == verdicts.HOLDS:
        out.append("Not even the trained models act like the language's automaton, which would copy the "
                   "corruption every time and change nothing else.")
    if said["none_changes_others"] == verdicts.HOLDS:
        out.append(f"A single wrong symbol changes {1 - rate('none', 'agreement'):.0%} of the fully trained "
                   f"models' other predictions.")
    return out


def perturbation_summary(perturbed: pd.DataFrame, table: pd.DataFrame | None = None,
                         by: Sequence[str] = ("model", "freeze")) -> pd.DataFrame:
    """Means of :func:`perturbation_table`'s measures per group; with ``table`` (:func:`run_table` of the
    same runs, joined on ``key``) also the verdict counts of those runs."""
    from ..report import order

    cols = ["clean_acc", "corrupt_acc", "drop", "agreement", "follows", "unseen_gap"]
    frame = perturbed
    if table is not None:
        frame = perturbed.merge(table[["key", "verdict"]], on="key", how="left")
    g = frame.groupby(list(by), sort=False)
    out = g[cols].mean()
    out.insert(0, "runs", g.size())
    if table is not None:
        for v in VERDICTS:
            out[v] = g["verdict"].apply(lambda s, v=v: int((s == v).sum()))
    return order(out.reset_index()).set_index(list(by))


def perturbation_claims(perturbed: pd.DataFrame) -> pd.DataFrame:
    """What the page says about robustness, each decided over restarts like :func:`theorem_checks`.

    ``perturbed``: :func:`perturbation_table` of several groups (columns task, model, freeze, seed,
    agreement, follows). Rows (index ``claim``): ``c_agrees_more`` / ``c_follows_less``: controller-frozen
    runs keep more of their other predictions / copy the corruption less often than the fully trained run
    of the same language, model and restart (paired, margin 0); ``none_follows_short`` /
    ``none_changes_others``: fully trained runs copy the corruption less often / keep fewer of their other
    predictions than the language's automaton does (1), by more than :data:`marnn.verdicts.MARGIN`.
    Columns as :func:`theorem_checks`'."""
    from ..verdicts import MARGIN

    rows = []

    def add(claim, text, runs, col, kind, bound, decided, measure=None):
        per, used = restart_means(runs, col)
        possible = (-1.0, 1.0) if col == "diff" else (0.0, 1.0)  # shares of targets, or their differences
        rows.append({"claim": claim, "prediction": text, "measure": measure or col, "decided by": decided,
                     "cells": used, **restart_claim(per, kind, bound, possible), "runs": len(runs)})

    for col, claim, kind, text in (("agreement", "c_agrees_more", "above", "keep more of their other predictions"),
                                   ("follows", "c_follows_less", "below", "copy the corrupted symbol less often")):
        pair = _paired(perturbed, "c", "none", col).reset_index() if len(perturbed) else pd.DataFrame()
        pair = (pair.assign(freeze="c - none", diff=pair["c"] - pair["none"]) if len(pair) else
                pd.DataFrame(columns=["task", "model", "seed", "freeze", "diff"]))
        add(claim, f"controller-frozen runs {text} than fully trained ones (paired)", pair, "diff", kind, 0.0,
            f"{'lower' if kind == 'above' else 'upper'} limit {'>' if kind == 'above' else '<'} 0", f"{col} (c - none)")
    full = perturbed[perturbed["freeze"] == "none"] if len(perturbed) else perturbed
    add("none_follows_short", "fully trained runs copy the corruption less often than the automaton (1)", full,
        "follows", "below", 1 - MARGIN, f"upper limit < {1 - MARGIN:g}")
    add("none_changes_others", "fully trained runs change other predictions, which the automaton never does",
        full, "agreement", "below", 1 - MARGIN, f"upper limit < {1 - MARGIN:g}")
    cols = ["prediction", "measure", "decided by", "cells", "restarts", "mean", "lo", "hi", "verdict", "note",
            "runs"]
    return pd.DataFrame(rows, columns=["claim", *cols]).set_index("claim")
