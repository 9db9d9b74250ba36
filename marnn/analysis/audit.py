"""The audit of the paper's claims: one small check per claim, one row per check.

Every check puts three things side by side for one statement of Das & Mali
(2024):

* ``paper_value``: what the paper says in words (an input: the constants below,
  each with the claim it quotes, listed in ``book/reference/claims.md``);
* ``recomputed``: what the paper's *own tables* imply, recomputed from
  ``data/paper/paper_results.csv`` with :mod:`marnn.report`;
* ``ours``: what our runs give at one scale (the committed records).

and turns each comparison into a ``verdict`` (about the paper's numbers) and an
``ours_verdict`` (about our runs) by the book's one rule (:mod:`marnn.verdicts`):
the paper's printed numbers by their rounding, ours by a t interval over
restarts, equality and stated magnitudes by two one-sided tests within a stated
margin (:func:`margins` lists them). Nothing here trains: the audit reads what
the other chapters computed.

    inputs = audit.load("quick")        # the paper's tables + our records at one scale
    findings = audit.run_checks(inputs)  # one Finding per claim (row, numbers, evidence tables)
    audit.table(findings)                # the tidy table: one row per claim

Every check is a function ``check_*(inputs) -> Finding``; :data:`CHECKS` lists
them in the order of the page. Tests feed them synthetic paper tables through
``dataclasses.replace(inputs, paper_ptb=...)``.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import registry, report, verdicts
from ..scales import PAPER, get_scale

# ---- rounding of printed numbers, margins of two one-sided tests ------------------------------------
ACC_HALF = 0.005  # the paper prints accuracies with two decimals: the true value is within half a unit
PPL_HALF = 0.05  # Table 3 prints perplexities with one decimal
PCT_HALF = 0.00005  # "1.73%" is given to a hundredth of a percent
WHOLE_PCT_HALF = 0.005  # "60%" is given to a whole percent
MARGIN = verdicts.MARGIN  # equality / magnitude margin of accuracies and accuracy ratios (two one-sided tests)
# Equivalence margin of "near random" (Thm 3.4), nats per symbol: a model whose loss is within a quarter nat of
# the uniform guess's assigns the right symbol at most e^0.25 ~ 1.3 times the uniform probability on average,
# i.e. it still predicts nearly uniformly; decided by two one-sided tests, never on one number.
NEAR_RANDOM = 0.25

# ---- what the paper states in words (inputs; docs: book/reference/claims.md) ---------------------
STATED_GAIN = 0.0173  # "1.73%" PTB gain from freezing memory
STATED_BEFORE, STATED_AFTER = 123.5, 120.5  # best PTB perplexity without / with frozen memory
STATED_BEST = 120.5  # "state of the art 120.5"
STATED_DROP = 0.60  # fully trained models lose "up to 60%" on long strings
STATED_KEEP = 0.90  # frozen memory retains "close to 90%" of the accuracy
# The predictions of the stability theory (Section 3, Appendix C; docs: book/reference/claims.md).
GROWTH_PARAMETERS = 3  # Thm 3.6: unstable loss ~ a|x|^b + c has three free parameters

# ---- verdicts -----------------------------------------------------------------------------
HOLDS = "holds"
FAILS = "does not hold"
ARITHMETIC = "arithmetic error"
BASELINE = "equals a trivial baseline"
UNTESTED = "not tested by the paper"
AT_SCALE = verdicts.UNSURE  # the one rule's word: every PTB check of ours says it the same way
NOT_COMPARABLE = verdicts.NOT_COMPARABLE  # a magnitude measured on our bins, stated on the paper's
NO_RUNS = "no runs at this scale"
ELSEWHERE = "see the stability chapter"
PRECISION = "see the precision chapter"
NOT_RUN = "not run here"

COLUMNS = ["claim", "source", "paper_value", "recomputed", "verdict", "ours", "ours_verdict", "note"]
BINARY_TASKS = ("marked-reverse-and-copy", "count-and-copy", "marked-copy", "unmarked-copy-different-alphabets",
                "unmarked-reverse-and-copy", "unmarked-copy")  # every language built on a random binary word
FROZEN_MODES = ("m", "c", "cm")
MEMORY_PTB = tuple(m for m in registry.PTB_MODELS if m != "lstm-256")


@dataclass
class Finding:
    """One audited claim: the row of the table, the numbers behind it and small evidence tables.

    ``facts`` holds plain numbers for the page's prose (glued as ``<id>_<key>``);
    ``evidence`` maps a caption to a small DataFrame.
    """

    id: str
    claim: str
    source: str
    paper_value: str
    recomputed: str
    ours: str
    verdict: str
    ours_verdict: str
    note: str = ""
    facts: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, pd.DataFrame] = field(default_factory=dict)
    p: float = float("nan")  # one-sided p of ours_verdict's decision (Holm adjusts it over the claims)

    def row(self) -> dict[str, str]:
        return {"id": self.id, **{c: getattr(self, c) for c in COLUMNS}}


@dataclass(frozen=True)
class Inputs:
    """Everything the checks read: the paper's tables and our records at one scale."""

    scale: str
    paper_formal: pd.DataFrame  # report.paper_formal(): Tables 4-7, long (accuracy, perplexity)
    paper_ptb: pd.DataFrame  # report.paper_ptb(): Table 3, long (test perplexity)
    paper_refs: pd.DataFrame  # plotting.reference_frame() on the paper's bins: ceiling and trivial predictors
    formal: pd.DataFrame  # report.formal_results(scale): our formal-language records (may be empty)
    ptb: pd.DataFrame  # report.ptb_results(scale): our PTB records (may be empty)
    ptb_refs: pd.Series | None = None  # verdicts.ptb_references(scale); None: computed when needed

    @property
    def is_paper_scale(self) -> bool:
        return get_scale(self.scale).name == PAPER.name


def load(scale: str, root: str | None = None, *, compute: bool = False) -> Inputs:
    """The paper's tables and our records at ``scale`` (an unknown scale fails with the valid names).

    ``compute=False`` (default): the audit only reads the store; cells without
    records are simply missing and their checks say so.
    """
    from .. import plotting, tasks

    sc = get_scale(scale)
    return Inputs(
        scale=sc.name,
        paper_formal=report.paper_formal(),
        paper_ptb=report.paper_ptb(),
        paper_refs=plotting.reference_frame(tasks.names(), PAPER.test_bins, PAPER.bin_names),
        formal=report.formal_results(sc.name, root=root, compute=compute),
        ptb=report.ptb_results(sc.name, root=root, compute=compute),
    )


def _cheap(inp: Inputs) -> pd.Series:
    """The cheap PTB references (add-one unigram, add-k bigram) on the scale's tokens."""
    return inp.ptb_refs if inp.ptb_refs is not None else verdicts.ptb_references(inp.scale)


# ---- small helpers --------------------------------------------------------------------------
def share_verdict(k: int, n: int, what: str) -> str:
    """'holds' (all n), 'does not hold' (none), else 'holds for k of n <what>'."""
    if n == 0:
        return NO_RUNS
    if k == n:
        return HOLDS
    if k == 0:
        return FAILS
    return f"holds for {'only ' if 2 * k < n else ''}{k} of {n} {what}"


def baseline_verdict(k: int, n: int) -> str:
    """For accuracies offered as evidence: all of them at a trivial baseline, none, or how many."""
    if n == 0:
        return NO_RUNS
    if k == n:
        return BASELINE
    if k == 0:
        return "none at a trivial baseline"
    return f"{k} of {n} at a trivial baseline"


