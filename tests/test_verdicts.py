"""The one comparison rule (marnn.verdicts): known answers, and every verdict flips when its data flips."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from marnn import report, store
from marnn import verdicts as V
from marnn.grid import formal_config, ptb_config
from marnn.ptb import Corpus

from test_report import fake_formal, fake_ptb


# ---- the rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi, expected", [(0.01, 0.2, V.HOLDS), (-0.2, -0.01, V.FAILS), (0.0, 0.0, V.FAILS),
                                              (-0.1, 0.1, V.UNSURE), (0.0, 0.1, V.UNSURE)])
def test_decide(lo, hi, expected):
    assert V.decide(lo, hi) == expected


def test_sign_test_known_answers_and_bad_input():
    assert V.sign_test(7, 7) == pytest.approx(1 / 128)
    assert V.sign_test(6, 7) == pytest.approx(8 / 128)
    assert V.sign_test(0, 5) == 1.0 and V.sign_test(0, 0) == 1.0
    assert V.sign_test(3, 6) == pytest.approx(sum(math.comb(6, i) for i in range(3, 7)) / 64)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        V.sign_test(4, 3)


def test_identical_by_construction():
    assert V.identical_by_construction("lstm", "m", "none") and V.identical_by_construction("lstm", "cm", "c")
    assert not V.identical_by_construction("lstm", "m", "c")
    assert not V.identical_by_construction("jm-10", "m", "none")
    assert V.identical_by_construction("lstm-256", "m", "none", "controller")
    assert not V.identical_by_construction("lstm-256", "m", "none", "memory")  # the embedding freezes


def test_rule_flips_with_its_data_and_is_deterministic():
    rng = np.random.default_rng(1)
    b = 0.5 + 0.01 * rng.standard_normal((3, 12))
    a = b + 0.1 + 0.005 * rng.standard_normal((3, 1))  # a restart effect: the differences vary by restart
    better = V.paired_restarts(a, b)
    assert better.verdict == V.HOLDS and better.lo > 0 and better.difference == pytest.approx(0.1, abs=0.01)
    assert V.paired_restarts(b, a).verdict == V.FAILS
    assert V.paired_restarts(a, b) == better  # no randomness: the same data, the same verdict
    assert V.paired_restarts(a, b, higher=False).verdict == V.FAILS  # lower is better (perplexity)
    same = V.paired_restarts(b, b)
    assert (same.lo, same.hi, same.verdict) == (0.0, 0.0, V.FAILS)  # equal on every restart: not better
    noisy = b + np.array([[0.2], [-0.2], [0.2]])  # restarts that disagree: undecided
    assert V.paired_restarts(noisy, b).verdict == V.UNSURE


def test_the_interval_is_the_t_interval_over_restart_means():
    # known answer: restart differences 0.18, 0.2, 0.22 -> mean 0.2, sd 0.02, t(2) = 4.3027
    a = np.array([[0.68, 0.68], [0.7, 0.7], [0.72, 0.72]])
    v = V.paired_restarts(a, np.full_like(a, 0.5))
    half = 4.302652729749752 * 0.02 / math.sqrt(3)
    assert (v.difference, v.lo, v.hi) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    assert v.verdict == V.HOLDS and v.pairs == 3 and v.p == pytest.approx(0.25)  # the sign-flip floor at R = 3
    # more lengths (or strings) at the same restart means never narrow it: only restarts do
    wide = np.repeat(a, 40, axis=1) + np.tile([0.05, -0.05], (3, 40))
    assert V.paired_restarts(wide, np.full_like(wide, 0.5)).lo == pytest.approx(v.lo)


@pytest.mark.parametrize("df, t", [(1, 12.7062047), (2, 4.30265273), (4, 2.77644511), (9, 2.26215716)])
def test_t_quantiles_known_answers(df, t):
    assert V.t_quantile(0.95, df) == pytest.approx(t, rel=1e-7)
    assert V.t_central(t, df) == pytest.approx(0.95, abs=1e-8)


def test_clipped_cuts_an_interval_to_the_possible_range():
    assert V.clipped(0.1, 1.3, 0.0, 1.0) == (0.1, 1.0, "upper limit cut at the possible range")
    assert V.clipped(-0.2, 1.3, 0.0, 1.0) == (0.0, 1.0, "lower and upper limit cut at the possible range")
    assert V.clipped(0.2, 0.4, 0.0, 1.0) == (0.2, 0.4, "")
    assert V.clipped(-np.inf, np.inf, 0.0) == (0.0, np.inf, "lower limit cut at the possible range")
    with pytest.raises(ValueError, match="low <= high"):
        V.clipped(0.0, 1.0, 1.0, 0.0)


def test_sign_flip_floor_and_the_design_note():
    assert V.sign_flip_p([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    assert V.sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert V.sign_flip_p([0.1, -0.1]) == 1.0
    assert "cannot go below p = 0.25" in V.design_note(3) and "4.30" in V.design_note(3)
    assert "can reach p = 0.0156" in V.design_note(7)
    assert "no interval" in V.design_note(1)
    with pytest.raises(ValueError, match="finite restart differences"):
        V.sign_flip_p([])


def test_rule_weights_give_the_bin_accuracy_and_one_restart_decides_nothing():
    a, b = np.array([[1.0, 0.0], [1.0, 0.0]]), np.zeros((2, 2))
    assert V.paired_restarts(a, b, weights=[3, 1]).difference == pytest.approx(0.75)
    one = V.paired_restarts(a[:1] + 1, b[:1])
    assert one.verdict == V.UNSURE and "one restart" in one.method and "no interval" in one.text()
    with pytest.raises(ValueError, match="one shape"):
        V.paired_restarts(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="weights"):
        V.paired_restarts(a, b, weights=[1, -1])


def test_a_run_equal_to_a_reference_at_every_restart_is_not_above_it():
    # count-3 at 51-100: per length (L + 1 - 3) / (L + 1) correct, weighted by symbols; the reference is the bin's
    # exact value. The weighted sum leaves a float residue of ~1e-17 that a zero-spread interval must not decide.
    lengths = np.arange(51, 100, 3)
    per = (lengths + 1 - 3) / (lengths + 1)
    ref = float((per * (lengths + 1)).sum() / (lengths + 1).sum())
    runs = np.tile(per, (3, 1))
    assert V.restart_differences(runs, np.full_like(runs, ref), lengths + 1).tolist() == [0.0, 0.0, 0.0]
    v = V.paired_restarts(runs, np.full_like(runs, ref), lengths + 1)
    assert (v.difference, v.lo, v.hi, v.verdict) == (0.0, 0.0, 0.0, V.FAILS)  # not above: exactly at it
    up = V.paired_restarts(runs + 1e-3, np.full_like(runs, ref), lengths + 1)
    assert up.verdict == V.HOLDS  # a real constant gap is still decided


# ---- calibration: the stated level is the level -----------------------------------------------------------
# Noise of the sizes in the committed quick records (mode m - mode none, bin 51-100, median over the
# (language, model) cells): the restart effect of the per-restart difference has sd ~0.03, the residual of
# one length ~0.05, the fixed effect of a length ~0.015, over ~17 lengths. Simulated datasets: restart
# effect + length effect (fixed: the same lengths in every restart) + residual.
SIM, LENGTHS = 4000, 17
RESTART_SD, RESIDUAL_SD, LENGTH_SD = 0.03, 0.05, 0.015
EFFECT = 0.06  # the stated effect for the power check: about twice the restart sd


def _simulate(restarts: int, effect: float, seed: int, sims: int = SIM):
    rng = np.random.default_rng(seed)
    weights = rng.integers(20, 200, LENGTHS).astype(float)  # symbols per length, fixed
    length_effect = LENGTH_SD * rng.standard_normal(LENGTHS)  # fixed lengths: an effect, not noise
    b = 0.5 + 0.1 * rng.standard_normal((sims, restarts, LENGTHS))
    a = (b + effect + length_effect - (length_effect @ weights) / weights.sum()
         + RESTART_SD * rng.standard_normal((sims, restarts, 1))
         + RESIDUAL_SD * rng.standard_normal((sims, restarts, LENGTHS)))
    return a, b, weights


def _mc(rate: float, n: int = SIM) -> float:
    """Three Monte Carlo standard errors of a rate."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


