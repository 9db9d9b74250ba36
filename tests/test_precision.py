"""Behaviour of the numeric-precision experiments (marnn.analysis.precision)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from marnn.analysis import precision
from marnn.registry import UnknownNameError

TASK = "marked-reverse-and-copy"


@pytest.fixture(scope="module")
def recall():
    return precision.stack_recall([1, 2, 3, 8, 16], eps=(0.0, 1e-3, 1e-2), stacks=("superposition",), trials=2)


@pytest.fixture(scope="module")
def rns_recall():
    return precision.stack_recall([1, 2, 5, 8], eps=(0.0, 1e-3, 1e-2), stacks=("vrns", "rns"), trials=2)


def test_float64_recovery_at_eps_0_is_exact_for_every_depth(recall, rns_recall):
    both = pd.concat([recall, rns_recall])
    exact = both[(both["dtype"] == "float64") & (both["eps"] == 0.0)]
    assert set(exact["stack"]) == set(precision.STACKS)
    assert len(exact) == 5 + 2 * 4
    assert (exact["error"] <= 1e-12).all()
    assert exact["finite"].all()


def test_at_eps_0_low_precision_only_rounds_the_stored_values(recall):
    """Hard actions (1, 0, 0) move cells without arithmetic error: what is left is the
    rounding of the pushed vectors themselves, at most one unit roundoff of values < 1."""
    hard = recall[recall["eps"] == 0.0].set_index(["dtype", "depth"])["error"]
    for name in precision.LOW:
        assert (hard[name] <= precision.unit_roundoff(name)).all(), name
        assert (hard[name] > 0).all(), name


def test_float16_and_bfloat16_round_more_than_float32(recall, rns_recall):
    for frame in (recall, rns_recall):
        soft = frame[(frame["eps"] == 1e-2) & (frame["depth"] == frame["depth"].max())]
        r = soft.groupby(["stack", "dtype"])["rounding"].first().unstack()
        assert (r["float16"] > r["float32"]).all()
        assert (r["bfloat16"] > r["float32"]).all()
        assert (r["float64"] == 0).all()


def test_one_soft_push_matches_the_formula():
    """d = 1: superposition reads (1 - eps) v; the one-state VRNS drops the impossible pop
    and keeps the bottom (vector 0) with weight 2 (eps / 4) of 1 - eps / 4."""
    eps = 0.1
    frame = precision.stack_recall([1], eps=(eps,), dtypes=("float64",), stacks=("superposition", "vrns"),
                                   trials=1, m=10, seed=3)
    v = torch.rand(1, 1, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    err = frame.set_index("stack")["error"]
    assert err["superposition"] == pytest.approx(eps * float(v.max()), rel=1e-12)
    assert err["vrns"] == pytest.approx((eps / 2) / (1 - eps / 4) * float(v.max()), rel=1e-12)


def test_soft_actions_lose_deep_content_in_float64(recall):
    f64 = recall[(recall["dtype"] == "float64") & (recall["eps"] == 1e-2)].sort_values("depth")
    assert f64["error"].is_monotonic_increasing
    assert f64["error"].iloc[-1] > 10 * f64["error"].iloc[0]


def test_bad_names_raise_with_the_valid_choices():
    with pytest.raises(UnknownNameError, match="valid dtypes: float64, float32, bfloat16, float16"):
        precision.get_dtype("float8")
    with pytest.raises(UnknownNameError, match="valid dtypes"):
        precision.stack_recall([1], dtypes=("half",))
    with pytest.raises(UnknownNameError, match="valid stacks: superposition, vrns, rns"):
        precision.stack_recall([1], stacks=("tape",))
    with pytest.raises(UnknownNameError, match="valid scales"):
        precision.settings("huge")
    with pytest.raises(ValueError, match="eps"):
        precision.stack_recall([1], eps=(1.0,))


def test_recoverable_depth_stops_at_the_first_failure():
    frame = pd.DataFrame({"stack": "s", "eps": 0.0, "dtype": "float32", "depth": [1, 2, 5, 10],
                          "error": [0.0, 0.005, 0.02, 0.001]})
    rec = precision.recoverable_depth(frame, tol=0.01)
    assert rec["depth"].tolist() == [2] and not rec["all_tested"].iloc[0]
    rec = precision.recoverable_depth(frame.assign(error=0.0), tol=0.01)
    assert rec["depth"].tolist() == [10] and rec["all_tested"].iloc[0]
    assert precision.recoverable_depth(frame.assign(error=1.0), tol=0.01)["depth"].tolist() == [0]
    table = precision.depth_table(frame, tol=0.01)
    assert table.loc[("s", 0.0), "float32"] == "2"


def test_rounded_action_probabilities_do_not_sum_to_one():
    assert precision.action_mass(1e-2, "float64") == pytest.approx(1.0, abs=1e-15)
    assert precision.action_mass(1e-3, "bfloat16") > 1.0  # 1 - 1e-3 rounds to 1 in bfloat16
    assert precision.action_mass(1e-2, "bfloat16") < 1.0


def test_member_strings_are_members_and_seeded():
    from marnn import tasks

    task = tasks.get(TASK)
    x = precision.member_strings(TASK, 30, 3, seed=1)
    assert x.shape == (3, max(task.valid_lengths(1, 30)))
    assert torch.equal(x, precision.member_strings(TASK, 30, 3, seed=1))
    assert all(task.contains([task.alphabet[i] for i in row]) for row in x.tolist())


def test_drift_is_zero_against_itself_and_larger_in_float16():
    frame = precision.drift(["jm-10"], TASK, 20, dtypes=("float64", "float32", "float16"), batch=2)
    by = frame.groupby("dtype")
    assert by["logit_diff"].max()["float64"] == 0.0
    assert by["agree"].min()["float64"] == 1.0
    assert by["logit_diff"].max()["float16"] > 10 * by["logit_diff"].max()["float32"]
    assert np.isnan(frame[frame["position"] == 0]["reading_diff"]).all()
    summary = precision.drift_summary(frame, [5, 1000])
    assert summary.groupby("dtype")["length"].max().eq(frame["position"].max()).all()


def test_path_support_reports_every_dtype_of_every_path():
    table = precision.path_support(["lstm", "rns-3-3"], TASK, length=8, batch=1)
    assert set(table["model"]) == {"lstm"}  # rns-3-3 has no fused kernel
    assert len(table) == 2 * len(precision.DTYPES)
    assert (table["runs"] | (table["error"] != "")).all()
    assert table[table["path"] == "generic"]["runs"].all()
    ref = table[(table["path"] == "generic") & (table["dtype"] == "float64")]["logit_diff"]
    assert ref.tolist() == [0.0]


def test_trained_precision_matches_the_training_record(tmp_path):
    frame = precision.trained_precision(TASK, ["lstm"], "smoke", root=tmp_path, threads=1)
    assert set(frame["dtype"]) == set(precision.DTYPES)
    f32 = frame[frame["dtype"] == "float32"]
    assert np.allclose(f32["accuracy"], f32["recorded"], atol=1e-12)
    f64 = frame[frame["dtype"] == "float64"]
    assert (f64["agree"] == 1.0).all() and (f64["logit_diff"] == 0.0).all()
    assert frame.groupby(["freeze", "dtype"])["best"].any().all()
    summary = precision.trained_summary(frame)
    assert (summary[summary["dtype"] == "float64"]["max_change"] == 0.0).all()


def test_facts_cover_what_the_page_quotes(recall, rns_recall):
    both = pd.concat([recall, rns_recall], ignore_index=True)
    facts = precision.recall_facts(both)
    assert facts["exact64"] == 0.0 and facts["all_finite"]
    assert facts["sup_top"] == 16 and facts["rns_top"] == 8
    assert facts["p_bf16_small"] == 1.0  # 1 - 1e-3 rounds to 1 in bfloat16
    assert facts["mass_bf16_small"] > 1 > facts["mass_bf16_mid"]
    assert all(np.isfinite(v) for v in facts.values() if isinstance(v, float))
    table = precision.facts_table({"a": 0.123456789, "b": 3, "c": "bin2"})
    assert table["value"].tolist() == ["0.12346", "3", "bin2"]


@pytest.mark.parametrize("scale", list(precision.SETTINGS))
def test_every_scale_can_be_summarised(scale):
    s = precision.settings(scale)
    assert max(s.rns_depths) in s.depths  # recall_facts compares the stacks at that depth
    assert sum(e > 0 for e in s.eps) >= 2 and 0.0 in s.eps
    assert s.rns_drift_length <= s.drift_length


# ---- "the format does not change what the models get right", over restarts -------------------------------
def fake_trained(changes: dict[str, list[float]], models=("lstm", "jm-10"), freezes=("none", "m"),
                 growth: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """A :func:`precision.trained_precision` frame: float64 accuracy 0.6 everywhere; in each low dtype, restart
    ``s`` moves the accuracy of its last bin by ``changes[dtype][s]`` (the other cells by a tenth of it), and its
    logit difference grows ``growth[dtype][s]``-fold from the first bin to the last (logits of constant size)."""
    restarts = len(next(iter(changes.values())))
    rows = []
    for model in models:
        for freeze in freezes:
            for s in range(restarts):
                for dtype in precision.DTYPES:
                    for b, length in (("bin0", 10), ("bin1", 30)):
                        d = 0.0 if dtype == "float64" else changes[dtype][s] * (1.0 if b == "bin1" else 0.1)
                        rows.append({"model": model, "freeze": freeze, "seed": s, "dtype": dtype, "bin": b,
                                     "length": length, "accuracy": 0.6 + d, "cross_entropy": 1.0, "agree": 1.0,
                                     "logit_diff": 0.0 if dtype == "float64" else 1e-3 * (
                                         growth[dtype][s] if growth and b == "bin1" else 1.0),
                                     "logit_scale": 1.0, "symbols": 100, "best": s == 0,
                                     "recorded": np.nan})
    return pd.DataFrame(rows)


def test_format_claims_hold_fail_and_cannot_tell():
    small = {"float32": [0.0] * 5, "bfloat16": [0.004, 0.006, 0.005, 0.003, 0.005], "float16": [0.001] * 5}
    c = precision.format_claims(fake_trained(small))
    assert (c["verdict"] == "holds").all() and c.loc["bfloat16", "cells"] == 8
    assert "does not explain" in precision.format_sentence(c, 0.006)
    big = {"float32": [0.0] * 5, "bfloat16": [0.10, 0.12, -0.11, 0.09, 0.1], "float16": [0.001] * 5}
    c = precision.format_claims(fake_trained(big))
    assert c.loc["bfloat16", "verdict"] == "does not hold" and c.loc["all", "verdict"] == "does not hold"
    assert "In bfloat16 the largest" in precision.format_sentence(c, 0.12)
    one = precision.format_claims(fake_trained({k: v[:1] for k, v in small.items()}))
    assert (one["verdict"] == "cannot tell at this scale").all()
    assert "bfloat16: one restart gives no interval" in precision.format_sentence(one, 0.004)


def test_the_old_cut_called_generalisation_unexplained_where_the_restarts_cannot_tell():
    """The page said 'precision does not explain their failure' when no change reached 0.05; three restarts
    whose largest changes are 0.01, 0.03 and 0.02 cannot put the change below the 0.02 margin."""
    changes = {"float32": [0.0] * 3, "bfloat16": [0.01, 0.03, 0.02], "float16": [0.0] * 3}
    frame = fake_trained(changes)
    worst = precision.trained_facts(frame)["acc_change_bf16"]
    assert worst < 0.05  # the old rule's "does not explain"
    c = precision.format_claims(frame)
    assert c.loc["bfloat16", "verdict"] == "cannot tell at this scale"
    assert c.loc["all", "verdict"] == "cannot tell at this scale"
    assert "cannot tell" in precision.format_sentence(c, worst)


def test_growth_claims_hold_fail_and_cannot_tell():
    none = {k: [0.0] * 5 for k in precision.LOW}
    fast = {k: [10.0, 12.0, 9.0, 11.0, 10.0] for k in precision.LOW}
    c = precision.growth_claims(fake_trained(none, growth=fast))
    assert (c["verdict"] == "holds").all() and 9 < c.loc["float16", "mean"] < 11
    assert "amplify small perturbations" in precision.growth_sentence(c)
    flat = {**fast, "float32": [1.0, 1.1, 0.9, 1.0, 1.05]}
    c = precision.growth_claims(fake_trained(none, growth=flat))
    assert c.loc["float32", "verdict"] == "does not hold" and c.loc["all", "verdict"] == "does not hold"
    assert precision.growth_sentence(c).startswith("In float32 the trained")
    one = precision.growth_claims(fake_trained({k: v[:1] for k, v in none.items()},
                                               growth={k: v[:1] for k, v in fast.items()}))
    assert (one["verdict"] == "cannot tell at this scale").all()


def test_the_old_growth_cut_amplified_where_the_restarts_cannot_tell():
    """The page said 'amplify' when the pooled growth passed 3 in every format; restarts growing 8, 2.5 and 6
    times cannot put the growth above the margin of 2."""
    none = {k: [0.0] * 3 for k in precision.LOW}
    frame = fake_trained(none, growth={k: [8.0, 2.5, 6.0] for k in precision.LOW})
    facts = precision.trained_facts(frame)
    assert min(facts[f"typical_growth_{k}"] for k in ("f32", "bf16", "f16")) > 3  # the old rule's "amplify"
    c = precision.growth_claims(frame)
    assert c.loc["all", "verdict"] == "cannot tell at this scale"
    assert "cannot tell" in precision.growth_sentence(c)


def test_spread_lengths_keeps_the_ends_and_every_batch_of_a_chosen_length():
    from marnn.tasks.data import Batch

    def batch(n):
        return Batch(n, torch.zeros(2, n, dtype=torch.long), torch.zeros(2, n + 1, dtype=torch.long))

    batches = [batch(n) for n in range(201, 401)] + [batch(400)]  # length 400 twice: two batches
    kept = precision.spread_lengths(batches, 8)
    lengths = sorted({b.length for b in kept})
    assert len(lengths) == 8 and lengths[0] == 201 and lengths[-1] == 400
    assert sum(b.length == 400 for b in kept) == 2
    assert all(b2 - b1 >= 28 for b1, b2 in zip(lengths, lengths[1:], strict=False))  # evenly spread
    assert precision.spread_lengths(batches, None) == batches
    assert precision.spread_lengths(batches, 500) == batches
    assert [b.length for b in precision.spread_lengths(batches, 1)] == [400, 400]
    with pytest.raises(ValueError, match="at least 1"):
        precision.spread_lengths(batches, 0)