def ratio_interval(num: float, den: float, half: float) -> tuple[float, float]:
    """Range of num/den when both were rounded to +-``half``."""
    return (num - half) / (den + half), (num + half) / (den - half)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _ptb_paper(inp: Inputs) -> pd.DataFrame:
    """Table 3 as model x mode (test perplexity)."""
    t = inp.paper_ptb[inp.paper_ptb["split"] == "test"]
    t = t.pivot_table(index="model", columns="freeze", values="value", aggfunc="first")
    return t.reindex(index=[m for m in registry.PTB_MODELS if m in t.index],
                     columns=[m for m in registry.MODES if m in t.columns])


def _ptb_ours(inp: Inputs) -> pd.DataFrame:
    """Our best-restart test perplexities as model x mode (embedding in the controller group)."""
    if inp.ptb.empty:
        return pd.DataFrame()
    return report.ptb_table(inp.ptb, "test")


def _has(t: pd.DataFrame, modes: Sequence[str]) -> bool:
    """Whether table ``t`` (model x mode) has a value in every one of ``modes``."""
    return not t.empty and all(m in t.columns for m in modes) and t[list(modes)].notna().any().all()


def _ours_acc(inp: Inputs) -> pd.DataFrame:
    return report.ours_long(inp.formal, ["accuracy"]) if not inp.formal.empty else pd.DataFrame(
        columns=["task", "model", "freeze", "split", "metric", "value"])


def _paper_acc(inp: Inputs) -> pd.DataFrame:
    return inp.paper_formal[inp.paper_formal["metric"] == "accuracy"]


def _ours_last(inp: Inputs) -> str:
    return report.last_bin(inp.formal)


# ---- trivial baselines (the reading of the languages chapter) --------------------------------------
# ---- Penn Treebank (Table 3) ------------------------------------------------------------------------
def ptb_gain(table: pd.DataFrame) -> dict:
    """Best memory-augmented model with everything trained vs best one with the memory frozen.

    The paper's "123.5 -> 120.5": ``before`` = lowest ``none`` perplexity of the
    memory-augmented models (the plain LSTM's 119.8 is left out), ``after`` =
    their lowest ``m`` perplexity; gain = (before - after) / before.
    """
    memory = [m for m in MEMORY_PTB if m in table.index]
    b_model = table.loc[memory, "none"].idxmin()
    a_model = table.loc[memory, "m"].idxmin()
    before, after = float(table.loc[b_model, "none"]), float(table.loc[a_model, "m"])
    return {"before": before, "after": after, "before_model": b_model, "after_model": a_model,
            "gain": (before - after) / before}


def check_ptb_gain(inp: Inputs) -> Finding:
    """'1.73% gain': the relative improvement that the paper's own 123.5 -> 120.5 gives."""
    t = _ptb_paper(inp)
    g = ptb_gain(t)
    # rounding of both perplexities moves the gain within [lo, hi]
    lo = ((g["before"] - PPL_HALF) - (g["after"] + PPL_HALF)) / (g["before"] - PPL_HALF)
    hi = ((g["before"] + PPL_HALF) - (g["after"] - PPL_HALF)) / (g["before"] + PPL_HALF)
    consistent = overlaps((lo, hi), (STATED_GAIN - PCT_HALF, STATED_GAIN + PCT_HALF))
    # which pair of Table 3 cells comes nearest to the stated number? (relative to either cell)
    cells = [(f"{m} {f}", float(v)) for (m, f), v in t.stack().items()]
    pairs = [(abs((a - b) / d - STATED_GAIN), (a - b) / d, na, nb, "first" if d == a else "second")
             for (na, a), (nb, b) in itertools.permutations(cells, 2) for d in (a, b)]
    near = sorted(pairs)[:3]
    nearest = pd.DataFrame([{"from": na, "to": nb, "relative to": rel, "gain": gain}
                            for _, gain, na, nb, rel in near])
    facts = {"stated": STATED_GAIN, "recomputed": g["gain"], "lo": lo, "hi": hi, "before": g["before"],
             "after": g["after"], "stated_before": STATED_BEFORE, "stated_after": STATED_AFTER,
             "nearest": near[0][1]}
    evidence = {"Table 3 (test perplexity)": t, "pairs of Table 3 cells nearest to the stated gain": nearest}
    p_ours = np.nan
    o = _ptb_ours(inp)
    if _has(o, ["none", "m"]) and o.index.isin(MEMORY_PTB).any():
        og = ptb_gain(o)
        ours = (f"{_pct(og['gain'])} ({og['before_model']} none {og['before']:.5g} -> "
                f"{og['after_model']} m {og['after']:.5g})")
        facts["ours"] = og["gain"]
        evidence["ours (test perplexity)"] = o
        if inp.is_paper_scale and verdicts.ptb_beats_references(o[["none", "m"]], _cheap(inp)):
            # the book's rule: the frozen-memory cell lower than the fully trained one, paired by restart
            rule = verdicts.compare_runs(
                inp.ptb, "test", {"model": og["after_model"], "freeze": "m", "embedding_group": "controller"},
                {"model": og["before_model"], "freeze": "none", "embedding_group": "controller"},
                "perplexity", higher=False)
            p_ours, ours_verdict = rule.p_t, rule.verdict
        else:
            ours_verdict = AT_SCALE
    else:
        ours, ours_verdict = "-", NO_RUNS
    return Finding(
        "ptb_gain", "Freezing the memory improves the best PTB perplexity by 1.73%.",
        "text on Penn Treebank; numbers of Table 3",
        f"{_pct(STATED_GAIN)} ({STATED_BEFORE} -> {STATED_AFTER})",
        f"{_pct(g['gain'])} ({g['before_model']} none {g['before']:.1f} -> {g['after_model']} m "
        f"{g['after']:.1f}); {_pct(lo)} to {_pct(hi)} after rounding",
        ours, HOLDS if consistent else ARITHMETIC, ours_verdict,
        f"No pair of Table 3 cells gives {_pct(STATED_GAIN)}; the nearest is {near[0][2]} -> {near[0][3]} "
        f"({_pct(near[0][1])}). Our magnitude is only comparable at the paper's scale.",
        facts, evidence, p_ours)


def check_ptb_best(inp: Inputs) -> Finding:
    """'State of the art 120.5': is the frozen-memory model the lowest perplexity of its own table?"""
    t = _ptb_paper(inp)
    flat = t.stack().rename("perplexity").reset_index().sort_values("perplexity", kind="stable")
    best = flat.iloc[0]
    # the stated value is beaten when another cell is lower even after rounding both
    beaten = verdicts.rounded(float(best["perplexity"]), STATED_BEST, PPL_HALF, higher=False).verdict == HOLDS
    facts = {"stated": STATED_BEST, "table_best": float(best["perplexity"]),
             "margin": STATED_BEST - float(best["perplexity"])}
    evidence = {"Table 3, every cell from lowest to highest": flat.reset_index(drop=True)}
    p_ours = np.nan
    o = _ptb_ours(inp)
    stated_cell = flat[np.isclose(flat["perplexity"], STATED_BEST)]
    cell = (stated_cell.iloc[0]["model"], stated_cell.iloc[0]["freeze"]) if len(stated_cell) else None
    if _has(o, ["none", "m"]):
        oflat = (o[["none", "m"]].stack().rename("perplexity").reset_index()
                 .dropna(subset=["perplexity"])  # a cell not trained yet has no place in the ranking
                 .sort_values("perplexity", kind="stable"))
        ob = oflat.iloc[0]
        ours = f"lowest: {ob['model']} {ob['freeze']} {ob['perplexity']:.5g}"
        facts["ours_best"] = float(ob["perplexity"])
        evidence["ours, modes none and m, from lowest"] = oflat.reset_index(drop=True)
        if cell is None or not verdicts.ptb_beats_references(o[["none", "m"]], _cheap(inp)):
            ours_verdict = AT_SCALE  # no stated cell, or no perplexity of ours beats a unigram model
        else:
            other = oflat[[(m, f) != cell for m, f in zip(oflat["model"], oflat["freeze"], strict=True)]].iloc[0]
            rule = verdicts.compare_runs(
                inp.ptb, "test", {"model": cell[0], "freeze": cell[1], "embedding_group": "controller"},
                {"model": other["model"], "freeze": other["freeze"], "embedding_group": "controller"},
                "perplexity", higher=False)
            p_ours, ours_verdict = rule.p_t, rule.verdict
    else:
        ours, ours_verdict = "-", NO_RUNS
    where = f" ({cell[0]}, {cell[1]})" if cell else ""
    return Finding(
        "ptb_best", f"{STATED_BEST}{where} is the best perplexity (\"state of the art\").",
        "text on Penn Treebank; Table 3", f"{STATED_BEST}",
        f"lowest cell of Table 3: {best['model']} {best['freeze']} {best['perplexity']:.1f}",
        ours, FAILS if beaten else HOLDS, ours_verdict,
        "For our runs the question is whether the same cell is lower than every other (the book's rule: paired "
        "restarts, cannot tell from one run or while every perplexity is above an add-one unigram model's); the "
        "absolute value is only comparable at the paper's scale.",
        facts, evidence, p_ours)


