"""The one comparison rule of the book: "A is better than B", with its uncertainty.

Every page and the audit decide a comparison the same way:

1. **Paired data.** A and B are compared on the same task, split and test
   strings; our runs are matched by restart seed (seed ``s`` of A against
   seed ``s`` of B: same learning rate, same data) and, where the records hold
   per-length metrics, by string length (the test strings of a length are the
   same for every run of a task).
2. **An interval for the difference.** Ours: a paired bootstrap over restarts
   and over the test lengths (each length a cluster of test strings, weighted by
   its symbols), :data:`BOOT` resamples with the fixed seed :data:`SEED`, a
   :data:`LEVEL` percentile interval of the difference of restart means. One run
   without per-length data measures no noise: no interval. The paper's side:
   its numbers are rounded (two decimals for accuracies, one for perplexities),
   so the difference is known to within twice half a unit.
3. **A verdict** from the interval (:func:`decide`): ``holds`` when the whole
   interval says A is better, ``does not hold`` when it excludes A being better
   (A worse, or equal on every resample), ``cannot tell at this scale`` otherwise.
4. **Counts** over languages or pairs come with an exact sign test
   (:func:`sign_test`, :func:`count`): the pairs that hold against those that do
   not, undecided ones left out.
5. Pairs that are **identical by construction** (a model without memory in modes
   ``m`` and ``none``, or ``c`` and ``cm``) are excluded and counted as such.

Everything is deterministic: same data, same interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

HOLDS = "holds"
FAILS = "does not hold"
UNSURE = "cannot tell at this scale"
EXCLUDED = "identical by construction"
VERDICTS = (HOLDS, FAILS, UNSURE)

LEVEL = 0.95  # two-sided level of every interval
ALPHA = 0.05  # level of the sign test (one-sided, each direction)
BOOT = 2000  # bootstrap resamples
SEED = 0  # the bootstrap's fixed seed
ACC_HALF = 0.005  # the paper prints accuracies with two decimals
PPL_HALF = 0.05  # Table 3 prints perplexities with one decimal
NO_MEMORY = ("lstm", "lstm-256")  # models with nothing for mode m to freeze
SAME_PAIRS = (frozenset({"none", "m"}), frozenset({"c", "cm"}))


@dataclass(frozen=True)
class Verdict:
    """One comparison "A better than B": the difference (positive = A better), its interval, the verdict."""

    difference: float
    lo: float
    hi: float
    verdict: str
    method: str
    pairs: int = 1  # paired restarts that entered (1 for the paper's numbers)

    @property
    def sign(self) -> int:
        """+1 when the comparison holds, -1 when it does not, 0 when undecided or excluded."""
        return {HOLDS: 1, FAILS: -1}.get(self.verdict, 0)

    def text(self, digits: int = 2) -> str:
        """'+0.031 [-0.010, +0.072]' (no interval: the difference alone, flagged)."""
        if self.verdict == EXCLUDED:
            return "excluded (identical runs)"
        if not np.isfinite(self.lo) or not np.isfinite(self.hi):
            return f"{self.difference:+.{digits}f} (one run: no interval)"
        return f"{self.difference:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def decide(lo: float, hi: float, margin: float = 0.0) -> str:
    """The rule: ``holds`` if lo > margin, ``does not hold`` if hi <= margin, else ``cannot tell``."""
    if lo > margin:
        return HOLDS
    if hi <= margin:
        return FAILS
    return UNSURE


def identical_by_construction(model: str, a: str, b: str, embedding_group: str | None = None) -> bool:
    """Whether modes ``a`` and ``b`` of ``model`` are the same run (a model without memory, where
    freezing the memory freezes nothing; an embedding in the memory group is something to freeze)."""
    return model in NO_MEMORY and embedding_group != "memory" and frozenset({a, b}) in SAME_PAIRS


def paired_bootstrap(a, b, weights=None, *, higher: bool = True, boot: int = BOOT, seed: int = SEED,
                     level: float = LEVEL) -> Verdict:
    """Compare runs ``a`` and ``b``: arrays (restarts, lengths) paired by row and column.

    ``weights`` (lengths,): symbols per length (default equal). The difference is
    the mean over restarts of the weighted mean over lengths of ``a - b`` (sign
    flipped when ``higher`` is False: lower is better, as for perplexity).
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty arrays of one shape, got {a.shape} and {b.shape}")
    r, u = a.shape
    w = np.ones(u) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (u,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {u} non-negative numbers with a positive sum, got {w!r}")
    d = (a - b) if higher else (b - a)
    point = float((d @ w).mean() / w.sum())
    method = f"paired bootstrap over {r} restart{'s' * (r != 1)} x {u} length{'s' * (u != 1)}"
    if r * u < 2:
        return Verdict(point, -np.inf, np.inf, UNSURE, "one run, one number: no noise measured", r)
    rng = np.random.default_rng(seed)
    cr = rng.multinomial(r, np.full(r, 1 / r), size=boot)  # (B, R) restart counts
    cu = rng.multinomial(u, np.full(u, 1 / u), size=boot)  # (B, U) length counts
    num = np.einsum("br,ru,bu->b", cr, d * w, cu)
    den = r * (cu @ w)
    stats = num[den > 0] / den[den > 0]
    q = (1 - level) / 2
    lo, hi = (float(x) for x in np.quantile(stats, [q, 1 - q]))
    lo, hi = min(lo, point), max(hi, point)
    return Verdict(point, lo, hi, decide(lo, hi), method, r)


def rounded(a: float, b: float, half: float = ACC_HALF, *, higher: bool = True) -> Verdict:
    """Compare two printed numbers, each rounded to within ``half``: the difference +- 2 * half."""
    d = (a - b) if higher else (b - a)
    if not (np.isfinite(a) and np.isfinite(b)):
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "missing number", 0)
    lo, hi = d - 2 * half, d + 2 * half
    return Verdict(float(d), float(lo), float(hi), decide(lo, hi), f"printed numbers, each +-{half:g}", 1)