def _false_holds(restarts: int) -> float:
    a, b, w = _simulate(restarts, 0.0, seed=restarts)
    _, lo, _ = V.restart_interval(a, b, w)
    return float(np.mean(lo > 0))


def _coverage(restarts: int) -> float:
    a, b, w = _simulate(restarts, EFFECT, seed=10 + restarts)
    _, lo, hi = V.restart_interval(a, b, w)
    return float(np.mean((lo <= EFFECT) & (EFFECT <= hi)))


def _power(restarts: int) -> float:
    a, b, w = _simulate(restarts, EFFECT, seed=20 + restarts)
    _, lo, _ = V.restart_interval(a, b, w)
    return float(np.mean(lo > 0))


NOMINAL_FALSE = (1 - V.LEVEL) / 2  # "holds" is a one-sided decision at 2.5%


def _calibrated() -> list[str]:
    """The calibration checks that fail (empty: all pass)."""
    failed = []
    for r in (3, 5):
        if _false_holds(r) > NOMINAL_FALSE + _mc(NOMINAL_FALSE):
            failed.append(f"false holds at {r} restarts")
        if _coverage(r) < V.LEVEL - _mc(V.LEVEL):
            failed.append(f"coverage at {r} restarts")
    if _power(5) < 0.80:
        failed.append("power at 5 restarts")
    return failed