def freeze_effect(table: pd.DataFrame, models: Sequence[str], half: float = 0.0,
                  rel: float = 0.0) -> pd.DataFrame:
    """Per model: perplexity with everything trained and with the memory frozen, and the verdict.

    Printed numbers (``half`` > 0): rounding is monotone, so ``improves`` when the printed m is lower than
    the printed none, ``worse`` when higher, ``tie`` when equal. ``rel`` > 0 asks for a relative gap too.
    """
    rows = []
    for model in models:
        if model not in table.index:
            continue
        none, m = float(table.loc[model, "none"]), float(table.loc[model, "m"])
        margin = rel * none
        effect = "improves" if m < none - margin else ("worse" if m > none + margin else "tie")
        rows.append({"model": model, "none": none, "m": m, "m - none": m - none, "freezing memory": effect})
    return pd.DataFrame(rows, columns=["model", "none", "m", "m - none", "freezing memory"])


def check_ptb_freeze(inp: Inputs) -> Finding:
    """'Freezing the memory improves PTB perplexity': model by model, mode m against mode none."""
    t = _ptb_paper(inp)
    eff = freeze_effect(t, registry.PTB_MODELS, half=PPL_HALF)
    mem = eff[eff["model"].isin(MEMORY_PTB)]
    k, n = int((mem["freezing memory"] == "improves").sum()), len(mem)
    lstm = eff[eff["model"] == "lstm-256"]
    facts: dict[str, float] = {"k": k, "n": n}
    if len(lstm):
        facts["lstm_change"] = float(lstm["m - none"].iloc[0])
    evidence = {"Table 3: mode m against mode none": eff}
    o = _ptb_ours(inp)
    if _has(o, ["none", "m"]):
        oeff = verdicts.ptb_mode_verdicts(inp.ptb, _cheap(inp), "m")
        c = verdicts.count(oeff.attrs["verdicts"])
        ours = f"mode m lower than none: {c.text('models')}"
        ours_verdict = c.verdict
        facts.update({"ours_k": c.holds, "ours_n": c.total})
        evidence["ours: mode m against mode none (the book's rule)"] = oeff.set_index("model")
    else:
        ours, ours_verdict = "-", NO_RUNS
    worse = ", ".join(mem.loc[mem["freezing memory"] == "worse", "model"]) or "none"
    note = f"Worse with the memory frozen: {worse}."
    if len(lstm):
        note += (f" lstm-256 has no memory, yet its perplexity changes by {facts['lstm_change']:+.1f} in mode m "
                 "(see the embedding ablation of the Table 3 chapter).")
    return Finding(
        "ptb_freeze", "Freezing the memory improves PTB perplexity.", "text on Penn Treebank; Table 3",
        "lower perplexity with the memory frozen", f"lower in mode m for {k} of {n} memory models (by more "
        "than the rounding)",
        ours, share_verdict(k, n, "memory models"), ours_verdict, note, facts, evidence)


# ---- formal languages: drops and retention (Tables 4-7) --------------------------------------
def check_drop(inp: Inputs) -> Finding:
    """'Up to 60% drop': the largest loss of accuracy from the first to the last bin, everything trained."""
    r = report.retention(_paper_acc(inp))
    worst = r[r["freeze"] == "none"].nsmallest(1, "ratio").iloc[0]
    drop = 1 - worst["ratio"]
    lo_r, hi_r = ratio_interval(worst["last"], worst["first"], ACC_HALF)
    consistent = overlaps((1 - hi_r, 1 - lo_r), (STATED_DROP - WHOLE_PCT_HALF, STATED_DROP + WHOLE_PCT_HALF))
    by_mode = (1 - r.groupby("freeze")["ratio"].min()).reindex(list(registry.MODES)).dropna()
    facts = {"stated": STATED_DROP, "recomputed": drop, "first": worst["first"], "last": worst["last"]}
    facts.update({f"max_{m}": v for m, v in by_mode.items()})
    largest = r.assign(drop=1 - r["ratio"], rank=r["freeze"].map(registry.MODES.index))
    largest = largest.sort_values(["rank", "drop"], ascending=[True, False], kind="stable")
    largest = largest.groupby("freeze", sort=False).head(2)[["freeze", "task", "model", "first", "last", "drop"]]
    evidence = {"paper: the two largest drops of each mode": largest.set_index(["freeze", "task", "model"])}
    ours_acc = _ours_acc(inp)
    on = ours_acc[ours_acc["freeze"] == "none"]
    if len(on):
        last = _ours_last(inp)
        every = report.retention(report.all_runs_long(inp.formal[inp.formal["freeze"] == "none"]), "bin0", last,
                                 by=["task", "model", "freeze", "seed"]).dropna(subset=["ratio"])
        every["drop"] = 1 - every["ratio"]
        cell = every.groupby(["task", "model"])["drop"].mean().idxmax()  # the largest mean drop over restarts
        runs = every.set_index(["task", "model"]).loc[[cell]]
        drops = runs["drop"].to_numpy()
        odrop, lo, hi = (float(x) for x in verdicts.t_limits(drops))
        # a drop is at most 100% (nothing left) and at least 1 - 1 / first (the last bin perfect)
        lo, hi, cut = verdicts.clipped(lo, hi, float(np.mean(1 - 1 / runs["first"].to_numpy())), 1.0)
        shown = f"[{lo:.0%}, {hi:.0%}] over {len(drops)} restarts" if len(drops) > 1 else "(one restart: no interval)"
        ours = (f"{odrop:.0%} {shown} ({cell[1]}, {cell[0]}, "
                f"{verdicts.bin_label(inp.scale, 'bin0')} -> {verdicts.bin_label(inp.scale, last)})"
                + (f"; {cut} (a drop is at most 100%)" if cut and len(drops) > 1 else ""))
        if not verdicts.comparable(inp.scale):
            ours_verdict = NOT_COMPARABLE
        else:
            v = verdicts.within(lo, hi, STATED_DROP - WHOLE_PCT_HALF, STATED_DROP + WHOLE_PCT_HALF, MARGIN)
            ours_verdict = v if len(drops) > 1 else AT_SCALE
        facts.update(ours=odrop, ours_lo=lo, ours_hi=hi)
    else:
        ours, ours_verdict = "-", NO_RUNS
    others = ", ".join(f"{m} {v:.0%}" for m, v in by_mode.items() if m != "none")
    return Finding(
        "drop", "With everything trained, accuracy on long strings drops by up to 60%.",
        "text on Tables 4-7", f"{STATED_DROP:.0%}",
        f"{drop:.0%} ({worst['model']}, {worst['task']}: {worst['first']:.2f} -> {worst['last']:.2f})",
        ours, HOLDS if consistent else FAILS, ours_verdict,
        f"Largest drop in the frozen modes of the paper: {others}; the contrast with \"90% retained\" sets the "
        f"worst case of one mode against the mean of another. Ours: the cell with the largest mean drop, its "
        f"95% t interval over restarts; it holds when the interval lies within {MARGIN} of {STATED_DROP:.0%} "
        f"(two one-sided tests), and is {NOT_COMPARABLE} when our bins are not the paper's.",
        facts, evidence)