def excluded() -> Verdict:
    return Verdict(0.0, 0.0, 0.0, EXCLUDED, "identical by construction", 0)


# ---- counts -------------------------------------------------------------------------------
def sign_test(k: int, n: int) -> float:
    """One-sided exact sign test: P(X >= k) for X ~ Binomial(n, 1/2) (1.0 when n = 0)."""
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"sign_test needs 0 <= k <= n, got k={k}, n={n}")
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n) if n else 1.0


@dataclass(frozen=True)
class Count:
    """How many comparisons hold, do not hold, are undecided or excluded; the sign test; the verdict."""

    holds: int
    fails: int
    unsure: int
    excluded: int
    p: float  # one-sided sign test that holds outnumber fails
    p_against: float  # ... that fails outnumber holds
    verdict: str

    @property
    def total(self) -> int:
        return self.holds + self.fails + self.unsure

    def text(self, what: str) -> str:
        """'holds for 3 of 7 languages, does not for 1, undecided 3 (sign test p = 0.31)'."""
        out = (f"holds for {self.holds} of {self.total} {what}, does not for {self.fails}, "
               f"cannot tell for {self.unsure} (sign test p = {self.p:.2g})")
        if self.excluded:
            out += f"; {self.excluded} identical by construction left out"
        return out


def count(verdicts: Iterable[Verdict], alpha: float = ALPHA) -> Count:
    """Sign test over decided comparisons: ``holds`` if the holds are significantly more than the
    fails (one-sided exact binomial, ``alpha``), ``does not hold`` if the reverse, else ``cannot tell``."""
    vs = list(verdicts)
    k = sum(v.verdict == HOLDS for v in vs)
    f = sum(v.verdict == FAILS for v in vs)
    un = sum(v.verdict == UNSURE for v in vs)
    ex = sum(v.verdict == EXCLUDED for v in vs)
    p, q = sign_test(k, k + f), sign_test(f, k + f)
    verdict = HOLDS if p < alpha else (FAILS if q < alpha else UNSURE)
    return Count(k, f, un, ex, p, q, verdict)


# ---- reading our runs -----------------------------------------------------------------------
def _cell(df: pd.DataFrame, split: str, metric: str, **where) -> pd.DataFrame:
    part = df[(df["split"] == split) & (df["metric"].isin([metric, "symbols"]))]
    for col, val in where.items():
        part = part[part[col] == val]
    return part[~part["diverged"].astype(bool)]


