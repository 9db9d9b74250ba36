"""Memory indicators (marnn.analysis.memory) on hand-built "models" with known answers.

A state function maps inputs (B, T) to point sets (R, B, T, D). Two hand-built
ones bracket every real model: a window of the last L symbols forgets after
exactly L steps, the whole history never forgets.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from marnn import models, tasks
from marnn.analysis import memory

MRC = "marked-reverse-and-copy"
V = 3  # |alphabet| of the marked languages


def window(L: int):
    """p_i = one-hot of x_{i-L+1} .. x_i (zeros before the start): remembers exactly L symbols."""
    def fn(x):
        B, T = x.shape
        onehot = np.eye(V)[x]  # (B, T, V)
        out = np.zeros((B, T, L * V))
        for lag in range(min(L, T)):
            out[:, lag:, lag * V:(lag + 1) * V] = onehot[:, :T - lag]
        return out[None]
    return fn


def history(width: int = 128):
    """p_i = one-hot of every symbol read so far, each in its own slot: forgets nothing."""
    def fn(x):
        B, T = x.shape
        out = np.zeros((B, T, width * V))
        for i in range(T):
            out[:, i:, i * V:(i + 1) * V] = np.eye(V)[x[:, i]][:, None]
        return out[None]
    return fn


def constant(x):
    return np.ones((1, *x.shape, 2))


# ---- distances -----------------------------------------------------------------
def test_identical_strings_have_zero_distance():
    x, _ = memory.sample_words(MRC, 20, 6, np.random.default_rng(0))
    P = window(3)(x)
    assert np.all(memory.step_distance(P, P) == 0)
    d = memory.divergence(P, P.copy(), positions=np.zeros(6, dtype=int))
    assert len(d) == 6 * 20 and (d["distance"] == 0).all()
    same = np.repeat(P[:, :1], 4, axis=1)  # four copies of one string
    assert memory.typical_distance(same).tolist() == [0.0]


def test_typical_distance_counts_differing_symbols():
    x = np.array([[0, 0], [1, 1]])
    P = window(1)(x)  # one-hot of the current symbol: every step differs by sqrt(2)
    assert memory.typical_distance(P) == pytest.approx([math.sqrt(2)])


# ---- memory span ----------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 3, 5])
def test_window_state_has_span_L(L):
    curve = memory.divergence_curve(window(L), MRC, [32, 50], strings=40)
    spans = memory.memory_span(curve)
    assert spans["span"].tolist() == [L, L] and not spans["censored"].any()
    # the divergence is exactly zero from lag L on
    assert (curve.loc[curve["lag"] >= L, "distance"] == 0).all()
    assert (curve.loc[curve["lag"] < L, "distance"] > 0).all()


def test_perfect_memory_has_infinite_span():
    spans = memory.memory_span(memory.divergence_curve(history(), MRC, [32], strings=40))
    assert spans["span"].tolist() == [math.inf] and spans["censored"].all()
    assert spans["observed"].iloc[0] > 10


def test_span_threshold_and_min_count():
    curve = pd.DataFrame({"lag": [0, 1, 2, 3], "count": [50, 50, 50, 5], "distance": [1, 0.5, 0.05, 0.9],
                          "reference": 1.0, "ratio": [1, 0.5, 0.05, 0.9]})
    out = memory.memory_span(curve, threshold=0.1)  # lag 3 has too few pairs to count
    assert out["span"].tolist() == [2.0] and out["observed"].tolist() == [3]
    assert memory.memory_span(curve, threshold=0.01)["span"].tolist() == [math.inf]
    assert memory.memory_span(curve, threshold=2.0)["span"].tolist() == [0.0]


def test_flipped_members_differ_only_at_the_flip_before_it_reappears():
    model = models.build("jm-10", task=MRC, replicas=2, seeds=[0, 1])
    bits = np.array([[0, 1, 1, 0, 1]])
    flipped = bits.copy()
    flipped[0, 2] ^= 1
    x, y = memory.fill_words(MRC, 17, bits), memory.fill_words(MRC, 17, flipped)
    assert tasks.get(MRC).contains([tasks.get(MRC).alphabet[i] for i in y[0]])
    assert np.nonzero(x[0] != y[0])[0].tolist() == [2, 8, 14]
    d = memory.step_distance(memory.trajectories(model, x), memory.trajectories(model, y))  # (R, 1, T)
    assert np.all(d[:, 0, :2] == 0) and np.all(d[:, 0, 2:8] > 0)


# ---- decoding ------------------------------------------------------------------
def test_copy_points_of_the_marked_languages():
    mc = memory.copy_points("marked-copy", 9)  # w # w, |w| = 4
    assert mc["lag"].tolist() == [4] * 4 and mc["target"].tolist() == [5, 6, 7, 8]
    mrc = memory.copy_points(MRC, 11)  # w # w^R # w, |w| = 3
    first = mrc[mrc["occurrence"] == 1].sort_values("bit")
    assert first["lag"].tolist() == [5, 3, 1]  # bit j is repeated 2|w| - 2j - 1 symbols later
    second = mrc[mrc["occurrence"] == 2].sort_values("bit")
    assert second["lag"].tolist() == [1, 3, 5] and second["source"].tolist() == [6, 5, 4]


def test_lag_bins():
    assert memory.lag_bins(0) == [(0, 0)]
    assert memory.lag_bins(9) == [(0, 0), (1, 1), (2, 3), (4, 7), (8, 15)]


def test_window_state_is_decodable_exactly_within_its_window():
    dec = memory.copy_decoding(window(4), MRC, [32, 50, 80], strings=64).set_index("lag_lo")
    assert dec.loc[[1, 2], "probe_accuracy"].tolist() == [1.0, 1.0]  # lags 1-3 < 4
    beyond = dec.loc[dec.index >= 8, "probe_accuracy"]
    assert len(beyond) >= 2 and beyond.between(0.4, 0.6).all()
    assert dec["model_accuracy"].isna().all()
    # a window longer than every lag keeps everything; in w#w each length has one lag (|w|), so every bin
    # asks for one fixed slot of the window and the linear probe reads it perfectly
    full = memory.copy_decoding(window(40), "marked-copy", [21, 33], strings=64)
    assert full[["lag_lo", "lag_hi"]].values.tolist() == [[8, 15], [16, 31]]
    assert (full["probe_accuracy"] == 1.0).all()


def test_probe_accuracy_known_cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    X = np.c_[y + 0.1 * rng.standard_normal(200), 0.1 * rng.standard_normal((200, 3))]
    for method in memory.PROBES:
        assert memory.probe_accuracy(X[:100], y[:100], X[100:], y[100:], method) == 1.0
    # one class only in training: the majority guess
    assert memory.probe_accuracy(X[:5], np.zeros(5), X[5:9], np.array([0, 0, 1, 1])) == 0.5
    noise = rng.standard_normal((400, 5))
    assert 0.4 < memory.probe_accuracy(noise[:200], y, noise[200:], y) < 0.6


def test_model_accuracy_comes_from_the_logits():
    # logits that always predict the copied symbol (and nothing else) are right at every copy point
    def oracle(x):
        B, T = x.shape
        logits = np.zeros((1, B, T + 1, V + 1))
        logits[0, np.arange(B)[:, None], np.arange(T)[None], x] = 1.0
        return logits
    dec = memory.copy_decoding(window(2), MRC, [20, 32], strings=16, logits_fn=oracle)
    assert (dec["model_accuracy"] == 1.0).all()


# ---- separation ---------------------------------------------------------------
def test_separation_known_cases():
    lengths = [32, 50]

    def prefix_only(x):  # the whole first half of w and nothing else
        k = tasks.get(MRC).k_of(x.shape[1])
        code = np.eye(V)[x[:, :math.ceil(k / 2)]].reshape(len(x), -1)
        return np.repeat(code[None, :, None, :], x.shape[1], axis=2)

    only = memory.separation(prefix_only, MRC, lengths)
    assert (only["within"] == 0).all() and np.isinf(only["ratio"]).all()
    none = memory.separation(window(1), MRC, lengths, per_class=16)
    assert none["ratio"].between(0.85, 1.15).all()
    full = memory.separation(history(), MRC, lengths)
    assert (full["ratio"] > 1.1).all()
    assert memory.separation(constant, MRC, [32])["ratio"].isna().all()
    start, stop = memory.prefix_window(MRC, 32, 5)  # |w| = 10: w # w^R # w
    assert (start, stop) == (5, 16)  # after w_0..w_4, before w_4 comes back at 11 + 5


# ---- models --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lstm", "jm-3.3.3", "jm-hidden"])
def test_forward_states_match_the_whole_string_pass(name):
    model = models.build(name, task=MRC, replicas=2, seeds=[3, 4])
    x, _ = memory.sample_words(MRC, 14, 5, np.random.default_rng(1))
    found = memory.forward_states(model, x)
    with torch.no_grad():
        whole = model(torch.as_tensor(x)).logits.double().numpy()
    np.testing.assert_allclose(found["logits"], whole, atol=1e-5)
    assert found["hidden"].shape == found["cell"].shape == (2, 5, 14, 20)
    state = memory.trajectories(model, x)
    if name == "lstm":
        assert "reading" not in found and state.shape[-1] == 40
        with pytest.raises(ValueError, match="no stack"):
            memory.trajectories(model, x, "reading")
    else:
        assert state.shape[-1] == 40 + found["reading"].shape[-1]


def test_analyse_group_labels_every_replica():
    model = models.build("jm-10", task="marked-copy", replicas=2, seeds=[0, 1])
    configs = [{"task": "marked-copy", "model": "jm-10", "freeze": "none", "seed": s} for s in (0, 1)]
    records = [{"valid": {"cross_entropy": ce}, "diverged": None, "bins": {"bin0": {"accuracy": 0.5}}}
               for ce in (0.9, 0.7)]
    out = memory.analyse_group(SimpleNamespace(model=model, configs=configs, records=records), [9, 15],
                               strings=12, probe_strings=16, per_class=3)
    assert set(out) == {"curve", "span", "decoding", "separation"}
    for frame in out.values():
        assert {"task", "model", "freeze", "seed", "best"} <= set(frame.columns)
        assert frame.loc[frame["best"], "seed"].unique().tolist() == [1]
    assert set(out["decoding"]["what"]) == {"state", "reading"}


def test_probe_lengths_start_in_training_and_stay_valid():
    task = tasks.get(MRC)
    lengths = memory.probe_lengths(task, (10, 20), 100)
    assert lengths[0] == 11 and lengths[1] == 20 and lengths[-1] <= 100
    assert all(task.is_valid_length(n) for n in lengths) and lengths == sorted(set(lengths))


# ---- bad arguments ---------------------------------------------------------------
def test_bad_arguments_raise_clear_errors():
    model = models.build("lstm", task=MRC, replicas=1)
    x, _ = memory.sample_words(MRC, 8, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="valid: hidden, cell, reading, state"):
        memory.trajectories(model, x, "memory")
    with pytest.raises(ValueError, match="no random word"):
        memory.copy_points("count-3", 9)
    with pytest.raises(ValueError, match="not valid"):
        memory.copy_points(MRC, 10)
    with pytest.raises(ValueError, match="strings must be >= 2"):
        memory.divergence_curve(window(1), MRC, [8], strings=1)
    with pytest.raises(ValueError, match=r"must return \(R, B, T, D\)"):
        memory.divergence_curve(lambda x: x, MRC, [8], strings=4)
    with pytest.raises(ValueError, match="missing columns"):
        memory.memory_span(pd.DataFrame({"lag": [0]}))
    with pytest.raises(ValueError, match="threshold must be > 0"):
        memory.memory_span(pd.DataFrame(columns=["lag", "count", "distance", "reference", "ratio"]), threshold=0)
    with pytest.raises(ValueError, match="unknown probe"):
        memory.probe_accuracy(np.zeros((2, 1)), [0, 1], np.zeros((2, 1)), [0, 1], method="svm")
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        memory.probe_accuracy(np.zeros((2, 1)), [0, 2], np.zeros((2, 1)), [0, 1])
    with pytest.raises(ValueError, match="prefix_bits"):
        memory.prefix_window(MRC, 11, 3)
    with pytest.raises(ValueError, match="x must be"):
        memory.forward_states(model, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="classes >= 2"):
        memory.separation(window(1), MRC, [32], classes=1)


# ---- the page's sentences, decided over restarts ---------------------------------------------------
def fake_summary(restarts: int, *, probe_beyond=0.5, trained_gain=0.3, reading_gain=0.0, noise=0.005,
                 censored=True, seed=0, effect_noise=None) -> pd.DataFrame:
    """A :func:`memory.summary` frame (every restart) with known effects: ``trained_gain`` = probe accuracy of the
    trained modes minus that of mode cm, ``reading_gain`` = reading accuracy of mode m minus mode none; each
    restart gets one shared shift of size ``noise`` (restarts carry the noise), each run a tenth of it.
    ``effect_noise``: per restart, added to the trained modes only (the effect itself varies by restart)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(restarts):
        shift = rng.normal(0, noise)
        effect = 0.0 if effect_noise is None else effect_noise[s]
        for task in ("marked-copy", MRC):
            for model in ("lstm", "jm-10"):
                for freeze in ("none", "m", "c", "cm"):
                    trained = freeze in ("none", "m")

                    def v(base, trained=trained, shift=shift, effect=effect):
                        own = effect if trained else 0.0
                        return float(np.clip(base + shift + own + rng.normal(0, noise / 10), 0, 1))
                    reading = np.nan if model == "lstm" else v(0.7 + (reading_gain if freeze == "m" else 0.0))
                    rows.append({"task": task, "model": model, "freeze": freeze, "seed": s, "valid_ce": 0.1,
                                 "best": s == 0, "accuracy_first": 0.9, "accuracy_last": 0.6,
                                 "span_train": 5.0, "span_longest": np.inf if (trained and censored) else 3.0,
                                 "probe_train": v(0.6 + (trained_gain if trained else 0.0)),
                                 "probe_beyond": v(probe_beyond if trained else 0.5), "model_beyond": v(0.55),
                                 "reading_train": reading, "reading_beyond": reading,
                                 "separation_train": v(0.5) + 1, "separation_longest": v(0.5) + 1})
    return pd.DataFrame(rows)


