"""The one comparison rule of the book: "A is better than B", with its uncertainty.

Every page and the audit decide a comparison the same way:

1. **The unit is a restart.** Our runs are matched by restart seed (seed ``s``
   of A against seed ``s`` of B). Per restart, the difference A - B is averaged
   over the bin's test lengths (each length weighted by its symbols, so the
   average is the bin's accuracy difference): one number per restart. The test
   strings and lengths are the same for every run, so they are fixed, not
   sampled: only restarts carry the randomness the interval must cover
   (:func:`restart_differences`).
2. **An interval over restarts.** A :data:`LEVEL` t interval for the mean of
   the ``R`` restart differences, with ``R - 1`` degrees of freedom
   (:func:`t_limits`). It is exact when the restart differences are normal;
   ``tests/test_verdicts.py`` checks its false-decision rate, coverage and power
   by simulation at the noise sizes of the quick records. Beside it, the exact
   two-sided sign-flip test (:func:`sign_flip_p`), which needs only symmetry:
   its smallest p is ``2 / 2**R`` (0.25 with 3 restarts, 0.0625 with 5), so by
   signs alone no difference can be declared at 95% below 6 restarts
   (:func:`design_note` says so on the pages). One restart: no interval, no
   decision.
3. **A verdict** from the interval (:func:`decide`): ``holds`` when the whole
   interval says A is better (a one-sided test at ``(1 - LEVEL) / 2``),
   ``does not hold`` when it excludes A being better, ``cannot tell at this
   scale`` otherwise.
4. **Equality and magnitude claims** use the same interval: equal when it lies
   within ``+-`` :data:`MARGIN` (two one-sided tests, :func:`within`), a stated
   magnitude when it lies within the margin of the stated range; and *not
   comparable at this scale* when our bins are not the paper's
   (:func:`comparable`).
5. **The paper's side** (:func:`rounded`, :func:`printed_vs_exact`,
   :func:`printed_within`): its numbers are printed to two decimals (accuracies)
   or one (perplexities), each the best of 10 restarts. Two printed numbers that
   differ are ordered (rounding is monotone); equal printed numbers cannot be
   told apart; against an exact number of ours the margin is half a unit. These
   are rounding ranges, never called 95% intervals.
6. **Counts** over languages come with an exact sign test (:func:`sign_test`,
   :func:`count`) over independent units (one effect per language,
   :func:`language_verdicts`); headline claims are corrected together with
   Holm's method (:func:`holm`).
7. Pairs that are **identical by construction** (a model without memory in modes
   ``m`` and ``none``, or ``c`` and ``cm``) are excluded and counted as such.

Everything is deterministic: same data, same interval.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import registry, store

HOLDS = "holds"
FAILS = "does not hold"
UNSURE = "cannot tell at this scale"
UNSURE_PRINTED = "cannot tell from the printed numbers"  # the paper's side: its rounding leaves both signs open
EXCLUDED = "identical by construction"
NOT_TRAINED = "cannot tell (not trained yet)"  # a cell the store does not hold yet (marnn.coverage)
NOT_COMPARABLE = "not comparable at this scale"  # our bins are not the paper's: a magnitude cannot be compared
VERDICTS = (HOLDS, FAILS, UNSURE, UNSURE_PRINTED, NOT_COMPARABLE)

LEVEL = 0.95  # two-sided level of every interval (each one-sided decision at (1 - LEVEL) / 2)
ALPHA = (1 - LEVEL) / 2  # one-sided level of every decision, each direction: the interval's, the sign test's, Holm's
SEED = 0  # fixed seed of the permutation tests that sample
ACC_HALF = 0.005  # the paper prints accuracies with two decimals
PPL_HALF = 0.05  # Table 3 prints perplexities with one decimal
# Equality margin for accuracies: two units of the paper's last printed digit, and twice the largest standard
# error of one bin's accuracy over its test strings at the paper-2core scale (<= 0.01, marnn.scales): a gap
# this small is below what one test set resolves, so two accuracies within it are called equal.
MARGIN = 0.02
NO_MEMORY = ("lstm", "lstm-256")  # models with nothing for mode m to freeze
SAME_PAIRS = (frozenset({"none", "m"}), frozenset({"c", "cm"}))
EXACT_SIGN_FLIPS = 16  # up to this many restarts the sign-flip test enumerates every sign pattern


@dataclass(frozen=True)
class Verdict:
    """One comparison "A better than B": the difference (positive = A better), its interval, the verdict.

    ``p``: the exact two-sided sign-flip p-value over restarts (NaN on the paper's side)."""

    difference: float
    lo: float
    hi: float
    verdict: str
    method: str
    pairs: int = 1  # paired restarts that entered (1 for the paper's numbers)
    p: float = float("nan")
    p_t: float = float("nan")  # one-sided t-test p in the direction of the difference (what Holm adjusts)

    @property
    def sign(self) -> int:
        """+1 when the comparison holds, -1 when it does not, 0 when undecided or excluded."""
        return {HOLDS: 1, FAILS: -1}.get(self.verdict, 0)

    def text(self, digits: int = 2) -> str:
        """'+0.031 [-0.010, +0.072]' (no interval: the difference alone, flagged)."""
        if self.verdict == EXCLUDED:
            return "excluded (identical runs)"
        if self.verdict == NOT_TRAINED:
            return "not trained yet"
        if not np.isfinite(self.difference):
            return "no paired runs"
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


def within(lo: float, hi: float, target_lo: float = 0.0, target_hi: float = 0.0, margin: float = MARGIN) -> str:
    """Equality or a stated magnitude, by two one-sided tests on an interval: ``holds`` when [lo, hi] lies
    inside [target_lo - margin, target_hi + margin], ``does not hold`` when it lies wholly outside, else
    ``cannot tell``. With a :data:`LEVEL` interval each one-sided test is at (1 - LEVEL) / 2."""
    if margin < 0 or target_lo > target_hi:
        raise ValueError(f"within needs margin >= 0 and target_lo <= target_hi, got {margin}, "
                         f"[{target_lo}, {target_hi}]")
    a, b = target_lo - margin, target_hi + margin
    if lo >= a and hi <= b:
        return HOLDS
    if hi < a or lo > b:
        return FAILS
    return UNSURE


def identical_by_construction(model: str | None, a: str | None, b: str | None,
                              embedding_group: str | None = None) -> bool:
    """Whether modes ``a`` and ``b`` of ``model`` are the same run (a model without memory, where
    freezing the memory freezes nothing; an embedding in the memory group is something to freeze)."""
    return model in NO_MEMORY and embedding_group != "memory" and frozenset({a, b}) in SAME_PAIRS


# ---- inference over restarts ------------------------------------------------------------------------
def t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (a positive integer) degrees of freedom, t >= 0: the closed
    form for integer degrees of freedom (sums of powers of cos(atan(t / sqrt(df))))."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_central needs a positive integer number of degrees of freedom, got {df}")
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 cos^2 + (2*4)/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The ``t`` with P(|T| < t) = ``level`` (two-sided) for ``df`` degrees of freedom, by bisection."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_central(mid, df) < level else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def restart_differences(a, b, weights=None, *, higher: bool = True) -> np.ndarray:
    """Per restart, the weighted mean over lengths of ``a - b`` (``b - a`` when ``higher`` is False).

    ``a``, ``b``: arrays (..., restarts, lengths) paired by position; ``weights`` (lengths,): symbols per
    length (default equal). Returns (..., restarts). Vectorised over leading axes (simulations)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim < 2:
        a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"the paired rule needs two non-empty arrays of one shape (restarts, lengths), got "
                         f"{a.shape} and {b.shape}")
    u = a.shape[-1]
    w = np.ones(u) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (u,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {u} non-negative numbers with a positive sum, got {w!r}")
    d = (a - b) if higher else (b - a)
    # to 12 decimals: a run that equals a reference at every length differs by float residue (~1e-17) of the
    # weighted sum, which a zero-spread interval would otherwise turn into a decided sign
    return np.round((d @ w) / w.sum(), 12)


def t_limits(d, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the last axis of ``d`` (restarts) and its ``level`` t interval with R - 1 degrees of
    freedom: (mean, lo, hi), each of ``d``'s shape without the last axis. One restart: (-inf, inf)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = np.asarray(d, dtype=float)
    r = d.shape[-1]
    mean = d.mean(axis=-1)
    if r < 2:
        return mean, np.full_like(mean, -np.inf), np.full_like(mean, np.inf)
    se = d.std(axis=-1, ddof=1) / math.sqrt(r)
    half = t_quantile(level, r - 1) * se
    return mean, mean - half, mean + half


def clipped(lo: float, hi: float, low: float = -np.inf, high: float = np.inf) -> tuple[float, float, str]:
    """An interval cut to the range its quantity can take (a t interval knows no bounds: a drop of accuracy
    of 70% +- 60% would reach 130%). Returns (lo, hi, note); the note names the cut limits, '' when none.
    The true value lies in the range, so cutting keeps the interval's coverage and its decisions."""
    if not low <= high:
        raise ValueError(f"clipped needs low <= high, got {low} and {high}")
    cut = [name for name, out in (("lower", lo < low), ("upper", hi > high)) if out]
    lo, hi = float(min(max(lo, low), high)), float(max(min(hi, high), low))
    return lo, hi, (f"{' and '.join(cut)} limit cut at the possible range" if cut else "")


