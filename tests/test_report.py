"""marnn.report on a hand-made store: selection, best of restarts, spread, paper vs ours.

The records here are fabricated with the store's schema (no training); their
numbers exist only to check the arithmetic and never reach a page.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from marnn import grid, report, store, verdicts
from marnn.registry import UnknownNameError
from marnn.train import formal_config, ptb_config

BINS = {"bin0": (8, 16), "bin1": (17, 32), "bin2": (33, 48)}


def fake_formal(config: dict, valid_ce: float, acc: tuple[float, float, float], wall: float = 1.0,
                diverged: bool = False) -> dict:
    """A complete formal record whose accuracy on bin i is acc[i] (also at each of two lengths)."""
    bins, lengths = {}, []
    for (name, (lo, hi)), a in zip(BINS.items(), acc, strict=True):
        ce = 1.0 - a / 2
        bins[name] = {"lo": lo, "hi": hi, "strings": 4, "symbols": 40, "accuracy": a, "cross_entropy": ce,
                      "perplexity": math.exp(ce), "lower_bound": 0.3, "ce_diff": ce - 0.3,
                      "ceiling_accuracy": 0.9, "ceiling_exact": True, "chance_accuracy": 0.25,
                      "chance_cross_entropy": math.log(4), "most-frequent_accuracy": 0.4,
                      "most-frequent_cross_entropy": 1.2, "repeat-previous_accuracy": 0.5}
        for length in (lo + 1, hi - 1):
            lengths.append({"bin": name, "length": length, "strings": 2, "symbols": 20, "accuracy": a,
                            "cross_entropy": ce, "perplexity": math.exp(ce), "lower_bound": 0.3,
                            "ce_diff": ce - 0.3})
    return {"config": config, "seed": config["seed"], "lr": 1e-3, "final_lr": 1e-3, "clip": 5.0,
            "status": "diverged" if diverged else "early-stop",
            "diverged": {"epoch": 1, "step": 1, "where": "loss", "value": None} if diverged else None,
            "epochs": 3, "best_epoch": 2, "steps": 12,
            "valid": {"cross_entropy": valid_ce, "lower_bound": 0.3, "ce_diff": valid_ce - 0.3,
                      "perplexity": math.exp(valid_ce), "accuracy": 0.5},
            "bins": bins, "lengths": lengths, "curve": [], "num_parameters": 100, "trainable_parameters": 80,
            "group": {"replicas": 1, "wall_time_s": wall, "members": []}, "wall_time_s": wall,
            "env": {"device": "cpu", "cpu": "x86_64", "torch": "2.0", "python": "3.11", "hostname": "h",
                    "git_commit": "abcdef0123456789"},
            "created": "2025-01-02T03:04:05+00:00"}


def fake_ptb(config: dict, valid_ppl: float, test_ppl: float) -> dict:
    return {"config": config, "seed": config["seed"], "lr": 10.0, "final_lr": 10.0, "clip": 0.5,
            "status": "early-stop", "diverged": None, "epochs": 1, "best_epoch": 1, "steps": 5,
            "valid": {"cross_entropy": math.log(valid_ppl), "perplexity": valid_ppl, "tokens": 100},
            "test": {"cross_entropy": math.log(test_ppl), "perplexity": test_ppl, "tokens": 100},
            "curve": [], "num_parameters": 10, "trainable_parameters": 10,
            "group": {"replicas": 1, "wall_time_s": 2.0, "members": []}, "wall_time_s": 2.0,
            "env": {"device": "cpu", "cpu": "x86_64", "torch": "2.0", "python": "3.11", "hostname": "h",
                    "git_commit": "fedcba9876543210"},
            "created": "2025-01-03T00:00:00+00:00"}


@pytest.fixture()
def root(tmp_path):
    """count-3 x (lstm, jm-10) x (none, m) x 3 restarts; restart 1 is best (lowest validation CE)."""
    for model in ("lstm", "jm-10"):
        for mode in ("none", "m"):
            for seed, ce in zip(range(3), (0.9, 0.5, 0.7), strict=True):
                base = 0.6 if model == "lstm" else 0.8
                if mode == "m":
                    base -= 0.1
                acc = (base + 0.01 * seed, base - 0.2 + 0.01 * seed, base - 0.3 + 0.01 * seed)
                store.save_record(fake_formal(formal_config("count-3", model, mode, seed, "smoke"), ce, acc), tmp_path)
    return tmp_path


def test_results_frame_holds_exactly_the_configs_and_recomputes_best(root):
    df = report.formal_results("smoke", tasks=["count-3"], models=["lstm"], modes=["none"], restarts=2,
                               root=root, compute=False)
    assert set(df["model"]) == {"lstm"} and set(df["freeze"]) == {"none"} and set(df["seed"]) == {0, 1}
    assert df.loc[df["best"], "seed"].unique().tolist() == [1]
    one = report.formal_results("smoke", tasks=["count-3"], models=["lstm"], modes=["none"], restarts=1,
                                root=root, compute=False)
    assert one.loc[one["best"], "seed"].unique().tolist() == [0]  # best within the selection


def test_formal_results_trains_every_mode_of_missing_pairs(root, monkeypatch):
    calls = []

    def fake_run_grid(configs, r, **kwargs):
        todo = store.missing(configs, r)
        calls.append(todo)
        for c in todo:
            store.save_record(fake_formal(c, 0.6, (0.5, 0.4, 0.3)), r)
        return {"failed": [], "written": len(todo)}

    monkeypatch.setattr(grid, "run_grid", fake_run_grid)
    df = report.formal_results("smoke", tasks=["count-3"], models=["lstm"], modes=["c"], restarts=1, root=root)
    assert set(df["freeze"]) == {"c"}
    assert len(calls) == 1 and {c["freeze"] for c in calls[0]} == {"c", "cm"}  # none, m were stored already


def test_failures_raise_or_warn(root, monkeypatch):
    def failing(configs, r, **kwargs):
        return {"failed": [{"task": "count-3", "model": "lstm", "runs": 1, "error": "RuntimeError: boom"}]}

    monkeypatch.setattr(grid, "run_grid", failing)
    configs = report.formal_configs("smoke", ["count-3"], ["lstm"], ["c"], 1)
    with pytest.raises(RuntimeError, match="boom"):
        report.results_frame(configs, root)
    with pytest.warns(UserWarning, match="boom"):
        df = report.results_frame(configs, root, on_failure="warn")
    assert df.empty
    assert report.missing_cells(configs, root)["runs"].tolist() == [1]


def test_best_table_and_references(root):
    df = report.formal_results("smoke", tasks=["count-3"], root=root, compute=False, models=["lstm", "jm-10"],
                               modes=["none", "m"], restarts=3)
    table = report.best_table(df, "none")
    assert list(table.index.get_level_values("model")) == ["lstm", "jm-10", "(ceiling)", "(most-frequent)",
                                                          "(repeat-previous)", "(chance)"]
    assert table.loc[("count-3", "jm-10"), ("bin2", "accuracy")] == pytest.approx(0.51)  # seed 1
    assert table.loc[("count-3", "lstm"), ("valid", "perplexity")] == pytest.approx(math.exp(0.5))
    assert table.loc[("count-3", "(ceiling)"), ("bin0", "perplexity")] == pytest.approx(math.exp(0.3))
    assert table.loc[("count-3", "(repeat-previous)"), ("bin1", "accuracy")] == pytest.approx(0.5)
    assert list(table.columns[:2]) == [("valid", "perplexity"), ("bin0", "accuracy")]


def test_restart_spread(root):
    df = report.formal_results("smoke", tasks=["count-3"], models=["lstm"], modes=["none"], restarts=3,
                               root=root, compute=False)
    s = report.restart_spread(df, "bin2", "accuracy").iloc[0]
    assert (s["restarts"], s["diverged"]) == (3, 0)
    assert s["mean"] == pytest.approx(0.31) and s["min"] == pytest.approx(0.30) and s["max"] == pytest.approx(0.32)
    assert s["std"] == pytest.approx(0.01) and s["best"] == pytest.approx(0.31)


def test_diverged_runs_are_counted_but_not_averaged(tmp_path):
    for seed, div in ((0, False), (1, True)):
        c = formal_config("count-3", "lstm", "none", seed, "smoke")
        store.save_record(fake_formal(c, 0.5 + seed, (0.5, 0.4, 0.3 + 0.6 * seed), diverged=div), tmp_path)
    df = report.formal_results("smoke", ["count-3"], ["lstm"], ["none"], 2, root=tmp_path, compute=False)
    s = report.restart_spread(df, "bin2", "accuracy").iloc[0]
    assert (s["restarts"], s["diverged"], s["max"]) == (2, 1, pytest.approx(0.3))


def test_compare_difference_is_ours_minus_paper():
    ours = pd.DataFrame({"model": ["a", "b"], "split": ["x", "x"], "value": [1.0, 5.0]})
    theirs = pd.DataFrame({"model": ["a", "c"], "split": ["x", "x"], "value": [3.0, 4.0]})
    left = report.compare(ours, theirs)
    assert left.set_index("model")["difference"].to_dict()["a"] == -2.0
    assert set(left["model"]) == {"a", "c"} and left.set_index("model")["ours"].isna()["c"]
    assert set(report.compare(ours, theirs, how="outer")["model"]) == {"a", "b", "c"}


def test_retention_reproduces_the_papers_two_claims():
    theirs = report.paper_formal(metrics=["accuracy"])
    ratios = report.retention(theirs)
    worst = ratios[ratios["freeze"] == "none"].nsmallest(1, "ratio").iloc[0]
    assert (worst["task"], worst["model"]) == ("marked-reverse-and-copy", "jm-3.3.3")  # the "60% drop"
    assert worst["ratio"] == pytest.approx(0.31 / 0.80)
    means = ratios.groupby("freeze")["ratio"].mean()
    assert means["c"] == pytest.approx(0.91, abs=0.01) and means["m"] == pytest.approx(0.72, abs=0.01)
    table = report.retention_table(ratios)
    assert table.loc["all models", "c"] == pytest.approx(means["c"])


def test_best_per_task_and_overview():
    acc = pd.DataFrame({"task": ["count-3"] * 4, "model": ["lstm", "jm-10", "lstm", "jm-10"],
                        "freeze": ["none", "none", "m", "m"], "split": ["bin2"] * 4,
                        "metric": ["accuracy"] * 4, "value": [0.5, 0.7, 0.7, 0.6]})
    # validation chooses: lstm lower in mode none, jm-10 lower in mode m (the test bin is not looked at)
    valid = acc.assign(split="valid", metric="perplexity", value=[1.1, 1.3, 1.4, 1.2])
    best = report.best_per_task(pd.concat([acc, valid]), ["bin2"])
    assert best.set_index("freeze")["model"].to_dict() == {"none": "lstm", "m": "jm-10"}
    with pytest.raises(ValueError, match="chooses models on validation"):
        report.best_per_task(acc, ["bin2"])
    assert list(report.overview_table(best).columns) == [("none", "bin2"), ("m", "bin2")]


def test_top_models_ranks_by_validation_and_breaks_ties_in_paper_order(root):
    df = report.formal_results("smoke", ["count-3"], ["lstm", "jm-10"], ["none", "m"], 3, root=root,
                               compute=False)
    ce = df[df["best"] & (df["split"] == "valid") & (df["metric"] == "cross_entropy") & (df["freeze"] == "none")]
    lowest = ce.sort_values("value", kind="stable")["model"].iloc[0]
    assert report.top_models(df, 1) == {"count-3": [lowest]}
    assert sorted(report.top_models(df, 5, modes=("none", "m"))["count-3"]) == ["jm-10", "lstm"]
    assert report.top_models(df, 2, models=["lstm"]) == {"count-3": ["lstm"]}


def test_length_curves_have_one_row_per_length(root):
    df = report.formal_results("smoke", ["count-3"], ["lstm"], ["none"], 1, root=root, compute=False)
    curves = report.length_curves(df)
    assert curves["length"].tolist() == [9, 15, 18, 31, 34, 47]
    assert set(curves["bin"]) == set(BINS)


def test_mode_names_are_checked():
    assert report.check_mode("cm") == "cm"
    with pytest.raises(UnknownNameError, match="valid freeze modes: none, m, c, cm"):
        report.check_mode("memory")
    with pytest.raises(UnknownNameError, match="valid freeze modes: m, c, cm"):
        report.check_frozen_mode("none")


def test_ptb_tables_and_ablation(tmp_path):
    for group, ppl in (("controller", {"none": 120.0, "m": 121.0}), ("memory", {"none": 120.0, "m": 130.0})):
        for mode, p in ppl.items():
            c = ptb_config("lstm-256", mode, 0, "smoke", group)
            store.save_record(fake_ptb(c, p + 5, p), tmp_path)
    df = report.ptb_results("smoke", models=["lstm-256"], modes=["none", "m"], restarts=1,
                            embedding_groups=["controller", "memory"], root=tmp_path, compute=False)
    t = report.ptb_table(df, "test")
    assert t.loc["lstm-256", "m"] == pytest.approx(121.0) and t.loc["lstm-256", "none"] == pytest.approx(120.0)
    assert report.ptb_table(df, "valid").loc["lstm-256", "none"] == pytest.approx(125.0)
    abl = report.ablation_table(df)
    assert abl.loc[("lstm-256", "m"), "memory - controller"] == pytest.approx(9.0)
    assert list(abl.index) == [("lstm-256", "none"), ("lstm-256", "m")]
    paper = report.paper_ptb()
    assert set(paper["freeze"]) == {"none", "m"} and len(paper) == 10


def test_provenance(root, tmp_path):
    store.save_record(fake_ptb(ptb_config("lstm-256", "none", 0, "smoke"), 10.0, 11.0), root)
    runs = report.provenance_runs(root)
    summary = report.provenance_summary(runs)
    assert summary.loc[("smoke", "formal"), "runs"] == 12 and summary.loc[("smoke", "ptb"), "runs"] == 1
    assert summary.loc[("smoke", "formal"), "commits"] == "abcdef0123"
    assert summary.loc[("smoke", "formal"), "kernels"] == "numpy*"  # records older than the setting
    rec = fake_ptb(ptb_config("lstm-256", "m", 0, "smoke"), 10.0, 11.0)
    rec["env"].update(fused_backend="auto", code_modified=True)
    store.save_record(rec, root)
    summary = report.provenance_summary(report.provenance_runs(root))
    assert summary.loc[("smoke", "ptb"), "commits"] == "fedcba9876, fedcba9876+modified"
    assert summary.loc[("smoke", "ptb"), "kernels"] == "auto, numpy*"
    times = report.provenance_times(runs)
    assert times.loc[("smoke", "formal"), "wall time (h)"] == pytest.approx(12 / 3600)
    assert report.wall_time_by_model(runs).loc["lstm-256", "smoke"] == pytest.approx(2 / 3600)
    store.save_record(fake_ptb(ptb_config("vrns-3-3-5-published", "none", 0, "smoke"), 10.0, 11.0), root)
    hours = report.wall_time_by_model(report.provenance_runs(root))
    assert hours.index[-1] == "vrns-3-3-5-published"  # a model outside the paper's list still shows, last


def test_sentences_are_computed():
    assert report.count_phrase(0, 7, "languages") == "none of the 7 languages"
    assert report.count_phrase(7, 7, "languages") == "all 7 languages"
    comp = pd.DataFrame({"metric": ["accuracy"] * 2, "paper": [0.5, 0.6], "ours": [0.7, 0.5],
                         "difference": [0.2, -0.1]})
    assert "1 of 2 cells" in report.comparison_sentence(comp)
    assert "smoke" in report.scale_caveat("smoke") and "same lengths" in report.scale_caveat("paper")
    assert np.isfinite(report.paper_formal("m")["value"]).all()


def test_counted_nouns_agree_with_their_number():
    from marnn.pages import counted

    assert [counted(n, "language") for n in (0, 1, 7)] == ["0 languages", "1 language", "7 languages"]


def test_ptb_twins_read_a_pair_that_is_one_run_by_construction(tmp_path):
    def rec(model, mode, ppl, replicas, commit, cpu=None):
        r = fake_ptb(ptb_config(model, mode, 0, "smoke"), ppl + 5, ppl)
        r["group"]["replicas"] = replicas
        r["env"]["git_commit"] = commit
        if cpu:
            r["env"]["cpu_model"] = cpu
        store.save_record(r, tmp_path)

    none = verdicts.ptb_twins("smoke", tmp_path)
    assert none.empty and verdicts.twins_sentence(none) == ""
    rec("lstm-256", "none", 127.25, 8, "59f67f80d536aaaa", "CPU A")
    rec("lstm-256", "m", 121.38, 1, "80f1e45b91e4bbbb", "CPU A")
    rec("jm-hidden-247", "none", 126.88, 2, "80f1e45b91e4bbbb")  # a model with memory: never a twin
    rec("jm-hidden-247", "m", 126.83, 2, "80f1e45b91e4bbbb")
    t = verdicts.ptb_twins("smoke", tmp_path)
    assert len(t) == 1
    row = t.iloc[0]
    assert (row["model"], row["a"], row["b"]) == ("lstm-256", "none", "m")  # modes in their order, none first
    assert row["relative"] == pytest.approx(121.38 / 127.25 - 1)
    assert (row["replicas_a"], row["replicas_b"]) == (8, 1)
    assert (row["commit_a"], row["commit_b"]) == ("59f67f80d536", "80f1e45b91e4")
    text = verdicts.twins_sentence(t, {"jm-hidden-247": 126.83 / 126.88 - 1, "rns-4-5": 148.21 / 137.62 - 1})
    assert "127.25" in text and "121.38" in text and "4.6% apart" in text
    assert "(the group size, the code commit)" in text  # the CPU was the same: not named
    assert "smaller than this (4.6%): jm-hidden-247; larger: rns-4-5" in text

    rec("lstm-256", "m", 127.25, 1, "80f1e45b91e4bbbb", "CPU A")  # the same numbers after all
    assert "agree (127.25)" in verdicts.twins_sentence(verdicts.ptb_twins("smoke", tmp_path))


def test_records_name_the_cpu_model():
    from marnn.train import cpu_model, environment

    env = environment("cpu")
    assert env["cpu_model"] == cpu_model()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    assert env["cpu_model"] == (names[0] if names and names[0] else None)