def test_claims_hold_with_enough_restarts():
    c = memory.claims(fake_summary(5))
    assert c.loc["span_outlasts", "verdict"] == "holds"
    assert c.loc["probe_beyond_chance", "verdict"] == "holds" == c.loc["moves_after_unreadable", "verdict"]
    assert c.loc["probe_train_vs_random", "verdict"] == memory.HIGHER
    assert c.loc["reading_train_m_vs_none", "verdict"] == memory.SAME
    assert c.loc["probe_train_vs_random", "cells"] == 4 and c.loc["reading_train_m_vs_none", "cells"] == 2
    text = memory.findings(fake_summary(5))
    assert "So a symbol can keep moving" in text and "higher than" in text and "cannot tell" not in text


def test_claims_fail_when_the_effects_are_the_other_way():
    c = memory.claims(fake_summary(5, probe_beyond=0.8, trained_gain=-0.3, reading_gain=-0.2, censored=False))
    assert c.loc["span_outlasts", "verdict"] == "does not hold"
    assert c.loc["probe_beyond_chance", "verdict"] == "does not hold"
    assert c.loc["probe_train_vs_random", "verdict"] == memory.LOWER
    assert c.loc["reading_train_m_vs_none", "verdict"] == memory.LOWER
    assert "stopped being readable" not in memory.findings(fake_summary(5, probe_beyond=0.8, censored=False))