def restart_interval(a, b, weights=None, *, higher: bool = True, level: float = LEVEL):
    """(difference, lo, hi) of the rule for arrays (..., restarts, lengths): the t interval of the
    restart differences. The one place the interval is computed (the calibration tests check it)."""
    return t_limits(restart_differences(a, b, weights, higher=higher), level)


def sign_flip_p(d) -> float:
    """Exact two-sided sign-flip test that the restart differences ``d`` are centred on 0: the share of
    the 2^R sign patterns whose |sum| is at least the observed one (a fixed-seed sample of 2^16 patterns
    above :data:`EXACT_SIGN_FLIPS` restarts). Smallest possible value: 2 / 2^R."""
    d = np.asarray(d, dtype=float).ravel()
    if d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"sign_flip_p needs finite restart differences, got {d!r}")
    if d.size <= EXACT_SIGN_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(SEED).choice((1.0, -1.0), size=(2 ** 16, d.size))
    observed = abs(d.sum())
    return float(np.mean(np.abs(signs @ d) >= observed - 1e-12 * max(1.0, observed)))


def design_note(restarts: int, level: float = LEVEL) -> str:
    """What a comparison over ``restarts`` paired restarts can reach, as a sentence for the pages."""
    if restarts < 2:
        return (f"With {restarts} restart the spread over restarts is not measured: no interval, every "
                f"comparison is '{UNSURE}'.")
    t = t_quantile(level, restarts - 1)
    floor = 2 / 2 ** restarts
    signs = (f"the exact sign-flip test cannot go below p = {floor:.3g}, so by the signs of the restarts alone "
             f"no difference can be declared at {level:.0%}" if floor > 1 - level else
             f"the exact sign-flip test can reach p = {floor:.3g}")
    return (f"With {restarts} paired restarts the {level:.0%} interval is the mean restart difference ± "
            f"{t:.2f} standard errors (t with {restarts - 1} degrees of freedom; it assumes roughly normal "
            f"restart differences), and {signs}.")


def paired_restarts(a, b, weights=None, *, higher: bool = True, level: float = LEVEL) -> Verdict:
    """The rule for runs ``a`` and ``b``: arrays (restarts, lengths) paired by row and column.

    ``weights`` (lengths,): symbols per length (default equal). The difference is the mean over restarts of
    the weighted mean over lengths of ``a - b`` (sign flipped when ``higher`` is False: lower is better, as
    for perplexity); the interval is the t interval over restarts (:func:`restart_interval`)."""
    d = restart_differences(a, b, weights, higher=higher)
    r, u = np.atleast_2d(np.asarray(a)).shape
    point, lo, hi = (float(x) for x in t_limits(d, level))
    if r < 2:  # the spread over restarts is the larger noise: one restart cannot decide
        return Verdict(point, -np.inf, np.inf, UNSURE, "one restart: its noise is not measured", r)
    method = (f"t interval over {r} paired restarts ({r - 1} df), each the mean over {u} "
              f"length{'s' * (u != 1)}")
    sd = float(np.std(d, ddof=1))
    tval = abs(point) / (sd / math.sqrt(r)) if sd > 0 else (np.inf if point != 0 else 0.0)
    p_t = 0.0 if not np.isfinite(tval) else (1 - t_central(tval, r - 1)) / 2
    return Verdict(point, lo, hi, decide(lo, hi), method, r, sign_flip_p(d), float(p_t if point != 0 else 0.5))