def mean_retention(long: pd.DataFrame, last: str = "bin2") -> pd.Series:
    """Mean over (task, model) of accuracy(last bin) / accuracy(bin0), per mode."""
    r = report.retention(long, last=last)
    return r.groupby("freeze")["ratio"].mean().reindex(list(registry.MODES)).dropna()


def paper_retention_ranges(long: pd.DataFrame, half: float = ACC_HALF) -> pd.DataFrame:
    """Per mode, the mean ratio of the paper's printed accuracies and the range rounding leaves it
    (every accuracy within ``half``): columns mean, lo, hi."""
    r = report.retention(long).dropna(subset=["ratio"])
    r = r[r["first"] > half]
    rng = [ratio_interval(a, b, half) for a, b in zip(r["last"], r["first"], strict=True)]
    r = r.assign(lo=[x[0] for x in rng], hi=[x[1] for x in rng])
    out = r.groupby("freeze")[["ratio", "lo", "hi"]].mean().rename(columns={"ratio": "mean"})
    return out.reindex([m for m in registry.MODES if m in out.index])


def ours_retention_intervals(df: pd.DataFrame, last: str) -> pd.DataFrame:
    """Per mode, our mean ratio over (task, model) cells, per restart, and its 95% t interval over
    restarts: columns mean, lo, hi, restarts."""
    every = report.retention(report.all_runs_long(df), "bin0", last, by=["task", "model", "freeze", "seed"])
    per = every.dropna(subset=["ratio"]).groupby(["freeze", "seed"])["ratio"].mean()
    rows = {}
    for mode in [m for m in registry.MODES if m in per.index.get_level_values(0)]:
        vals = per.loc[mode].to_numpy()
        mean, lo, hi = (float(x) for x in verdicts.t_limits(vals))
        lo, hi, _ = verdicts.clipped(lo, hi, 0.0)  # a ratio of accuracies is never negative
        rows[mode] = {"mean": mean, "lo": lo, "hi": hi, "restarts": len(vals)}
    return pd.DataFrame.from_dict(rows, orient="index")


def retention_verdict(ranges: pd.DataFrame, claimed_mode: str = "m", target: float = STATED_KEEP,
                      half: float = WHOLE_PCT_HALF, margin: float = MARGIN, printed: bool = False) -> str:
    """'holds' when ``claimed_mode``'s range (columns lo, hi) lies within ``margin`` of the stated ``target``
    (two one-sided tests, :func:`marnn.verdicts.within`); else the modes for which it does, if any; 'does not
    hold' when the claimed mode's range lies wholly outside; else cannot tell."""
    report.check_mode(claimed_mode)
    if ranges.empty:
        return NO_RUNS
    v = {m: verdicts.within(r["lo"], r["hi"], target - half, target + half, margin) for m, r in ranges.iterrows()}
    near = [m for m, x in v.items() if x == HOLDS]
    if v.get(claimed_mode) == HOLDS:
        return HOLDS
    if near:
        return f"holds only for mode {', '.join(near)}"
    if v.get(claimed_mode) == FAILS:
        return FAILS
    return verdicts.UNSURE_PRINTED if printed else AT_SCALE


def check_retention(inp: Inputs, claimed_mode: str = "m") -> Finding:
    """'Retained close to 90%': the mean last-bin / first-bin accuracy ratio of each mode."""
    report.check_mode(claimed_mode)
    pr = paper_retention_ranges(_paper_acc(inp))
    facts = {f"paper_{m}": v for m, v in pr["mean"].items()}
    facts["stated"] = STATED_KEEP
    ours_acc = _ours_acc(inp)
    oi = ours_retention_intervals(inp.formal, _ours_last(inp)) if len(ours_acc) else pd.DataFrame()
    if len(oi):
        facts.update({f"ours_{m}": v for m, v in oi["mean"].items()})
    evidence = {"mean accuracy ratio, last bin / first bin, per mode (paper: rounding range; ours: 95% t "
                "interval over restarts)": pd.DataFrame({"paper": pr["mean"], "paper lo": pr["lo"],
                                                         "paper hi": pr["hi"]}).join(oi, how="outer")
                .reindex([m for m in registry.MODES if m in set(pr.index) | set(oi.index)])}
    fmt = lambda s: ", ".join(f"{m} {v:.2f}" for m, v in s.items())  # noqa: E731
    if not len(oi):
        ours, ours_verdict = "-", NO_RUNS
    else:
        ours = "mean ratio per mode: " + ", ".join(f"{m} {r['mean']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"
                                                  for m, r in oi.iterrows())
        ours_verdict = retention_verdict(oi, claimed_mode) if verdicts.comparable(inp.scale) else NOT_COMPARABLE
    return Finding(
        "retain", f"With the memory frozen (mode {claimed_mode}), models retain close to 90% of their accuracy "
                  "on long strings.",
        "text on Tables 4-7", f"{STATED_KEEP:.0%}", f"mean ratio per mode: {fmt(pr['mean'])}",
        ours, retention_verdict(pr, claimed_mode, printed=True), ours_verdict,
        f"'Close to' = within {MARGIN} of 90% by two one-sided tests on the range (the paper's: what rounding "
        f"leaves; ours: the 95% t interval over restarts, {NOT_COMPARABLE} when our bins are not the paper's). "
        "The ratio also rewards a model that is equally poor at every length.",
        facts, evidence)


def check_freeze_long(inp: Inputs, mode: str = "m") -> Finding:
    """'Freezing the memory keeps accuracy on long strings': per language, best model in ``mode`` vs
    best model with everything trained, on the last bin."""
    report.check_frozen_mode(mode)
    wins = verdicts.paper_mode_verdicts(inp.paper_formal, mode, "none", "bin2")
    pc = verdicts.count(wins.attrs["verdicts"])
    k, n, lower = pc.holds, pc.total, pc.fails
    # the paper's model chosen on validation in this mode above the best trivial predictor of 201-400 (exact)
    pbest = report.best_per_task(inp.paper_formal[inp.paper_formal["freeze"] == mode], ["bin2"])
    trivial = inp.paper_refs[(inp.paper_refs["split"] == "bin2") & (inp.paper_refs["reference"] != "ceiling")]
    base = [verdicts.printed_vs_exact(float(r.value), float(trivial.loc[trivial["task"] == r.task, "accuracy"].max()))
            for r in pbest.itertuples()]
    kb = sum(v.verdict == verdicts.HOLDS for v in base)
    facts: dict[str, float] = {"k": k, "n": n, "lower": lower, "beats_baseline": kb, "n_baseline": len(base)}
    evidence = {f"paper: best accuracy on bin2, mode {mode} against none": wins.set_index("task")}
    ours_acc = _ours_acc(inp)
    if len(ours_acc) and {mode, "none"} <= set(ours_acc["freeze"]):
        last = _ours_last(inp)
        ow = verdicts.mode_verdicts(inp.formal, mode, "none", last)
        oc = verdicts.count(ow.attrs["verdicts"])
        ours = oc.text("languages")
        ours_verdict = oc.verdict
        p_ours = oc.p if oc.verdict == HOLDS else (oc.p_against if oc.verdict == FAILS else min(oc.p, oc.p_against))
        facts.update({"ours_k": oc.holds, "ours_n": oc.total})
        evidence[f"ours: best accuracy on {last}, mode {mode} against none"] = ow.set_index("task")
    else:
        ours, ours_verdict, p_ours = "-", NO_RUNS, np.nan
    return Finding(
        "freeze_long", f"Freezing the memory (mode {mode}) keeps accuracy on long strings better than "
                       "training everything.",
        "text on Tables 4 and 6", "accuracy kept on long strings",
        f"best model in mode {mode} more accurate than the best with everything trained on 201-400: "
        f"{pc.text('languages')}",
        ours, pc.verdict, ours_verdict,
        f"The book's rule: models chosen on validation; the paper's numbers as printed (best of 10 restarts), ours "
        f"by the t interval over paired restarts; counts over languages with a sign test. In mode {mode} the "
        f"paper's chosen model beats the best trivial predictor on 201-400 for {kb} of {len(base)} languages.",
        facts, evidence, p_ours)