def test_claims_cannot_tell_with_one_restart():
    c = memory.claims(fake_summary(1))
    assert (c["verdict"] == "cannot tell at this scale").all()
    assert c.drop(index="moves_after_unreadable")["note"].str.contains("one restart").all()
    text = memory.findings(fake_summary(1))
    assert "cannot tell" in text and "With 1 restart" in text


def test_a_difference_the_old_tolerance_decided_is_cannot_tell_over_restarts():
    """The page compared best-restart means with a fixed tolerance of 0.01: a gain of 0.03 was 'higher than',
    and a probe at 0.55 < 0.6 'stopped being readable'. When the effect scatters by 0.06 over restarts, the rule
    cannot tell either."""
    table = fake_summary(3, probe_beyond=0.5, trained_gain=0.03, effect_noise=[0.0, 0.06, -0.06])
    best = table[table["best"]]
    old_gain = best[best["freeze"].isin(["none", "m"])]["probe_train"].mean() - \
        best[best["freeze"] == "cm"]["probe_train"].mean()
    assert abs(old_gain) >= 0.01 and best[best["freeze"].isin(["none", "m"])]["probe_beyond"].mean() < 0.6
    c = memory.claims(table)
    assert c.loc["probe_train_vs_random", "verdict"] == "cannot tell at this scale"
    assert c.loc["probe_beyond_chance", "verdict"] == "cannot tell at this scale"
    text = memory.findings(table)
    assert "So a symbol" not in text and "the restarts cannot tell" in text


