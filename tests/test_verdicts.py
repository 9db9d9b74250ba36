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


def test_bootstrap_flips_with_its_data_and_is_deterministic():
    rng = np.random.default_rng(1)
    b = 0.5 + 0.01 * rng.standard_normal((3, 12))
    a = b + 0.1
    better = V.paired_bootstrap(a, b)
    assert better.verdict == V.HOLDS and better.lo > 0 and better.difference == pytest.approx(0.1)
    assert V.paired_bootstrap(b, a).verdict == V.FAILS
    assert V.paired_bootstrap(a, b) == better  # fixed seed
    assert V.paired_bootstrap(a, b, higher=False).verdict == V.FAILS  # lower is better (perplexity)
    same = V.paired_bootstrap(b, b)
    assert (same.lo, same.hi, same.verdict) == (0.0, 0.0, V.FAILS)  # equal on every resample: not better
    noisy = b + rng.choice([-0.2, 0.2], size=b.shape)  # differences of either sign: undecided
    assert V.paired_bootstrap(noisy, b).verdict == V.UNSURE


def test_bootstrap_weights_give_the_bin_accuracy_and_one_restart_decides_nothing():
    a, b = np.array([[1.0, 0.0], [1.0, 0.0]]), np.zeros((2, 2))
    assert V.paired_bootstrap(a, b, weights=[3, 1]).difference == pytest.approx(0.75)
    one = V.paired_bootstrap(a[:1] + 1, b[:1])
    assert one.verdict == V.UNSURE and "one restart" in one.method and "no interval" in one.text()
    with pytest.raises(ValueError, match="one shape"):
        V.paired_bootstrap(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="weights"):
        V.paired_bootstrap(a, b, weights=[1, -1])


@pytest.mark.parametrize("a, b, expected", [(0.52, 0.50, V.HOLDS), (0.51, 0.50, V.UNSURE_PRINTED),
                                            (0.50, 0.50, V.UNSURE_PRINTED),
                                            (0.49, 0.50, V.FAILS)])
def test_paper_numbers_keep_their_rounding(a, b, expected):
    v = V.rounded(a, b)
    assert v.verdict == expected and v.hi - v.lo == pytest.approx(4 * V.ACC_HALF)


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
            store.save_record(fake_formal(formal_config(task, model, mode, seed, "smoke"), 0.5 + 0.01 * seed,
                                          acc), tmp_path)
    return report.formal_results("smoke", tasks=[task], models=sorted({m for m, _ in cells}),
                                 modes=sorted({f for _, f in cells}), restarts=2, root=str(tmp_path),
                                 compute=False)


HIGH, LOW = [(0.9, 0.8, 0.8), (0.9, 0.85, 0.75)], [(0.9, 0.5, 0.4), (0.9, 0.45, 0.35)]


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


@pytest.mark.parametrize("m, none, expected", [((250.0, 260.0), (300.0, 320.0), V.HOLDS),
                                               ((300.0, 320.0), (250.0, 260.0), V.FAILS)])
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