STATED_SMALL = "frozen-memory models consistently outperformed others on small to medium test sets"  # abstract


def check_small_medium(inp: Inputs, mode: str = "m", splits: Sequence[str] = ("bin0", "bin1")) -> Finding:
    """The abstract: frozen-memory models "consistently outperformed others on small to medium test sets".
    Per language and bin (the first two), the best model in ``mode`` against the best with everything
    trained; and cell by cell on the first bin. Holds when it holds on every bin (sign test over languages)."""
    report.check_frozen_mode(mode)
    acc = _paper_acc(inp)
    pcs = {b: verdicts.count(verdicts.paper_mode_verdicts(inp.paper_formal, mode, "none", b).attrs["verdicts"])
           for b in splits}
    models = sorted(set(acc["model"]), key=lambda m: report._rank("model", m))
    # one effect per language (its models averaged): the cells of a language are not independent units
    cells = verdicts.paper_language_verdicts(acc, [(t, m) for t in report.task_names() for m in models], mode,
                                             "none", splits[0])
    cc = verdicts.count(cells.attrs["verdicts"])

    def overall(counts) -> str:
        vs = [c.verdict for c in counts]
        undecided = next((v for v in vs if v not in (HOLDS, FAILS)), AT_SCALE)  # the paper's word or ours
        return HOLDS if all(v == HOLDS for v in vs) else (FAILS if FAILS in vs else undecided)

    facts: dict[str, float] = {**{f"{b}_k": c.holds for b, c in pcs.items()},
                               **{f"{b}_n": c.total for b, c in pcs.items()},
                               "cells_k": cc.holds, "cells_n": cc.total}
    evidence = {f"paper: per bin, best model in mode {mode} against the best in none":
                pd.DataFrame({b: {"holds": c.holds, "does not hold": c.fails, "cannot tell": c.unsure,
                                  "sign test p": c.p, "verdict": c.verdict} for b, c in pcs.items()}).T}
    ours_acc = _ours_acc(inp)
    if len(ours_acc) and {mode, "none"} <= set(ours_acc["freeze"]):
        obins = [b for b in splits if b in set(ours_acc["split"])]
        ocs = {b: verdicts.count(verdicts.mode_verdicts(inp.formal, mode, "none", b).attrs["verdicts"])
               for b in obins}
        ours = "; ".join(f"{b}: {c.text('languages')}" for b, c in ocs.items())
        ours_verdict = overall(ocs.values())
        # 'on every bin' is an intersection of tests: its p is the largest of the bins' (intersection-union)
        p_ours = (max(c.p for c in ocs.values()) if ours_verdict == HOLDS else
                  min(c.p_against for c in ocs.values()) if ours_verdict == FAILS else np.nan)
        facts.update({f"ours_{b}_k": c.holds for b, c in ocs.items()})
        evidence[f"ours: per bin, best model in mode {mode} against the best in none"] = pd.DataFrame(
            {b: {"holds": c.holds, "does not hold": c.fails, "cannot tell": c.unsure, "sign test p": c.p,
                 "verdict": c.verdict} for b, c in ocs.items()}).T
    else:
        ours, ours_verdict, p_ours = "-", NO_RUNS, np.nan
    return Finding(
        "small_medium", f"With the memory frozen (mode {mode}), models consistently outperform the others on "
                        "small to medium test sets.",
        "abstract", STATED_SMALL,
        "; ".join(f"{b}: {c.text('languages')}" for b, c in pcs.items())
        + f"; cell by cell on {splits[0]}: {cc.text('cells')}",
        ours, overall(pcs.values()), ours_verdict,
        "Small to medium = the first two test bins. The book's rule: the paper's numbers within their rounding, "
        "ours by the t interval over paired restarts, models chosen on validation; 'consistently' = the sign "
        "test over languages holds on every bin.",
        facts, evidence, p_ours)


# ---- formal languages: accuracies that equal a trivial predictor --------------------------------------
def _tables(modes: Sequence[str]) -> str:
    """'Tables 5, 6, 7 (modes c, m, cm)': the paper's tables of ``modes``, in table order."""
    pairs = sorted((report.MODE_TABLE[m], m) for m in modes)
    return f"Tables {', '.join(t.split()[-1] for t, _ in pairs)} (modes {', '.join(m for _, m in pairs)})"


def _typical_triple(part: pd.DataFrame) -> tuple[tuple[float, ...], int]:
    """The most frequent (bin0, bin1, bin2) accuracy triple of ``part`` and how often it occurs."""
    wide = part.pivot_table(index=["model", "freeze"], columns="split", values="value", aggfunc="first")
    triples = [tuple(float(v) for v in row) for row in wide[["bin0", "bin1", "bin2"]].to_numpy()]
    counts = pd.Series(triples).value_counts(sort=False)
    top = counts[counts == counts.max()].index[0]
    return top, int(counts.max())


def _positions(near: pd.DataFrame) -> str:
    """'3 at a baseline, 10 above, 2 below (of 15 accuracies)'."""
    c = near["position"].value_counts()
    return (f"{int(c.get('at a baseline', 0))} at a baseline, {int(c.get('above', 0))} above, "
            f"{int(c.get('below', 0))} below, {int(c.get('cannot tell', 0))} cannot tell (of {len(near)} "
            "accuracies)")


def _by_bin(near: pd.DataFrame) -> pd.DataFrame:
    """:func:`marnn.verdicts.nearest_baseline` rows as (mode, model) x (bin: accuracy, nearest baseline), plus the bins
    where the accuracy is at a baseline."""
    wide = near.pivot(index=["freeze", "model"], columns="split", values=["value", "baseline"])
    bins = sorted(set(near["split"]), key=report.split_rank)
    wide = wide.swaplevel(axis=1).reindex(columns=[(b, c) for b in bins for c in ("value", "baseline")])
    wide = wide.rename(columns={"value": "accuracy", "baseline": "nearest baseline"}, level=1)
    at = near[near["position"] == "at a baseline"].groupby(["freeze", "model"])["split"].apply(
        lambda s: ", ".join(sorted(s, key=report.split_rank)))
    wide[("", "at a baseline in")] = at.reindex(wide.index).fillna("-")
    return wide.loc[report._ordered_index(wide.index, ["freeze", "model"])]