def test_comparison_words():
    assert memory.comparison(np.array([0.01, 0.0, -0.01, 0.005]))["verdict"] == memory.SAME
    assert memory.comparison(np.array([0.2, 0.21, 0.19]))["verdict"] == memory.HIGHER
    assert memory.comparison(np.array([-0.2, -0.21, -0.19]))["verdict"] == memory.LOWER
    out = memory.comparison(np.array([0.2, -0.1, 0.05]))
    assert out["verdict"] == "cannot tell at this scale" and "3 paired restarts" in out["note"]
    assert memory.comparison(np.array([]))["verdict"] == "no cell applies"


def test_distinct_codes_past_a_machine_integer():
    from marnn.analysis.memory import distinct_codes

    rng = np.random.default_rng(0)
    short = distinct_codes(np.random.default_rng(1), 3, 8)  # every 3-bit code once
    assert sorted(short) == list(range(8))
    long = distinct_codes(rng, 200, 4)  # 2 ** 200 does not fit a C long: drawn bit by bit
    assert len(set(long)) == 4 and all(0 <= x < 2 ** 200 for x in long)
    assert max(long).bit_length() > 150  # random bits, not small numbers
    assert distinct_codes(np.random.default_rng(5), 200, 4) == distinct_codes(np.random.default_rng(5), 200, 4)
    with pytest.raises(ValueError, match="only 4"):
        distinct_codes(rng, 2, 5)