def run_matrix(df: pd.DataFrame, split: str, metric: str = "accuracy", **where) -> tuple[pd.DataFrame, pd.Series]:
    """Per restart (rows, by seed) and test length (columns): ``metric`` of the runs of ``df`` (tidy
    store rows) that match ``where``; and the symbols per length. Without per-length rows: one column."""
    part = _cell(df, split, metric, **where)
    per_len = part[part["length"].notna()]
    src = per_len if len(per_len) else part[part["length"].isna()]
    key = src["length"].fillna(-1)
    vals = src[src["metric"] == metric].assign(L=key).pivot_table(index="seed", columns="L", values="value",
                                                                   aggfunc="first")
    sym = src[src["metric"] == "symbols"].assign(L=key).groupby("L")["value"].first()
    sym = sym.reindex(vals.columns).fillna(1.0) if len(sym) else pd.Series(1.0, index=vals.columns)
    return vals, sym


def compare_runs(df: pd.DataFrame, split: str, a: dict, b: dict, metric: str = "accuracy", *,
                 higher: bool = True, db: pd.DataFrame | None = None) -> Verdict:
    """Our runs: cell ``a`` better than cell ``b`` (dicts of column values, e.g. task, model, freeze)
    on ``split``, paired by seed and length. ``db``: B's frame if not ``df``."""
    model_a, model_b = a.get("model"), b.get("model")
    if model_a == model_b and a.get("task") == b.get("task") and identical_by_construction(
            model_a, a.get("freeze"), b.get("freeze"), a.get("embedding_group")):
        return excluded()
    va, wa = run_matrix(df, split, metric, **a)
    vb, _ = run_matrix(df if db is None else db, split, metric, **b)
    seeds = [s for s in va.index if s in vb.index]
    cols = [c for c in va.columns if c in vb.columns]
    if not seeds or not cols:
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "no paired runs", 0)
    A, B = va.loc[seeds, cols].to_numpy(), vb.loc[seeds, cols].to_numpy()
    ok = ~(np.isnan(A).any(axis=0) | np.isnan(B).any(axis=0))
    return paired_bootstrap(A[:, ok], B[:, ok], wa[cols].to_numpy()[ok], higher=higher)


def against_value(df: pd.DataFrame, split: str, cell: dict, value: float, metric: str = "accuracy", *,
                  higher: bool = True) -> Verdict:
    """Our runs of ``cell`` better than a fixed number (a baseline, a ceiling): the same bootstrap,
    with the number on every restart and length."""
    va, w = run_matrix(df, split, metric, **cell)
    if va.empty:
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "no runs", 0)
    A = va.to_numpy()
    ok = ~np.isnan(A).any(axis=0)
    return paired_bootstrap(A[:, ok], np.full_like(A[:, ok], value), w.to_numpy()[ok], higher=higher)


def verdict_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows of ``{..., "verdict": Verdict}`` as a table: the keys, difference [interval], verdict."""
    out = []
    for r in rows:
        v: Verdict = r["verdict"]
        out.append({**{k: x for k, x in r.items() if k != "verdict"}, "difference [95% interval]": v.text(),
                    "verdict": v.verdict})
    return pd.DataFrame(out)


def position(df: pd.DataFrame, split: str, cell: dict, baseline: float, ceiling: float,
             ceiling_exact: bool = True) -> str:
    """Where our runs of ``cell`` sit: above / at / below the best trivial predictor, and the gap to the
    ceiling (marked as an upper bound where it is not exact), each with its interval."""
    above = against_value(df, split, cell, baseline)
    below = against_value(df, split, cell, ceiling, higher=False)
    where = {HOLDS: "above", FAILS: "not above", UNSURE: "not distinguishable from"}[above.verdict]
    top = "ceiling" if ceiling_exact else "upper bound on the ceiling"
    gap = "below" if below.verdict == HOLDS else "not below"
    return (f"{where} the best trivial predictor ({baseline:.2f}; {above.text()}), "
            f"{gap} the {top} ({ceiling:.2f}; {-below.difference:+.2f})")