def test_calibration_false_holds_coverage_and_power():
    for r in (3, 5):
        assert _false_holds(r) <= NOMINAL_FALSE + _mc(NOMINAL_FALSE)
        assert _coverage(r) >= V.LEVEL - _mc(V.LEVEL)
    assert _power(5) >= 0.80  # a true difference of 0.06 (twice the restart sd) is found with 5 restarts
    assert _power(3) < _power(5)  # with 3 restarts less often (t with 2 df)
    assert _calibrated() == []


def test_calibration_catches_a_rule_that_ignores_restart_variance(monkeypatch):
    """The mutant of issue 18: a bootstrap that resamples lengths only, with the restarts averaged first."""

    def lengths_only(a, b, weights=None, *, higher=True, level=V.LEVEL, boot=200):
        d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        d = d.mean(axis=-2)  # restarts averaged: their spread is lost
        w = np.ones(d.shape[-1]) if weights is None else np.asarray(weights, dtype=float)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, d.shape[-1], (boot, d.shape[-1]))
        stats_ = (d[..., idx] * w[idx]).sum(-1) / w[idx].sum(-1)  # (..., boot)
        q = (1 - level) / 2
        lo, hi = np.quantile(stats_, [q, 1 - q], axis=-1)
        return (d @ w) / w.sum(), lo, hi

    monkeypatch.setattr(V, "restart_interval", lengths_only)
    failed = _calibrated()
    assert any(f.startswith("false holds") for f in failed) and any(f.startswith("coverage") for f in failed)


def test_calibration_of_equivalence():
    """Two one-sided tests on the interval: a true gap exactly at the margin is called equal at most
    2.5% of the time (each one-sided test at (1 - LEVEL) / 2); a true gap of 0 is called equal with 5
    restarts when the noise allows."""
    a, b, w = _simulate(5, V.MARGIN, seed=31)
    _, lo, hi = V.restart_interval(a, b, w)
    inside = (lo >= -V.MARGIN) & (hi <= V.MARGIN)
    assert float(np.mean(inside)) <= NOMINAL_FALSE + _mc(NOMINAL_FALSE)
    assert V.within(-0.01, 0.01) == V.HOLDS and V.within(0.03, 0.05) == V.FAILS
    assert V.within(-0.01, 0.03) == V.UNSURE
    assert V.within(0.85, 0.93, 0.895, 0.905, margin=0.05) == V.HOLDS
    with pytest.raises(ValueError, match="margin >= 0"):
        V.within(0, 1, margin=-1)