def check_count3(inp: Inputs, modes: Sequence[str] = FROZEN_MODES) -> Finding:
    """Frozen-mode count-3 accuracies (0.96 / 0.98 / 0.99): are they what repeating the previous symbol scores?"""
    modes = [report.check_frozen_mode(m) for m in modes]
    acc = _paper_acc(inp)
    part = acc[(acc["task"] == "count-3") & acc["freeze"].isin(modes)]
    triple, times = _typical_triple(part)
    near = verdicts.nearest_baseline(part, inp.paper_refs)
    rep = inp.paper_refs[(inp.paper_refs["task"] == "count-3") & (inp.paper_refs["reference"] == "repeat-previous")]
    rep = rep.set_index("split")["accuracy"].reindex(["bin0", "bin1", "bin2"])
    triple_at = all(verdicts.printed_within(a, b) == HOLDS for a, b in zip(triple, rep, strict=True))
    per_row = near.groupby(["model", "freeze"])["position"].apply(lambda s: (s == "at a baseline").all())
    k, n = int(per_row.sum()), len(per_row)
    facts = {"times": times, "k": k, "n": n, **{f"repeat_{b}": float(v) for b, v in rep.items()},
             **{f"typical_{b}": v for b, v in zip(("bin0", "bin1", "bin2"), triple, strict=True)}}
    evidence = {"paper: frozen-mode count-3 accuracy and the nearest trivial predictor": _by_bin(near)}
    ours_acc = _ours_acc(inp)
    opart = ours_acc[(ours_acc["task"] == "count-3") & ours_acc["freeze"].isin(modes)]
    if len(opart):
        onear = verdicts.baseline_equality(inp.formal, report.references_long(inp.formal),
                                           {"task": "count-3", "freeze": list(modes)})
        orow = onear.groupby(["model", "freeze"])["position"].apply(lambda s: (s == "at a baseline").all())
        ok = int(orow.sum())
        ours = (f"{ok} of {len(orow)} frozen rows at a trivial baseline in every bin; "
                f"{_positions(onear)}")
        ours_verdict = baseline_verdict(ok, len(orow))
        facts.update({"ours_k": ok, "ours_n": len(orow)})
        evidence["ours: frozen-mode count-3 accuracy and the nearest trivial predictor"] = _by_bin(onear)
    else:
        ours, ours_verdict = "-", NO_RUNS
    shown = " / ".join(f"{v:.2f}" for v in triple)
    return Finding(
        "count3", f"Frozen models stay near-perfect on long count-3 strings ({shown}).",
        _tables(modes),
        f"{shown} ({times} rows)",
        f"repeat-previous scores {' / '.join(f'{v:.3f}' for v in rep)}; {k} of {n} frozen rows equal a "
        f"trivial baseline in every bin",
        ours, BASELINE if triple_at else "above every baseline", ours_verdict,
        f"Equal = within {MARGIN} by two one-sided tests (the paper's: its printed value +- {ACC_HALF}; ours: the "
        f"95% t interval over restarts). A count-3 string changes symbol twice, so repeating the last symbol is "
        "right almost everywhere and more so the longer the string.",
        facts, evidence)


def check_binary(inp: Inputs, modes: Sequence[str] = FROZEN_MODES, low: float = 0.49,
                 high: float = 0.50) -> Finding:
    """Frozen-mode accuracies of about one half on the binary-word languages: a trivial predictor's score?"""
    modes = [report.check_frozen_mode(m) for m in modes]
    acc = _paper_acc(inp)
    part = acc[acc["task"].isin(BINARY_TASKS) & acc["freeze"].isin(modes)]
    near = verdicts.nearest_baseline(part, inp.paper_refs)
    band = near[(near["value"] >= low - 1e-9) & (near["value"] <= high + 1e-9)]
    kb = int((band["position"] == "at a baseline").sum())
    k_all = int((near["position"] == "at a baseline").sum())
    facts = {"band_k": kb, "band_n": len(band), "k": k_all, "n": len(near), "share": k_all / max(len(near), 1)}

    def summary(frame: pd.DataFrame) -> pd.DataFrame:
        return (frame.assign(at=frame["position"] == "at a baseline")
                .groupby("freeze")["at"].agg(accuracies="size", at_baseline="sum")
                .rename(columns={"at_baseline": "at a baseline"})
                .reindex([m for m in modes if m in set(frame["freeze"])]))

    evidence = {"paper: frozen-mode accuracies on the binary-word languages": summary(near)}
    ours_acc = _ours_acc(inp)
    opart = ours_acc[ours_acc["task"].isin(BINARY_TASKS) & ours_acc["freeze"].isin(modes)]
    if len(opart):
        onear = verdicts.baseline_equality(inp.formal, report.references_long(inp.formal),
                                           {"task": list(BINARY_TASKS), "freeze": list(modes)})
        ok = int((onear["position"] == "at a baseline").sum())
        ours = f"frozen-mode accuracies: {_positions(onear)}"
        ours_verdict = baseline_verdict(ok, len(onear))
        facts.update({"ours_k": ok, "ours_n": len(onear), "ours_share": ok / len(onear)})
        evidence["ours: frozen-mode accuracies on the binary-word languages"] = summary(onear)
    else:
        ours, ours_verdict = "-", NO_RUNS
    return Finding(
        "binary", f"Frozen models hold their accuracy on long strings of the binary-word languages "
                  f"({low:.2f}-{high:.2f}).",
        _tables(modes),
        f"{len(band)} accuracies of {low:.2f}-{high:.2f}",
        f"{kb} of those {len(band)} (and {k_all} of all {len(near)}) equal a trivial baseline",
        ours, baseline_verdict(kb, len(band)), ours_verdict,
        f"Equal = within {MARGIN} by two one-sided tests (the paper's: its printed value +- {ACC_HALF}; ours: the "
        f"95% t interval over restarts); the counts are descriptive (cells of one language share its data). "
        "On these languages most-frequent and repeat-previous score about one half: "
        "a guess per bit, which needs no memory of the word.",
        facts, evidence)


# ---- stability theory (Section 3, Appendix C) --------------------------------------------------------
def _gap_position(lo: float, hi: float, near: float) -> str:
    """near random / above / below / cannot tell, by two one-sided tests on the gap's range."""
    v = verdicts.within(lo, hi, 0.0, 0.0, near)
    return {HOLDS: "near random", verdicts.UNSURE: "cannot tell"}.get(v, "above" if lo > near else "below")


def random_loss_gap(ppl: pd.DataFrame, acc: pd.DataFrame, chance_ce: pd.Series, first: str = "bin0",
                    last: str = "bin2", half: float = PPL_HALF, near: float = NEAR_RANDOM) -> pd.DataFrame:
    """The paper's mode-none cells whose printed accuracy falls from ``first`` to ``last`` (printed values
    that differ are ordered): their cross-entropy on ``last`` against the uniform guess's (``chance_ce`` per
    task, nats per symbol), with the range its printed perplexity (+- ``half``) leaves, and the position by
    two one-sided tests (within ``near`` nats: near random)."""
    a = acc[(acc["freeze"] == "none") & acc["split"].isin([first, last])]
    a = a.pivot_table(index=["task", "model"], columns="split", values="value", aggfunc="first")
    falling = a.index[[verdicts.rounded(f, la).verdict == HOLDS for f, la in zip(a[first], a[last], strict=True)]]
    p = ppl[(ppl["freeze"] == "none") & (ppl["split"] == last)].set_index(["task", "model"])["value"]
    out = pd.DataFrame({"perplexity": p.reindex(falling)}).dropna(subset=["perplexity"])
    out["cross-entropy"] = np.log(out["perplexity"])
    out["uniform guess"] = [chance_ce.get(t, np.nan) for t, _ in out.index]
    out["gap"] = out["cross-entropy"] - out["uniform guess"]
    lo = np.log(np.maximum(out["perplexity"] - half, 1.0)) - out["uniform guess"]
    hi = np.log(out["perplexity"] + half) - out["uniform guess"]
    out["position"] = [_gap_position(x, y, near) for x, y in zip(lo, hi, strict=True)]
    out["near random"] = out["position"] == "near random"
    return out