# ---- the paper's side: printed numbers ---------------------------------------------------------------
def rounded(a: float, b: float, half: float = ACC_HALF, *, higher: bool = True) -> Verdict:
    """Compare two numbers printed to the same precision (each within ``half``). Rounding is monotone, so
    two printed values that differ are ordered the same way as the true ones; equal printed values cannot
    be told apart. ``lo``, ``hi``: the range the true difference lies in (a rounding range, not a 95%
    interval): the printed difference +- 2 * half, cut at 0 on the side the order decides."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "missing number", 0)
    d = round((a - b) if higher else (b - a), 12)  # printed numbers: no float residue decides a verdict
    lo, hi = round(d - 2 * half, 12), round(d + 2 * half, 12)
    if d > 0:
        lo, verdict = max(lo, 0.0), HOLDS
    elif d < 0:
        hi, verdict = min(hi, 0.0), FAILS
    else:
        verdict = UNSURE_PRINTED
    return Verdict(float(d), float(lo), float(hi), verdict,
                   f"as printed (best of 10 restarts), each +-{half:g}: rounding range", 1)


def printed_vs_exact(a: float, x: float, half: float = ACC_HALF, *, higher: bool = True) -> Verdict:
    """A printed number ``a`` (within ``half``) better than an exact number ``x`` of ours (a trivial
    predictor's accuracy computed on the paper's bins): the difference +- half."""
    if not (np.isfinite(a) and np.isfinite(x)):
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "missing number", 0)
    d = (a - x) if higher else (x - a)
    lo, hi = round(d - half, 12), round(d + half, 12)
    verdict = decide(lo, hi)
    return Verdict(float(d), float(lo), float(hi), UNSURE_PRINTED if verdict == UNSURE else verdict,
                   f"as printed (best of 10 restarts), +-{half:g} against an exact number: rounding range", 1)


def printed_within(a: float, target: float, half: float = ACC_HALF, margin: float = MARGIN) -> str:
    """A printed number ``a`` (within ``half``) equal to an exact ``target`` within ``margin``
    (:func:`within` on its rounding range); undecided: ``cannot tell from the printed numbers``."""
    v = within(a - half, a + half, target, target, margin)
    return UNSURE_PRINTED if v == UNSURE else v


def comparable(scale: str) -> bool:
    """Whether our bins at ``scale`` are the paper's (a magnitude can be compared only then)."""
    from .scales import PAPER, get_scale

    return [tuple(b) for b in get_scale(scale).test_bins] == [tuple(b) for b in PAPER.test_bins]


def excluded() -> Verdict:
    return Verdict(0.0, 0.0, 0.0, EXCLUDED, "identical by construction", 0)


def not_trained() -> Verdict:
    """The verdict on a comparison whose runs the store does not hold yet."""
    return Verdict(float("nan"), -np.inf, np.inf, NOT_TRAINED, "not trained yet", 0)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"holm needs p-values in [0, 1], got {p[ok]!r}")
    order_ = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order_]))
    out[order_] = adj
    return out


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
    un = sum(v.verdict in (UNSURE, UNSURE_PRINTED, NOT_TRAINED) for v in vs)
    ex = sum(v.verdict == EXCLUDED for v in vs)
    p, q = sign_test(k, k + f), sign_test(f, k + f)
    printed = any(v.verdict == UNSURE_PRINTED or v.method.startswith("as printed") for v in vs)
    verdict = HOLDS if p < alpha else (FAILS if q < alpha else (UNSURE_PRINTED if printed else UNSURE))
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
    return paired_restarts(A[:, ok], B[:, ok], wa[cols].to_numpy()[ok], higher=higher)


def against_value(df: pd.DataFrame, split: str, cell: dict, value: float, metric: str = "accuracy", *,
                  higher: bool = True) -> Verdict:
    """Our runs of ``cell`` better than a fixed number (a baseline, a ceiling): the same rule,
    with the number on every restart and length."""
    va, w = run_matrix(df, split, metric, **cell)
    if va.empty:
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "no runs", 0)
    A = va.to_numpy()
    ok = ~np.isnan(A).any(axis=0)
    return paired_restarts(A[:, ok], np.full_like(A[:, ok], value), w.to_numpy()[ok], higher=higher)