def test_holm_known_answers():
    adj = V.holm([0.01, 0.04, float("nan"), 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[1] == pytest.approx(0.06) and adj[3] == pytest.approx(0.06)
    assert np.isnan(adj[2])
    with pytest.raises(ValueError, match="p-values"):
        V.holm([1.5])


@pytest.mark.parametrize("a, b, expected", [(0.52, 0.50, V.HOLDS), (0.51, 0.50, V.HOLDS),
                                            (0.50, 0.50, V.UNSURE_PRINTED), (0.49, 0.50, V.FAILS)])
def test_paper_numbers_keep_their_rounding(a, b, expected):
    # rounding is monotone: two printed values that differ are ordered; equal ones cannot be told apart
    v = V.rounded(a, b)
    assert v.verdict == expected and "rounding range" in v.method and "best of 10 restarts" in v.method
    assert v.lo <= v.difference <= v.hi and v.hi - v.lo <= 4 * V.ACC_HALF + 1e-12


@pytest.mark.parametrize("a, x, expected", [(0.51, 0.50, V.HOLDS), (0.505, 0.50, V.UNSURE_PRINTED),
                                            (0.50, 0.5049, V.UNSURE_PRINTED), (0.49, 0.4999, V.FAILS)])
def test_a_printed_number_against_an_exact_one(a, x, expected):
    assert V.printed_vs_exact(a, x).verdict == expected  # margin: half a unit (0.005)
    assert V.printed_within(0.50, 0.49) == V.HOLDS and V.printed_within(0.55, 0.50) == V.FAILS
    assert V.printed_within(0.52, 0.50) == V.UNSURE_PRINTED


def test_count_flips_with_the_verdicts():
    up, down = V.rounded(0.9, 0.5), V.rounded(0.5, 0.9)
    assert V.count([up] * 7).verdict == V.HOLDS
    assert V.count([down] * 7).verdict == V.FAILS
    mixed = V.count([up] * 4 + [down] * 3 + [V.excluded()])
    assert mixed.verdict == V.UNSURE_PRINTED and mixed.excluded == 1 and mixed.total == 7  # the paper's numbers
    assert "1 identical by construction left out" in mixed.text("pairs")
    assert V.count([up] * 6).verdict == V.HOLDS and V.count([up] * 4).verdict == V.UNSURE_PRINTED  # 1/16 > 0.05


# ---- our runs: paired by seed and length --------------------------------------------------------
def _store(tmp_path, cells: dict[tuple[str, str], list[tuple[float, float, float]]], task="count-3"):
    """Records of ``task``: cells[(model, mode)] = one accuracy triple per restart."""
    for (model, mode), accs in cells.items():
        for seed, acc in enumerate(accs):
            valid = 0.5 + 0.01 * seed + (0.1 if model == "lstm" else 0.0)  # jm-10 is chosen on validation
            store.save_record(fake_formal(formal_config(task, model, mode, seed, "smoke"), valid, acc), tmp_path)
    return report.formal_results("smoke", tasks=[task], models=sorted({m for m, _ in cells}),
                                 modes=sorted({f for _, f in cells}), restarts=max(map(len, cells.values())),
                                 root=str(tmp_path),
                                 compute=False)


HIGH = [(0.9, 0.8, 0.8), (0.9, 0.85, 0.75), (0.9, 0.82, 0.78)]
LOW = [(0.9, 0.5, 0.4), (0.9, 0.45, 0.35), (0.9, 0.48, 0.38)]


@pytest.mark.parametrize("m, none, expected", [(HIGH, LOW, V.HOLDS), (LOW, HIGH, V.FAILS)])
def test_pages_verdicts_flip_with_the_records(tmp_path, m, none, expected):
    df = _store(tmp_path, {("jm-10", "m"): m, ("jm-10", "none"): none, ("lstm", "m"): LOW, ("lstm", "none"): LOW})
    pairs = V.pair_verdicts(df, [("count-3", "jm-10"), ("count-3", "lstm")], "m", "none", "bin2")
    assert list(pairs["verdict"]) == [expected, V.EXCLUDED]  # lstm: identical by construction
    table1 = V.mode_verdicts(df, "m", "none", "bin2")
    assert list(table1["verdict"]) == [expected]
    pos = V.positions(df, [{"task": "count-3", "model": "jm-10", "freeze": "m"}], "bin2")
    # fake references: best trivial 0.5, ceiling 0.9 (exact)
    assert pos["vs trivial"].iloc[0] == ("above" if expected == V.HOLDS else "not above")
    assert pos["ceiling"].iloc[0] == "0.90"


def test_models_are_chosen_on_validation_not_on_the_test_bin(tmp_path):
    # lstm has the higher test accuracy in both modes, jm-10 the lower validation cross-entropy: jm-10 is chosen
    df = _store(tmp_path, {("jm-10", "m"): LOW, ("jm-10", "none"): LOW, ("lstm", "m"): HIGH, ("lstm", "none"): HIGH})
    table1 = V.mode_verdicts(df, "m", "none", "bin2")
    assert table1[["model (m)", "model (none)"]].iloc[0].tolist() == ["jm-10", "jm-10"]
    assert report.top_models(df, 1, modes=("none", "m")) == {"count-3": ["jm-10"]}
    with pytest.raises(ValueError, match="chooses models on validation"):
        report.best_per_task(report.ours_long(df, ["accuracy"]), ["bin2"])


def test_language_counts_use_one_effect_per_language(tmp_path):
    df = _store(tmp_path, {("jm-10", "m"): HIGH, ("jm-10", "none"): LOW, ("lstm", "m"): LOW, ("lstm", "none"): LOW})
    langs = V.language_verdicts(df, [("count-3", "jm-10"), ("count-3", "lstm")], "m", "none", "bin2")
    assert len(langs) == 1 and langs["models"].iloc[0] == "jm-10"  # lstm: identical by construction, left out
    assert langs["verdict"].iloc[0] == V.HOLDS and V.count(langs.attrs["verdicts"]).total == 1


def test_an_upper_bound_ceiling_is_labelled(tmp_path):
    rec = fake_formal(formal_config("unmarked-copy", "jm-10", "m", 0, "smoke"), 0.5, (0.6, 0.5, 0.5))
    rec["bins"]["bin2"]["ceiling_exact"] = False
    store.save_record(rec, tmp_path)
    df = report.formal_results("smoke", tasks=["unmarked-copy"], models=["jm-10"], modes=["m"], restarts=1,
                               root=str(tmp_path), compute=False)
    refs = report.references_long(df)
    ceil = refs[refs["reference"] == "ceiling"].set_index("split")["exact"]
    assert ceil.to_dict() == {"bin0": True, "bin1": True, "bin2": False}
    table = report.best_table(df, "m")
    assert table.loc[("unmarked-copy", f"({report.UPPER_BOUND})"), ("bin2", "accuracy")] == 0.9
    assert pd.isna(table.loc[("unmarked-copy", "(ceiling)"), ("bin2", "accuracy")])
    pos = V.positions(df, [{"task": "unmarked-copy", "model": "jm-10", "freeze": "m"}], "bin2")
    assert pos["ceiling"].iloc[0] == "0.90 (bound)"


def test_paper_pair_verdicts_flip(tmp_path):
    theirs = report.paper_formal(metrics=["accuracy"])
    v = V.paper_pair_verdicts(theirs, [("count-3", "jm-10"), ("count-3", "lstm")], "m")
    assert v["verdict"].iloc[1] == V.EXCLUDED
    flipped = theirs.copy()
    sel = (flipped["task"] == "count-3") & (flipped["model"] == "jm-10") & (flipped["split"] == "bin2")
    flipped.loc[sel & (flipped["freeze"] == "m"), "value"] = 0.99
    flipped.loc[sel & (flipped["freeze"] == "none"), "value"] = 0.10
    assert V.paper_pair_verdicts(flipped, [("count-3", "jm-10")], "m")["verdict"].iloc[0] == V.HOLDS
    flipped.loc[sel & (flipped["freeze"] == "m"), "value"] = 0.05
    assert V.paper_pair_verdicts(flipped, [("count-3", "jm-10")], "m")["verdict"].iloc[0] == V.FAILS


# ---- Penn Treebank ---------------------------------------------------------------------------------
def test_cheap_references_known_answers():
    V_ = 10
    tokens = torch.arange(V_).repeat(400)  # every type equally often, each followed by the next
    corpus = Corpus([f"w{i}" for i in range(V_)], tokens, tokens[:1000], tokens[:1000])
    refs = V.ptb_references("smoke", corpus=corpus)
    assert refs["unigram (add-one)"] == pytest.approx(V_)  # uniform counts: perplexity = vocabulary size
    assert 1.0 < refs["bigram (add-0.01)"] < 1.01  # a deterministic successor


def _ptb(tmp_path, m_ppls, none_ppls):
    for model in ("rns-4-5", "lstm-256"):
        for mode, ppls in (("m", m_ppls), ("none", none_ppls)):
            for seed, p in enumerate(ppls):
                store.save_record(fake_ptb(ptb_config(model, mode, seed, "smoke"), p, p), tmp_path)
    return report.ptb_results("smoke", models=["rns-4-5", "lstm-256"], modes=["none", "m"], restarts=len(m_ppls),
                              root=str(tmp_path), compute=False)


@pytest.mark.parametrize("m, none, expected", [((250.0, 260.0, 255.0), (300.0, 320.0, 310.0), V.HOLDS),
                                               ((300.0, 320.0, 310.0), (250.0, 260.0, 255.0), V.FAILS)])
def test_ptb_verdicts_flip_and_need_to_beat_the_references(tmp_path, m, none, expected):
    df = _ptb(tmp_path, m, none)
    low_refs, high_refs = pd.Series({"unigram": 100.0}), pd.Series({"unigram": 1000.0})
    v = V.ptb_mode_verdicts(df, high_refs).set_index("model")["verdict"]
    assert v["rns-4-5"] == expected and v["lstm-256"] == V.EXCLUDED
    # every perplexity above the unigram's: cannot tell, whatever the runs say
    assert V.ptb_mode_verdicts(df, low_refs).set_index("model")["verdict"]["rns-4-5"] == V.UNSURE
    assert V.UNSURE in V.ptb_sentence(df, low_refs) and "no rank correlation" in V.ptb_sentence(df, low_refs)
    one = _ptb(tmp_path / "one", m[:1], none[:1])
    assert V.ptb_mode_verdicts(one, high_refs).set_index("model")["verdict"]["rns-4-5"] == V.UNSURE


def test_bin_labels():
    assert V.bin_label("quick", "bin2") == "51-100" and V.bin_label("paper", "bin0") == "40-100"
    assert V.bin_label([(1, 2)], "valid") == "valid"


def test_rank_correlation_known_answers_and_the_reference_rule():
    r, p = V.rank_correlation([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert r == pytest.approx(1.0) and p == pytest.approx(2 / 120)  # the identity and its reverse
    r, p = V.rank_correlation([1, 2, 3, 4, 5], [50, 40, 30, 20, 10])
    assert r == pytest.approx(-1.0) and p == pytest.approx(2 / 120)
    with pytest.raises(ValueError, match="length >= 3"):
        V.rank_correlation([1, 2], [1, 2])
    comparison = pd.DataFrame({"paper": [120.0, 130, 140, 150], "ours": [900.0, 950, 1000, 1100]})
    comparison["difference"] = comparison["ours"] - comparison["paper"]
    ours_table = pd.DataFrame({"none": [900.0, 1000], "m": [950.0, 1100]})
    above = V.ptb_rank_sentence(comparison, ours_table, pd.Series({"unigram": 800.0}))
    assert "No rank correlation is claimed" in above and V.UNSURE in above
    below = V.ptb_rank_sentence(comparison, ours_table, pd.Series({"unigram": 5000.0}))
    assert "rank correlation of the two orderings is 1.00" in below and "p = 0.083" in below


def test_pages_never_put_two_ranges_under_one_label():
    from marnn import pages

    ours = pd.DataFrame({"task": "count-3", "model": "lstm", "split": ["bin0", "bin2"], "metric": "accuracy",
                         "value": [0.9, 0.5]})
    theirs = ours.assign(value=[0.98, 0.75])
    t = pages.side_by_side(ours, theirs, "quick")
    assert list(t.columns) == ["40-100 → 10-25", "201-400 → 51-100"]
    assert t.iloc[0].tolist() == ["0.98 → 0.90", "0.75 → 0.50"]
    assert pages.fmt(float("nan")) == pages.DASH and pages.fmt_ppl(1234.5) == "1,234"
    flags = pages.readable(pd.DataFrame({"x": [0.123456, np.nan], "ok": [True, False]}))
    assert flags.to_dict("list") == {"x": ["0.12", pages.DASH], "ok": ["yes", "no"]}


def test_stable_cells_are_judged_over_all_their_restarts(tmp_path):
    from marnn.analysis import stability as st

    at_repeat = [(0.9, 0.5, 0.5), (0.9, 0.5, 0.505), (0.9, 0.5, 0.495)]  # repeat-previous scores 0.5 here
    df = _store(tmp_path, {("jm-10", "m"): HIGH, ("jm-10", "none"): at_repeat, ("lstm", "none"): LOW})
    table = pd.DataFrame({"task": "count-3", "model": ["jm-10"] * 6 + ["lstm"] * 3,
                          "freeze": ["m"] * 3 + ["none"] * 3 + ["none"] * 3, "seed": [0, 1, 2] * 3,
                          "verdict": ["stable", "unstable", "undecided", "unstable", "stable", "stable"]
                          + ["unstable"] * 3})
    cells = st.stable_cells(table, df, "bin2").set_index("freeze")
    assert list(cells.index) == ["none", "m"] and set(cells["model"]) == {"jm-10"}  # lstm: no stable run
    assert cells["stable"].to_dict() == {"none": "2 of 3", "m": "1 of 3"}
    assert cells.loc["m", "vs trivial"] == "above" and cells.loc["m", "at repeat-previous"] == "above"
    assert cells.loc["none", "vs trivial"] == "cannot tell"
    assert cells.loc["none", "at repeat-previous"] == V.AT_BASELINE  # within MARGIN by two one-sided tests
    table["verdict"] = "unstable"
    assert st.stable_cells(table, df, "bin2").empty


def test_an_excluded_row_joins_its_frames_single_difference_column():
    printed = V.verdict_frame([{"task": "a", "verdict": V.rounded(0.51, 0.50)}, {"task": "b", "verdict": V.excluded()}])
    assert [c for c in printed.columns if c.startswith("difference")] == ["difference [rounding range]"]
    assert printed["difference [rounding range]"].tolist() == ["+0.01 [+0.00, +0.02]", "excluded (identical runs)"]
    ours = V.verdict_frame([{"task": "a", "verdict": V.paired_restarts(np.ones((3, 1)), np.zeros((3, 1)))},
                            {"task": "b", "verdict": V.excluded()}])
    assert [c for c in ours.columns if c.startswith("difference")] == ["difference [95% interval]"]