def ours_loss_gap(df: pd.DataFrame, chance_ce: pd.Series, first: str = "bin0", last: str = "bin2",
                  near: float = NEAR_RANDOM) -> pd.DataFrame:
    """Our mode-none cells whose accuracy falls from ``first`` to ``last`` by the rule over restarts: per
    restart the cross-entropy on ``last`` minus the uniform guess's, its 95% t interval over restarts and the
    position by two one-sided tests (within ``near`` nats: near random)."""
    runs = report.all_runs_long(df[df["freeze"] == "none"], ("accuracy", "cross_entropy"))
    wide = runs.pivot_table(index=["task", "model", "seed"], columns=["metric", "split"], values="value",
                            aggfunc="first")
    rows = {}
    needed = [("accuracy", first), ("accuracy", last), ("cross_entropy", last)]
    groups = wide.groupby(level=["task", "model"]) if len(wide) and all(c in wide.columns for c in needed) else []
    for (task, model), g in groups:
        g = g.dropna(subset=[("accuracy", first), ("accuracy", last), ("cross_entropy", last)])
        if len(g) < 1 or task not in chance_ce.index:
            continue
        fall = verdicts.paired_restarts(g[("accuracy", first)].to_numpy()[:, None],
                                        g[("accuracy", last)].to_numpy()[:, None])
        if fall.verdict != HOLDS:
            continue
        gaps = g[("cross_entropy", last)].to_numpy() - float(chance_ce[task])
        mean, lo, hi = (float(x) for x in verdicts.t_limits(gaps))
        rows[(task, model)] = {"perplexity": float(np.exp(g[("cross_entropy", last)].mean())),
                               "cross-entropy": float(g[("cross_entropy", last)].mean()),
                               "uniform guess": float(chance_ce[task]), "gap": mean, "gap lo": lo, "gap hi": hi,
                               "position": _gap_position(lo, hi, near)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    if out.empty:
        return pd.DataFrame(columns=["perplexity", "cross-entropy", "uniform guess", "gap", "gap lo", "gap hi",
                                     "position", "near random"],
                            index=pd.MultiIndex.from_tuples([], names=["task", "model"]))
    out.index = pd.MultiIndex.from_tuples(out.index, names=["task", "model"])
    out["near random"] = out["position"] == "near random"
    return out


def _gap_summary(gap: pd.DataFrame) -> pd.DataFrame:
    """Per language: cells, how many are near / above / below the uniform guess or undecided, the largest
    perplexity."""
    pos = gap["position"]
    g = gap.assign(above=pos == "above", below=pos == "below", unsure=pos == "cannot tell").groupby(level="task")
    out = pd.DataFrame({"cells": g.size(), "near random": g["near random"].sum(), "above": g["above"].sum(),
                        "below": g["below"].sum(), "cannot tell": g["unsure"].sum(),
                        "largest perplexity": g["perplexity"].max()})
    return out.reindex([t for t in report.task_names() if t in out.index])


def check_thm34(inp: Inputs) -> Finding:
    """Thm 3.4: an unstable model's loss approaches a random model's. The paper's tables give the loss on
    201-400 of every fully trained model; we take the uniform guess as the random model."""
    pf = inp.paper_formal
    chance = inp.paper_refs[(inp.paper_refs["reference"] == "chance") & (inp.paper_refs["split"] == "bin2")]
    gap = random_loss_gap(pf[pf["metric"] == "perplexity"], pf[pf["metric"] == "accuracy"],
                          chance.set_index("task")["cross_entropy"])
    k, n = int(gap["near random"].sum()), len(gap)
    above = int((gap["position"] == "above").sum())
    facts = {"k": k, "n": n, "above": above, "max_ppl": float(gap["perplexity"].max()) if n else np.nan}
    evidence = {"paper, mode none, cells that lose accuracy: loss on 201-400 against the uniform guess":
                _gap_summary(gap)}
    if not inp.formal.empty:
        last = _ours_last(inp)
        ref = report.reference_table(inp.formal[inp.formal["freeze"] == "none"])
        ch = ref.xs("(chance)", level=1)[(last, "perplexity")] if len(ref) else pd.Series(dtype=float)
        og = ours_loss_gap(inp.formal, np.log(ch), last=last)
        ok = int(og["near random"].sum())
        ours = (f"{ok} of {len(og)} falling cells near random ({int((og['position'] == 'above').sum())} above, "
                f"{int((og['position'] == 'cannot tell').sum())} cannot tell; 95% t interval over restarts)")
        ours_verdict = share_verdict(ok, len(og), "cells")
        facts.update({"ours_k": ok, "ours_n": len(og)})
        evidence[f"ours, mode none, cells that lose accuracy: loss on {last} against the uniform guess"] = \
            _gap_summary(og)
    else:
        ours, ours_verdict = "-", NO_RUNS
    return Finding(
        "thm34", "Thm 3.4: where a model fails to generalise, its loss on long strings approaches that of a "
                 "model with random parameters.",
        "Section 3, Thm 3.4", "loss tends to a random model's",
        f"{k} of {n} fully trained cells that lose accuracy are within {NEAR_RANDOM} nats of the uniform guess "
        f"(two one-sided tests on the printed perplexity's rounding range) "
        f"on 201-400; {above} are above it (perplexity up to {facts['max_ppl']:.5g})",
        ours, UNTESTED if n == 0 else share_verdict(k, n, "cells"), ours_verdict,
        "Our reading: a randomly initialised model with small weights predicts nearly uniformly, so its loss is "
        "the uniform guess's. A loss far above it is confident and wrong, not random. Near = within "
        f"{NEAR_RANDOM} nats by two one-sided tests; the counts of cells are descriptive.",
        facts, evidence)


def check_untested(inp: Inputs, chapters: Sequence[str] = ()) -> list[Finding]:
    """Predictions of the theory that need measurements the paper's tables do not have.

    The verdicts come from the tables: a growth law with three free parameters
    cannot be tested on three length bins, and no table holds held-out
    patterns, perturbed inputs or a change of numeric precision. Our side
    points to the book's stability chapter, and to its precision chapter when
    ``chapters`` (the book's notebook names) lists one.
    """
    pf = inp.paper_formal
    bins = sorted({s for s in pf["split"] if str(s).startswith("bin")}, key=report.split_rank)
    metrics = ", ".join(sorted(set(pf["metric"])))
    testable = len(bins) > GROWTH_PARAMETERS
    # the weaker half of Thm 3.6, "a frozen controller *can* beat an unstable fully trained model",
    # is visible in the tables: mode c against mode none, perplexity on the last bin
    ppl = pf[(pf["metric"] == "perplexity") & (pf["split"] == bins[-1])]
    wide = ppl.pivot_table(index=["task", "model"], columns="freeze", values="value", aggfunc="first")
    both = wide[["none", "c"]].dropna() if {"none", "c"} <= set(wide.columns) else pd.DataFrame()
    k_c = int((both["c"] < both["none"]).sum()) if len(both) else 0
    lengths = _ours_lengths(inp)
    ours = f"{lengths} or more string lengths per run in our records" if lengths else "-"
    rows = [
        ("thm36", "Thm 3.6: unstable loss grows like a|x|^b + c with b > 1; with a frozen controller it grows "
                  "at most linearly.", "Section 3, Thm 3.6", "growth law",
         f"{len(bins)} length bins per model for a law with {GROWTH_PARAMETERS} free parameters", testable,
         f"The weaker half (a frozen controller can do better on long strings) is in the tables: mode c has "
         f"the lower perplexity on 201-400 for {k_c} of {len(both)} (language, model) pairs."),
        ("thm37", "Thm 3.7: an unstable model has near-zero loss just past the training lengths, then "
                  "super-linear growth, then at least chance-level error.", "Section 3, Thm 3.7",
         "shape of loss against length", f"{len(bins)} length bins per model, no loss per length", testable, ""),
        ("appc", "Appendix C: a stable model handles unseen patterns and is robust to perturbed inputs.",
         "Appendix C", "criteria to measure",
         f"metrics in the tables: {metrics}; no held-out patterns, no perturbed inputs", False, ""),
        ("precision", "The title promises insights on precision (how many bits a state or stack can hold).",
         "title", "(no experiment)", "no table varies the number format or names one", False, ""),
    ]
    out = []
    for fid, claim, source, value, recomputed, can, note in rows:
        stability = fid != "precision"
        elsewhere = ELSEWHERE if stability else (PRECISION if "precision" in chapters else NOT_RUN)
        out.append(Finding(fid, claim, source, value, recomputed, ours if stability else "-",
                           "tested" if can else UNTESTED, elsewhere, note,
                           {"bins": len(bins), "lengths": lengths, "c_wins": k_c, "pairs": len(both)}
                           if fid == "thm36" else {}, {}))
    return out


def _ours_lengths(inp: Inputs) -> int:
    """Distinct string lengths with their own metrics in one of our runs (0 without records).

    ``load`` drops the per-length rows to stay fast; the count comes from the
    scale's test bins and the languages' valid lengths instead.
    """
    if inp.formal.empty:
        return 0
    from .. import tasks

    sc = get_scale(inp.scale)
    counts = [sum(len(tasks.get(t).valid_lengths(lo, hi)) for lo, hi in sc.test_bins)
              for t in sorted(set(inp.formal["task"]))]
    return int(min(counts)) if counts else 0


def margins() -> pd.DataFrame:
    """Every rounding half-unit, margin and level the checks use, with its value and meaning (for the page).
    None decides a verdict on one number: a half-unit is the range a printed number stands for, a margin is
    that of two one-sided tests on a range or an interval."""
    rows = [
        ("ACC_HALF", ACC_HALF, "half a unit of the paper's two-decimal accuracies"),
        ("PPL_HALF", PPL_HALF, "half a unit of Table 3's one-decimal perplexities"),
        ("PCT_HALF", PCT_HALF, "half a unit of a percentage given to two decimals (1.73%)"),
        ("WHOLE_PCT_HALF", WHOLE_PCT_HALF, "half a unit of a whole percentage (60%)"),
        ("MARGIN", MARGIN, "equivalence margin of accuracies and accuracy ratios (equal, 'close to', a stated "
                           "drop): two units of the printed digit, twice a paper-2core bin's standard error"),
        ("NEAR_RANDOM", NEAR_RANDOM, "equivalence margin, nats per symbol: a loss within this of the uniform "
                                     "guess's is 'near random'"),
        ("verdicts.LEVEL", verdicts.LEVEL, "level of the t interval over restarts of every comparison of ours"),
        ("verdicts.ALPHA", verdicts.ALPHA, "one-sided level of every decision: interval, sign test over "
                                           "languages, Holm over the headline claims"),
    ]
    return pd.DataFrame(rows, columns=["name", "value", "meaning"]).set_index("name")


def show(finding: Finding, scale: str) -> None:
    """Display one finding on a page: both verdicts, the note, then its evidence tables."""
    from IPython.display import Markdown, display

    display(Markdown(f"**The paper says** {finding.paper_value}; **its tables give** {finding.recomputed} → "
                     f"*{finding.verdict}*.  \n**Our runs (`{scale}`)** give {finding.ours} → "
                     f"*{finding.ours_verdict}*." + (f"  \n{finding.note}" if finding.note else "")))
    for caption, frame in finding.evidence.items():
        display(Markdown(f"*{caption[0].upper()}{caption[1:]}:*"))
        display(frame)


# ---- the whole audit --------------------------------------------------------------------------
CHECKS: tuple[Callable[[Inputs], Finding], ...] = (
    check_ptb_gain, check_ptb_best, check_ptb_freeze, check_drop, check_retention, check_count3,
    check_binary, check_freeze_long, check_small_medium, check_thm34,
)


def run_checks(inp: Inputs, chapters: Sequence[str] = ()) -> list[Finding]:
    """Every check, in the page's order (the untested predictions last); ``chapters``: the book's
    notebook names (``marnn.book.NOTEBOOKS``), to point at the chapters that measure what the paper does not.
    Our decided verdicts are corrected together over the claims (:func:`correct`). Where the pages
    train nothing (``marnn.store.may_train``), a claim without runs is not trained yet."""
    found = correct([check(inp) for check in CHECKS] + check_untested(inp, chapters))
    from ..store import may_train

    if may_train():
        return found
    import dataclasses

    return [dataclasses.replace(f, ours_verdict=verdicts.NOT_TRAINED) if f.ours_verdict == NO_RUNS else f
            for f in found]


HOLM_NOTE = "not significant after Holm's correction over the {m} headline claims tested"


def correct(findings: Sequence[Finding], alpha: float = verdicts.ALPHA) -> list[Finding]:
    """Holm's correction over the headline claims of the landing page: every finding whose verdict on our
    runs rests on a test (``p`` finite) keeps it only if its Holm-adjusted p is below ``alpha``; otherwise
    it becomes ``cannot tell`` with a note. Returns new findings (the input is not changed)."""
    import dataclasses

    adj = verdicts.holm([f.p for f in findings])
    m = int(np.isfinite(adj).sum())
    out = []
    for f, a in zip(findings, adj, strict=True):
        if np.isfinite(a) and f.ours_verdict in (HOLDS, FAILS) and a >= alpha:
            f = dataclasses.replace(f, ours_verdict=AT_SCALE,
                                    note=(f.note + " " if f.note else "") + HOLM_NOTE.format(m=m)
                                    + f" (adjusted p = {a:.2g}).")
        out.append(f)
    return out


def table(findings: Sequence[Finding]) -> pd.DataFrame:
    """One row per claim: claim, source, paper_value, recomputed, verdict (the paper's side), then ours,
    ours_verdict (our runs) and a note."""
    return pd.DataFrame([f.row() for f in findings]).set_index("id")


OUTCOMES = ("holds", "holds in part", "does not hold", "cannot tell", "at a trivial baseline",
            "not tested by the paper", "not checked here", "other")


def outcome(verdict: str) -> str:
    """A verdict's class for the summary (one of :data:`OUTCOMES`)."""
    if verdict == HOLDS:
        return "holds"
    if verdict.startswith("holds "):
        return "holds in part"
    if verdict in (FAILS, ARITHMETIC):
        return "does not hold"
    if verdict == BASELINE or re.fullmatch(r"\d+ of \d+ at a trivial baseline", verdict):
        return "at a trivial baseline"
    if verdict == UNTESTED:
        return "not tested by the paper"
    if verdict in (AT_SCALE, verdicts.UNSURE_PRINTED, verdicts.NOT_TRAINED):
        return "cannot tell"
    if verdict in (NO_RUNS, ELSEWHERE, PRECISION, NOT_RUN):
        return "not checked here"
    return "other"


def summary(findings: Sequence[Finding]) -> pd.DataFrame:
    """Claims per outcome: on the paper's own tables and in our runs."""
    t = table(findings)
    out = pd.DataFrame({"paper's tables": t["verdict"].map(outcome).value_counts(),
                        "our runs": t["ours_verdict"].map(outcome).value_counts()})
    out = out.reindex([o for o in OUTCOMES if o in out.index]).fillna(0).astype(int)
    out.index.name = "outcome"
    return out


def facts(findings: Sequence[Finding]) -> dict[str, float]:
    """Every finding's numbers, keyed ``<id>_<key>`` (for ``report.glue_all``)."""
    out: dict[str, float] = {}
    for f in findings:
        for key, value in f.facts.items():
            out[f"{f.id}_{key}"] = value
    return out