def verdict_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows of ``{..., "verdict": Verdict}`` as a table: the keys, difference [interval], verdict."""
    out = []
    printed = any(r["verdict"].method.startswith("as printed") for r in rows)  # an excluded row joins its frame's
    for r in rows:
        v: Verdict = r["verdict"]
        rounding = v.method.startswith("as printed") or (printed and v.verdict == EXCLUDED)
        label = "difference [rounding range]" if rounding else "difference [95% interval]"
        out.append({**{k: x for k, x in r.items() if k != "verdict"}, label: v.text(), "verdict": v.verdict})
    return pd.DataFrame(out)


# ---- the pages' comparisons ----------------------------------------------------------------------
def bin_label(scale_or_bins, split: str) -> str:
    """'51-100' for ``bin2`` of a scale (or of a list of (lo, hi) bins); other splits unchanged."""
    from .scales import get_scale

    bins = scale_or_bins if isinstance(scale_or_bins, (list, tuple)) else get_scale(scale_or_bins).test_bins
    if isinstance(split, str) and split.startswith("bin") and split[3:].isdigit() and int(split[3:]) < len(bins):
        lo, hi = bins[int(split[3:])]
        return f"{lo}-{hi}"
    return split


def _best_pairs(best: pd.DataFrame, mode: str, against: str):
    """Per language in table order, with both modes present: (task, its rows indexed by freeze mode,
    the best model in ``mode``, the best model in ``against``)."""
    from . import report

    for task in [t for t in report.task_names() if t in set(best["task"])]:
        b = best[best["task"] == task].set_index("freeze")
        if mode in b.index and against in b.index:
            yield task, b, b.loc[mode, "model"], b.loc[against, "model"]


def mode_verdicts(df: pd.DataFrame, mode: str, against: str = "none", split: str = "bin2") -> pd.DataFrame:
    """Our runs, per language: the model chosen on validation in ``mode`` (:func:`marnn.report.best_per_task`)
    more accurate on ``split`` than the one chosen in ``against``, by the rule over paired restarts. Columns
    task, model A, A, model B, B (their best restart's accuracy, as the paper prints its own), difference
    [95% interval] of the restart means, verdict; ``.attrs["verdicts"]`` the :class:`Verdict` objects."""
    from . import report

    long = report.ours_long(df, ["accuracy", "perplexity"])
    best = report.best_per_task(long[long["freeze"].isin([mode, against])], [split])
    rows, objs = [], []
    for task, b, ma, mb in _best_pairs(best, mode, against):
        v = compare_runs(df, split, {"task": task, "model": ma, "freeze": mode},
                         {"task": task, "model": mb, "freeze": against})
        objs.append(v)
        rows.append({"task": task, f"model ({mode})": ma, mode: b.loc[mode, "value"], f"model ({against})": mb,
                     against: b.loc[against, "value"], "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    return out


def paper_mode_verdicts(theirs: pd.DataFrame, mode: str, against: str = "none", split: str = "bin2",
                        half: float = ACC_HALF) -> pd.DataFrame:
    """The paper's tables, per language: best model in ``mode`` better than the best in ``against``,
    decided on the printed numbers with their rounding (each +- ``half``)."""
    from . import report

    best = report.best_per_task(theirs[theirs["freeze"].isin([mode, against])], [split])
    rows, objs = [], []
    for task, b, ma, mb in _best_pairs(best, mode, against):
        same = ma == mb and identical_by_construction(ma, mode, against)
        v = excluded() if same else rounded(float(b.loc[mode, "value"]), float(b.loc[against, "value"]), half)
        objs.append(v)
        rows.append({"task": task, f"model ({mode})": b.loc[mode, "model"], mode: b.loc[mode, "value"],
                     f"model ({against})": b.loc[against, "model"], against: b.loc[against, "value"],
                     "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    return out


def pair_verdicts(df: pd.DataFrame, pairs: Sequence[tuple[str, str]], mode: str, against: str = "none",
                  split: str = "bin2") -> pd.DataFrame:
    """Our runs, per (language, model) of ``pairs``: ``mode`` better than ``against``, paired by seed and
    length; lstm pairs identical by construction are excluded (verdict ``identical by construction``)."""
    rows, objs = [], []
    for task, model in pairs:
        v = compare_runs(df, split, {"task": task, "model": model, "freeze": mode},
                         {"task": task, "model": model, "freeze": against})
        objs.append(v)
        rows.append({"task": task, "model": model, "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    return out


def paper_pair_verdicts(theirs: pd.DataFrame, pairs: Sequence[tuple[str, str]], mode: str,
                        against: str = "none", split: str = "bin2", half: float = ACC_HALF) -> pd.DataFrame:
    """The paper's tables, per (language, model): ``mode`` better than ``against`` on its rounded numbers;
    pairs it does not print are left out, lstm pairs identical by construction excluded."""
    acc = theirs[(theirs["metric"] == "accuracy") & (theirs["split"] == split)]
    val = acc.set_index(["task", "model", "freeze"])["value"]
    rows, objs = [], []
    for task, model in pairs:
        if (task, model, mode) not in val.index or (task, model, against) not in val.index:
            continue
        if identical_by_construction(model, mode, against):
            v = excluded()
        else:
            v = rounded(float(val[(task, model, mode)]), float(val[(task, model, against)]), half)
        objs.append(v)
        rows.append({"task": task, "model": model, mode: val[(task, model, mode)],
                     against: val[(task, model, against)], "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    return out


def _restart_matrix(df: pd.DataFrame, split: str, a: dict, b: dict) -> pd.Series | None:
    """Per seed, the symbol-weighted difference of cell ``a`` minus cell ``b`` on ``split`` (None: no pairs)."""
    va, w = run_matrix(df, split, "accuracy", **a)
    vb, _ = run_matrix(df, split, "accuracy", **b)
    seeds = [x for x in va.index if x in vb.index]
    cols = [c for c in va.columns if c in vb.columns]
    if not seeds or not cols:
        return None
    A, B = va.loc[seeds, cols].to_numpy(), vb.loc[seeds, cols].to_numpy()
    ok = ~(np.isnan(A).any(axis=0) | np.isnan(B).any(axis=0))
    return pd.Series(restart_differences(A[:, ok], B[:, ok], w[cols].to_numpy()[ok]), index=seeds)


def language_verdicts(df: pd.DataFrame, pairs: Sequence[tuple[str, str]], mode: str, against: str = "none",
                      split: str = "bin2") -> pd.DataFrame:
    """One effect per language (the independent unit of a count): per restart, the difference ``mode`` -
    ``against`` averaged over the language's (task, model) ``pairs`` (pairs identical by construction
    left out), then the rule over restarts. Columns task, models, verdict; ``.attrs["verdicts"]``."""
    rows, objs = [], []
    for task in dict.fromkeys(t for t, _ in pairs):
        models = [m for t, m in pairs if t == task and not identical_by_construction(m, mode, against)]
        diffs = [d for m in models if (d := _restart_matrix(df, split, {"task": task, "model": m, "freeze": mode},
                                                             {"task": task, "model": m, "freeze": against}))
                 is not None]
        if not models:
            v = excluded()
        elif not diffs:
            v = Verdict(np.nan, -np.inf, np.inf, UNSURE, "no paired runs", 0)
        else:
            per = pd.concat(diffs, axis=1).dropna().mean(axis=1).to_numpy()  # seeds where every model ran
            v = paired_restarts(per[:, None], np.zeros((len(per), 1)))
        objs.append(v)
        rows.append({"task": task, "models": ", ".join(models) or "-", "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    return out


def paper_language_verdicts(theirs: pd.DataFrame, pairs: Sequence[tuple[str, str]], mode: str,
                            against: str = "none", split: str = "bin2", half: float = ACC_HALF) -> pd.DataFrame:
    """The paper's side of :func:`language_verdicts`: per language, the mean over its printed pairs of
    ``mode`` - ``against``, with the range rounding leaves it (each pair's range cut at 0 where the printed
    order decides it). ``holds`` when that range is above 0, ``does not hold`` when below."""
    per = paper_pair_verdicts(theirs, pairs, mode, against, split, half)
    rows, objs = [], []
    for task in dict.fromkeys(per["task"]) if len(per) else []:
        vs = [v for t, v in zip(per["task"], per.attrs["verdicts"], strict=True) if t == task and v.verdict != EXCLUDED]
        if not vs:
            v = excluded()
        else:
            d, lo, hi = (float(np.mean([getattr(x, f) for x in vs])) for f in ("difference", "lo", "hi"))
            verdict = HOLDS if lo >= 0 and d > 0 else (FAILS if hi <= 0 and d < 0 else UNSURE_PRINTED)
            v = Verdict(d, lo, hi, verdict, f"as printed (best of 10 restarts), mean of {len(vs)} pairs: "
                                            "rounding range", 1)
        objs.append(v)
        rows.append({"task": task, "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    return out


def count_sentence(frame: pd.DataFrame, claim: str, what: str) -> str:
    """'"<claim>": holds for 1 of 7 languages, ... (sign test p = 0.5); over all: cannot tell at this scale.'"""
    c = count(frame.attrs.get("verdicts", []))
    return f"{claim}: {c.text(what)}; over all {what}: **{c.verdict}**."


def positions(df: pd.DataFrame, cells: Sequence[dict], split: str) -> pd.DataFrame:
    """Where each of our ``cells`` (dicts: task, model, freeze) sits on ``split``: accuracy averaged over
    restarts (``mean``) against the best trivial predictor, with the rule's interval, and its distance
    to the ceiling (flagged when the ceiling is only an upper bound)."""
    from . import report

    refs = report.references_long(df)
    refs = refs[refs["split"] == split]
    rows = []
    for cell in cells:
        r = refs[refs["task"] == cell["task"]]
        if r.empty:
            continue
        base = r[r["reference"] != "ceiling"]
        ceil = r[r["reference"] == "ceiling"].iloc[0]
        best_base = float(base["accuracy"].max())
        above = against_value(df, split, cell, best_base)
        gap = against_value(df, split, cell, float(ceil["accuracy"]), higher=False)
        rows.append({**cell, "trivial": best_base,
                     "mean − trivial [95% interval over restarts]": above.text(),
                     "vs trivial": {HOLDS: "above", FAILS: "not above"}.get(above.verdict, "cannot tell"),
                     "ceiling": f"{ceil['accuracy']:.2f}" + ("" if ceil["exact"] else " (bound)"),
                     "to ceiling": f"{gap.difference:.2f}"})
    return pd.DataFrame(rows)


AT_BASELINE = "at a baseline"


def baseline_equality(df: pd.DataFrame, refs: pd.DataFrame, where: dict | None = None,
                      margin: float = MARGIN) -> pd.DataFrame:
    """Per (task, model, freeze, bin) of our runs: is the accuracy *equal* to a trivial predictor's?

    Per restart the bin's accuracy minus the nearest trivial predictor (nearest to the restart mean), then
    two one-sided tests on the t interval over restarts (:func:`within`, ``+-margin``): ``at a baseline``
    when the interval lies within the margin, ``above`` / ``below`` the best baseline when it lies outside,
    ``cannot tell`` otherwise (one restart: always). ``refs``: :func:`marnn.report.references_long`.
    Columns as :func:`nearest_baseline` (``value``: the restart mean), plus the interval."""
    from . import report

    runs = report.all_runs_long(df)
    runs = runs[runs["split"].astype(str).str.startswith("bin")]
    for col, val in (where or {}).items():
        runs = runs[runs[col].isin(val if isinstance(val, (list, tuple, set)) else [val])]
    base = refs[refs["reference"] != "ceiling"]
    cols = ["task", "model", "freeze", "split", "value", "reference", "baseline", "gap", "best baseline",
            "interval", "position"]
    rows = []
    for (task, model, freeze, split), g in runs.groupby(["task", "model", "freeze", "split"], sort=False):
        b = base[(base["task"] == task) & (base["split"] == split)]
        vals = g["value"].dropna().to_numpy()
        if b.empty or not len(vals):
            continue
        mean = float(vals.mean())
        near = b.iloc[int(np.argmin(np.abs(b["accuracy"].to_numpy() - mean)))]
        best = float(b["accuracy"].max())
        _, lo, hi = (float(x) for x in t_limits(vals - float(near["accuracy"])))
        v = within(lo, hi, 0.0, 0.0, margin) if len(vals) > 1 else UNSURE
        position = {HOLDS: AT_BASELINE, UNSURE: "cannot tell"}.get(v, "above" if mean > best else "below")
        rows.append({"task": task, "model": model, "freeze": freeze, "split": split, "value": mean,
                     "reference": near["reference"], "baseline": float(near["accuracy"]),
                     "gap": abs(mean - float(near["accuracy"])), "best baseline": best,
                     "interval": f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "one restart", "position": position})
    return report.order(pd.DataFrame(rows, columns=cols))


def position_sentence(pos: pd.DataFrame, what: str = "compared cells") -> str:
    """'Of the compared cells (14): 3 above the best trivial predictor, ...; 2 ceilings are upper bounds.'
    (The count in brackets: the sentence reads the same for one cell as for many.)"""
    if pos.empty:
        return f"No {what} to place against the references."
    c = pos["vs trivial"].value_counts()
    bounds = int(pos["ceiling"].str.endswith("(bound)").sum())
    out = (f"Of the {what} ({len(pos)}): {int(c.get('above', 0))} above the best trivial predictor of "
           f"their bin (restart mean, 95% t interval over restarts), {int(c.get('cannot tell', 0))} cannot be told "
           f"from it and {int(c.get('not above', 0))} not above it; the median gap to the ceiling is "
           f"{pos['to ceiling'].astype(float).median():.2f}.")
    if bounds:
        out += f" For {bounds} of them the ceiling is only an upper bound, marked (bound)."
    return out


# ---- Penn Treebank: cheap references on the same tokens -----------------------------------------------
def nearest_baseline(long: pd.DataFrame, refs: pd.DataFrame, half: float | None = None,
                     margin: float | None = None) -> pd.DataFrame:
    """Per printed accuracy of ``long`` (the paper's): the nearest trivial predictor of its task and bin,
    and where it stands by the one rule for equality (:func:`printed_within`: the printed
    value +- ``half``, default half a unit of two decimals, within ``margin`` of the exact reference,
    default :data:`MARGIN`).

    ``long``: columns task, model, freeze, split, value (accuracies); ``refs``: columns task, split,
    reference, accuracy (``plotting.reference_frame`` or ``report.references_long``); the ceiling is not a
    baseline. ``position``: ``at a baseline``, ``cannot tell``, or ``above`` / ``below`` the best baseline
    of the bin. Our runs are judged over restarts instead (:func:`baseline_equality`).
    """
    from .report import order

    half = ACC_HALF if half is None else half
    margin = MARGIN if margin is None else margin
    keys = ["task", "model", "freeze", "split"]
    cols = keys + ["value", "reference", "baseline", "gap", "best baseline", "position"]
    base = refs[refs["reference"] != "ceiling"][["task", "split", "reference", "accuracy"]]
    base = base.rename(columns={"accuracy": "baseline"})
    pairs = long[keys + ["value"]].merge(base, on=["task", "split"])
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    pairs["gap"] = (pairs["value"] - pairs["baseline"]).abs()
    out = pairs.loc[pairs.groupby(keys, sort=False)["gap"].idxmin()].copy()
    best = base.groupby(["task", "split"])["baseline"].max().rename("best baseline")
    out = out.merge(best.reset_index(), on=["task", "split"])
    rule = [printed_within(v, b, half, margin) for v, b in zip(out["value"], out["baseline"], strict=True)]
    out["position"] = [AT_BASELINE if r == HOLDS else
                       ("cannot tell" if r == UNSURE_PRINTED else ("above" if v > bb else "below"))
                       for r, v, bb in zip(rule, out["value"], out["best baseline"], strict=True)]
    return order(out[cols])


def printed_positions(long: pd.DataFrame, refs: pd.DataFrame, half: float | None = None) -> pd.DataFrame:
    """Per printed accuracy of ``long`` (the paper's): where it stands against the best trivial predictor
    of its task and bin and against the ceiling, by the rounding rule (:func:`printed_vs_exact`:
    the printed value +- ``half``, default half a unit of two decimals, against an exact number).

    ``long``: columns task, model, freeze, split, value; ``refs``: columns task, split, reference, accuracy
    (``plotting.reference_frame`` or :func:`marnn.report.references_long`). Columns of the result: the keys,
    value, best baseline, ceiling, ``vs best baseline`` and ``vs ceiling`` (``above``, ``below`` or
    :data:`UNSURE_PRINTED`: the rounding range holds the exact number). A ceiling that is only an upper
    bound (row ``ceiling upper bound`` or ``exact`` False) still cannot be exceeded."""
    from .report import UPPER_BOUND, order

    half = ACC_HALF if half is None else half
    keys = ["task", "model", "freeze", "split"]
    cols = keys + ["value", "best baseline", "ceiling", "vs best baseline", "vs ceiling"]
    ceiling = refs["reference"].isin(["ceiling", UPPER_BOUND])
    best = refs[~ceiling].groupby(["task", "split"])["accuracy"].max().rename("best baseline")
    ceil = refs[ceiling].groupby(["task", "split"])["accuracy"].min().rename("ceiling")
    out = long[keys + ["value"]].merge(best.reset_index(), on=["task", "split"]).merge(
        ceil.reset_index(), on=["task", "split"], how="left")
    if out.empty:
        return pd.DataFrame(columns=cols)
    word = {HOLDS: "above", FAILS: "below"}

    def where(values, exact) -> list[str]:
        return [word.get(printed_vs_exact(float(v), float(x), half).verdict, UNSURE_PRINTED)
                if np.isfinite(x) else UNSURE_PRINTED for v, x in zip(values, exact, strict=True)]

    out["vs best baseline"] = where(out["value"], out["best baseline"])
    out["vs ceiling"] = where(out["value"], out["ceiling"].fillna(np.nan))
    return order(out[cols])


def ptb_references(scale: str, k: float = 0.01, corpus=None) -> pd.Series:
    """Test perplexity of cheap models fitted on the scale's training tokens and scored on exactly the
    targets our models are scored on (the scale's test tokens, batched into its streams): an add-one
    unigram and an add-``k`` bigram."""
    from .ptb import batchify, load_corpus
    from .scales import get_scale

    sc = get_scale(scale)
    corpus = corpus if corpus is not None else load_corpus()
    V = corpus.vocab_size
    train = corpus.train if sc.ptb_train_tokens is None else corpus.train[:sc.ptb_train_tokens]
    test = corpus.test if sc.ptb_eval_tokens is None else corpus.test[:sc.ptb_eval_tokens]
    streams = batchify(test, sc.ptb_streams).numpy()
    prev, target = streams[:, :-1].ravel(), streams[:, 1:].ravel()
    tr = train.numpy()
    uni = np.bincount(tr, minlength=V).astype(float)
    p_uni = (uni + 1) / (uni.sum() + V)
    unigram = float(np.exp(-np.log(p_uni[target]).mean()))
    pair = pd.Series(1, index=pd.MultiIndex.from_arrays([tr[:-1], tr[1:]])).groupby(level=[0, 1]).sum()
    c_pair = pair.reindex(pd.MultiIndex.from_arrays([prev, target])).fillna(0).to_numpy()
    c_prev = np.bincount(tr[:-1], minlength=V)[prev].astype(float)
    bigram = float(np.exp(-np.log((c_pair + k) / (c_prev + k * V)).mean()))
    return pd.Series({"unigram (add-one)": unigram, f"bigram (add-{k:g})": bigram}, name="test perplexity")


def ptb_beats_references(table: pd.DataFrame, refs: pd.Series) -> bool:
    """Whether any of our perplexities (model x mode table) is below the best cheap reference."""
    vals = table.to_numpy(dtype=float)
    return bool(np.isfinite(vals).any() and np.nanmin(vals) < float(refs.min()))


def compared_cells(frame: pd.DataFrame, modes: Sequence[str]) -> list[dict]:
    """The (task, model, freeze) cells of a :func:`mode_verdicts` frame (columns 'model (<mode>)')."""
    cells = []
    for r in frame.to_dict("records"):
        for mode in modes:
            cell = {"task": r["task"], "model": r[f"model ({mode})"], "freeze": mode}
            if cell not in cells:
                cells.append(cell)
    return cells


def figure_summary(df: pd.DataFrame, theirs: pd.DataFrame, chosen: dict[str, list[str]], freeze: str,
                   scale: str, selection_modes: Sequence[str]) -> dict:
    """Figures 2 and 3: "mode ``freeze`` more accurate than ``none`` on the last bin", counted over
    languages (one effect per language: :func:`language_verdicts`, the independent unit), ours by the rule
    over restarts and the paper's as printed; the per-(language, model) verdicts as descriptive tables;
    where the compared models sit against the references. Returns text, ours, paper, languages,
    paper_languages, positions."""
    from . import report

    last = report.last_bin(df)
    pairs = [(t, m) for t, ms in chosen.items() for m in ms]
    ours = pair_verdicts(df, pairs, freeze, "none", last)
    paper = paper_pair_verdicts(theirs, pairs, freeze, "none", "bin2")
    langs = language_verdicts(df, pairs, freeze, "none", last)
    plangs = paper_language_verdicts(theirs, pairs, freeze, "none", "bin2")
    cells = [{"task": t, "model": m, "freeze": f} for t, m in pairs for f in ("none", freeze)]
    pos = positions(df, cells, last)
    modes = " and ".join(f"`{m}`" for m in selection_modes)
    restarts = int(df["seed"].nunique()) if len(df) else 0
    text = " ".join([
        report.scale_caveat(scale),
        f"The models shown were picked per language by the validation cross-entropy of their best restart, "
        f"averaged over modes {modes}: the test bins do not choose them, and the choice favours neither mode.",
        count_sentence(langs, f"Ours, mode `{freeze}` more accurate than mode `none` on {bin_label(scale, last)} "
                              "(one effect per language: the restart difference averaged over its models shown)",
                       "languages"),
        count_sentence(plangs, "The paper's tables on 201-400 (as printed, best of 10 restarts; the same "
                               "average per language)", "languages"),
        design_note(restarts),
        "The tables per (language, model) below are descriptive: the count above is over languages.",
        position_sentence(pos, "curves compared"),
    ])
    return {"text": text, "ours": ours.set_index(["task", "model"]), "paper": paper.set_index(["task", "model"]),
            "languages": langs.set_index("task"), "paper_languages": plangs.set_index("task"),
            "positions": pos.set_index(["task", "model", "freeze"]) if len(pos) else pos}


def ptb_mode_verdicts(df: pd.DataFrame, refs: pd.Series, mode: str = "m", against: str = "none",
                      embedding_group: str = "controller") -> pd.DataFrame:
    """Per PTB model: ``mode`` lower test perplexity than ``against``? Below the scale where our
    perplexities beat the cheap references every verdict is ``cannot tell``; otherwise the paired rule
    (one restart measures no noise, so also ``cannot tell``)."""
    from . import report
    from .campaign import planned_ptb, ptb_models

    part = df[df["embedding_group"] == embedding_group]
    table = report.ptb_table(part, "test") if len(part) else pd.DataFrame()
    informative = ptb_beats_references(table, refs) if len(table) else False
    rows, objs = [], []
    planned = planned_ptb(df.attrs["scale"]) if "scale" in df.attrs else None
    wanted = [] if store.may_train() or "scale" not in df.attrs else [
        m for m in ptb_models(df.attrs["scale"])
        if planned is None or {(m, mode, embedding_group), (m, against, embedding_group)} <= planned]
    for model in [m for m in registry.PTB_MODELS + registry.PTB_VARIANTS if m in table.index or m in wanted]:
        stored = model in table.index and all(
            f in table.columns and np.isfinite(table.loc[model, f]) for f in (mode, against))
        if not stored:
            if model not in wanted:
                continue
            v = not_trained()
            objs.append(v)
            rows.append({"model": model, against: _at(table, model, against), mode: _at(table, model, mode),
                         "verdict": v})
            continue
        if identical_by_construction(model, mode, against, embedding_group):
            v = excluded()
        elif not informative:
            d = float(table.loc[model, against] - table.loc[model, mode])
            v = Verdict(d, -np.inf, np.inf, UNSURE, "every perplexity above the cheap references", 1)
        else:
            v = compare_runs(part, "test", {"model": model, "freeze": mode}, {"model": model, "freeze": against},
                             "perplexity", higher=False)
        objs.append(v)
        rows.append({"model": model, against: table.loc[model, against], mode: table.loc[model, mode],
                     "verdict": v})
    out = verdict_frame(rows)
    out.attrs["verdicts"] = objs
    out.attrs["informative"] = informative
    return out


def _at(table: pd.DataFrame, row, col) -> float:
    return float(table.loc[row, col]) if row in table.index and col in table.columns else float("nan")


def ptb_sentence(df: pd.DataFrame, refs: pd.Series, mode: str = "m") -> str:
    """What our PTB runs can say at this scale, against the cheap references."""
    from . import report

    table = report.ptb_table(df, "test") if len(df) else pd.DataFrame()
    if table.empty:
        if not store.may_train():
            return f"No Penn Treebank run of this scale is stored yet: every comparison is **{NOT_TRAINED}**."
        return "There are no PTB runs at this scale."
    best, ref = float(np.nanmin(table.to_numpy(dtype=float))), float(refs.min())
    name = refs.idxmin()
    if best >= ref:
        return (f"Our lowest test perplexity ({best:.0f}) is above that of the {name} model fitted on the same "
                f"training tokens ({ref:.0f}): at this scale the models do no better than word frequencies "
                f"(a description of single runs, not a test), so every comparison between them is **{UNSURE}** "
                f"and no rank correlation with the paper is claimed.")
    c = count(ptb_mode_verdicts(df, refs, mode).attrs["verdicts"])
    return (f"Our lowest test perplexity ({best:.0f}) is below the {name} model's ({ref:.0f}). Mode `{mode}` "
            f"lower than `none`: {c.text('models')}; over all models: **{c.verdict}**.")


def rank_correlation(a: Sequence[float], b: Sequence[float], permutations: int = 10_000,
                     seed: int = SEED) -> tuple[float, float]:
    """Spearman's rank correlation of ``a`` and ``b`` and its two-sided permutation p-value (every
    permutation when there are at most 8 pairs, else ``permutations`` random ones with a fixed seed)."""
    import itertools

    x, y = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"rank_correlation needs two sequences of one length >= 3, got {len(x)} and {len(y)}")

    def rho(u):
        return float(np.corrcoef(x, u)[0, 1])

    r = rho(y)
    if len(y) <= 8:
        null = [rho(np.array(p)) for p in itertools.permutations(y)]
    else:
        rng = np.random.default_rng(seed)
        null = [rho(rng.permutation(y)) for _ in range(permutations)]
    p = float(np.mean(np.abs(null) >= abs(r) - 1e-12))
    return r, p


def ptb_rank_sentence(comparison: pd.DataFrame, ours_table: pd.DataFrame, refs: pd.Series) -> str:
    """Paper vs ours on PTB (a :func:`marnn.report.compare` frame): the rank correlation with its
    permutation test, claimed only where our perplexities beat the cheap references."""
    both = comparison.dropna(subset=["ours", "paper"])
    if len(both) < 3:
        return "Too few cells in both the paper and our runs to compare their order."
    if not ptb_beats_references(ours_table, refs):
        return (f"Over the {len(both)} cells both have, our perplexities are {both['difference'].median():+.0f} "
                f"from the paper's at the median. No rank correlation is claimed: every one of ours is above the "
                f"{refs.idxmin()} model's {refs.min():.0f} on the same tokens, so their order is **{UNSURE}**.")
    r, p = rank_correlation(both["ours"], both["paper"])
    return (f"Over the {len(both)} cells both have, the rank correlation of the two orderings is {r:.2f} "
            f"(permutation test p = {p:.2g}).")


def retention_comparison(df: pd.DataFrame, mode: str = "m", against: str = "none", first: str = "bin0",
                         last: str | None = None) -> Verdict:
    """Our runs: ``mode`` keeps more of its accuracy (``last`` / ``first``) than ``against``, over every
    (language, model) cell, paired by cell and restart seed; cells identical by construction left out.
    Per restart the ratio differences are averaged over the cells (fixed, like lengths), then the t
    interval over restarts."""
    from . import report

    last = last or report.last_bin(df)
    every = report.retention(report.all_runs_long(df), first, last, by=["task", "model", "freeze", "seed"])
    every = every[[not identical_by_construction(m, mode, against) for m in every["model"]]]
    wide = every.pivot_table(index="seed", columns=["task", "model", "freeze"], values="ratio", aggfunc="first")
    cells = sorted({(t, m) for t, m, f in wide.columns if f == mode} & {(t, m) for t, m, f in wide.columns
                                                                         if f == against})
    if not cells:
        return Verdict(np.nan, -np.inf, np.inf, UNSURE, "no paired cells", 0)
    a = wide[[(t, m, mode) for t, m in cells]].to_numpy()
    b = wide[[(t, m, against) for t, m in cells]].to_numpy()
    keep = ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
    keep_cols = np.isfinite(a[keep]).all(axis=0) & np.isfinite(b[keep]).all(axis=0)
    return paired_restarts(a[keep][:, keep_cols], b[keep][:, keep_cols])


# ---- pairs that are one run by construction: what their stored runs say ---------------------------
def ptb_twins(scale: str, root: str | None = None) -> pd.DataFrame:
    """The stored PTB runs that are the same run by construction (a model without memory, modes
    none and m or c and cm, the embedding not in the memory group: :func:`identical_by_construction`),
    one row per pair: model, seed, embedding group, the two modes, their test perplexities, the
    relative difference (b over a, minus 1), and for each run the replicas of the group it was
    trained in, the code's commit (12 characters) and the CPU (``env.cpu_model``; absent in
    records made before the trainer kept it)."""
    from .registry import EMBEDDING_GROUPS, MODES
    from .report import ptb_configs

    recs = {}
    for c in ptb_configs(scale, modes=MODES, embedding_groups=EMBEDDING_GROUPS, root=root):
        rec = store.load_record(c, root)
        if rec is not None and rec.get("test"):
            recs[(c["model"], c["seed"], c["embedding_group"], c["freeze"])] = rec
    rows = []
    for (model, seed, group, a), ra in sorted(recs.items()):
        for pair in SAME_PAIRS:
            b = next(iter(pair - {a}), None)
            if a not in pair or b is None or MODES.index(a) > MODES.index(b) \
                    or not identical_by_construction(model, a, b, group):
                continue
            rb = recs.get((model, seed, group, b))
            if rb is None:
                continue
            pa, pb = ra["test"]["perplexity"], rb["test"]["perplexity"]
            row = dict(model=model, seed=seed, embedding_group=group, a=a, b=b, perplexity_a=pa, perplexity_b=pb,
                       relative=pb / pa - 1)
            for side, r in (("a", ra), ("b", rb)):
                env = r.get("env", {})
                row[f"replicas_{side}"] = r.get("group", {}).get("replicas")
                row[f"commit_{side}"] = (env.get("git_commit") or "")[:12] or None
                row[f"cpu_{side}"] = env.get("cpu_model")
            rows.append(row)
    return pd.DataFrame(rows, columns=["model", "seed", "embedding_group", "a", "b", "perplexity_a", "perplexity_b",
                                       "relative", "replicas_a", "commit_a", "cpu_a", "replicas_b", "commit_b",
                                       "cpu_b"])


_TWIN_CAUSES = {"replicas": "the group size", "commit": "the code commit", "cpu": "the CPU"}


def _trained_how(t, side: str) -> str:
    r, c, cpu = getattr(t, f"replicas_{side}"), getattr(t, f"commit_{side}"), getattr(t, f"cpu_{side}")
    parts = [f"trained in a group of {r} replica{'s' if r != 1 else ''}" if r else None,
             f"commit {c}" if c else None, cpu]
    return ", ".join(p for p in parts if p)


def twins_sentence(twins: pd.DataFrame, differences: dict[str, float] | None = None) -> str:
    """What the pairs of :func:`ptb_twins` say: where the two stored runs of one pair are not
    the same numbers, how they were trained differently, and (``differences``: model -> relative
    m-vs-none difference of single runs) which differences fall inside the gap."""
    out = []
    for t in twins.itertuples():
        runs = f"{t.model} (seed {t.seed}, embedding in the {t.embedding_group} group)"
        if t.perplexity_a == t.perplexity_b:
            out.append(f"{runs}: modes `{t.a}` and `{t.b}` are the same run by construction, and the stored runs "
                       f"agree ({t.perplexity_a:.2f}).")
            continue
        causes = [v for k, v in _TWIN_CAUSES.items()
                  if getattr(t, f"{k}_a") is not None and getattr(t, f"{k}_a") != getattr(t, f"{k}_b")]
        gap = abs(t.relative)
        out.append(
            f"{runs}: modes `{t.a}` and `{t.b}` train the same parameters from the same initialisation, learning "
            f"rate and clipping, so the verdicts leave the pair out. The stored runs are not the same numbers: "
            f"test perplexity {t.perplexity_a:.2f} (`{t.a}`: {_trained_how(t, 'a')}) and {t.perplexity_b:.2f} "
            f"(`{t.b}`: {_trained_how(t, 'b')}), {gap:.1%} apart. What differs is how the arithmetic was done"
            + (f" ({', '.join(causes)})" if causes else "")
            + ": a group multiplies its replicas in one batch, which some CPUs' BLAS rounds differently from the "
            "same product alone, and at a learning rate of this size training turns a last-bit difference into "
            "another run (`scripts/same_seed_groups.py` shows where the two part). This pair measures once how "
            "far arithmetic alone moves one run of this protocol.")
        if differences:
            inside = sorted(m for m, d in differences.items() if abs(d) < gap)
            outside = sorted(m for m, d in differences.items() if abs(d) >= gap)
            out.append(f"Single-run differences between modes smaller than this ({gap:.1%}): "
                       f"{', '.join(inside) or 'none'}; larger: {', '.join(outside) or 'none'}.")
    return " ".join(out)
