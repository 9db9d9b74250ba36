"""Every verdict the book computes at one scale, as JSON lines ``{"key": ..., "verdict": ..., "detail": ...}``.

Run it with the package of one tree on the path to list that tree's verdicts, and diff two runs::

    PYTHONPATH=/path/to/tree python scripts/verdicts_dump.py quick > verdicts.jsonl
    PYTHONPATH=/path/to/tree python scripts/verdicts_dump.py quick memory precision  # those pages only

It reads the committed records and weights only (trains nothing). Functions a tree lacks are skipped.
Pages: main (the comparison pages, the audit, the languages and stability pages), memory, precision.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import pandas as pd

PAGES = ("main", "memory", "precision")


def main(scale: str, pages: tuple[str, ...] = PAGES) -> None:
    warnings.simplefilter("ignore")
    os.environ["MARNN_PAGES_READ_ONLY"] = "1"  # by name: older trees keep it in marnn.report
    out: list[dict] = []

    def put(key: str, verdict, detail="") -> None:
        out.append({"key": key, "verdict": str(verdict), "detail": str(detail)})

    if "main" in pages:
        main_pages(put, scale)
    if "memory" in pages:
        memory_page(put, scale)
    if "precision" in pages:
        precision_page(put, scale)
    for line in out:
        print(json.dumps(line))


def main_pages(put, scale: str) -> None:
    from marnn import book, registry, report
    from marnn import verdicts as V
    from marnn.analysis import audit

    inp = audit.load(scale)
    for f in audit.run_checks(inp, chapters=book.NOTEBOOKS):
        put(f"audit/{f.id}/paper", f.verdict, f.recomputed)
        put(f"audit/{f.id}/ours", f.ours_verdict, f.ours)
    df = report.formal_results(scale, compute=False)
    paper = report.paper_formal()  # accuracy, and validation perplexity to choose models
    last = report.last_bin(df)
    for mode in ("m", "c"):
        for split in ("bin0", "bin1", last):
            t = V.mode_verdicts(df, mode, "none", split)
            for r, v in zip(t.to_dict("records"), t.attrs["verdicts"], strict=True):
                put(f"table1/ours/{mode}-vs-none/{split}/{r['task']}", v.verdict,
                    f"{r[f'model ({mode})']} vs {r['model (none)']}: {v.text(3)}")
            put(f"table1/ours/{mode}-vs-none/{split}/count", V.count(t.attrs["verdicts"]).verdict)
            p = V.paper_mode_verdicts(paper, mode, "none", split)
            for r, v in zip(p.to_dict("records"), p.attrs["verdicts"], strict=True):
                put(f"table1/paper/{mode}-vs-none/{split}/{r['task']}", v.verdict, v.text(3))
            put(f"table1/paper/{mode}-vs-none/{split}/count", V.count(p.attrs["verdicts"]).verdict)
    for fig, pool, top in (("fig2", registry.FORMAL_MODELS, 3), ("fig3", registry.MEMORY_MODELS, 2)):
        part = df[df["model"].isin(pool) & df["freeze"].isin(["none", "m"])]
        chosen = report.top_models(part, top, modes=["none", "m"], models=pool)
        theirs = paper[paper["freeze"].isin(["none", "m"]) & paper["model"].isin(pool)]
        s = V.figure_summary(part, theirs, chosen, "m", scale, ["none", "m"])
        for (task, model), r in s["ours"].iterrows():
            put(f"{fig}/ours/{task}/{model}", r["verdict"])
        put(f"{fig}/ours/count", V.count(s["ours"].attrs.get("verdicts", [])).verdict
            if "verdicts" in s["ours"].attrs else "")
        for (task, model), r in s["paper"].iterrows():
            put(f"{fig}/paper/{task}/{model}", r["verdict"])
        for idx, r in s["positions"].iterrows():
            put(f"{fig}/position/{'/'.join(map(str, idx))}", r["vs trivial"])
        for who in ("languages", "paper_languages"):  # one effect per language (where the tree has it)
            for task, r in s.get(who, pd.DataFrame()).iterrows():
                put(f"{fig}/{who}/{task}", r["verdict"])
        put(f"{fig}/text", "", s["text"])
    best = report.best_per_task(report.ours_long(df, ["accuracy", "perplexity"]), [last])
    pos = V.positions(df, best[["task", "model", "freeze"]].to_dict("records"), last)
    for r in pos.to_dict("records"):
        put(f"findings/position/{r['task']}/{r['freeze']}", r["vs trivial"], r["model"])
    kept = V.retention_comparison(df, "m", "none", "bin0", last)
    put("table2/retention m vs none", kept.verdict, kept.text(3))
    languages(put)
    stability(put, scale, df)


def memory_page(put, scale: str) -> None:
    """The memory page's findings, for the page's languages and models: decided on best-restart means with a
    tolerance of 0.01 and the cuts 0.6 and one half (earlier trees, the page's own helper reproduced here), or
    over restarts (trees with ``memory.claims``)."""
    import numpy as np

    from marnn.analysis import memory

    try:
        frames = memory.indicators(scale, ["marked-reverse-and-copy", "marked-copy"],
                                   ["lstm", "jm-10", "jm-3.3.3", "jm-hidden"], threads=1)
    except Exception as err:  # noqa: BLE001 - no checkpoints at this scale: nothing to list
        put("memory", "", f"skipped: {err}")
        return
    if hasattr(memory, "claims"):
        for claim, r in memory.claims(memory.summary(frames, best_only=False)).iterrows():
            put(f"memory/{claim}", r["verdict"], f"{r['mean']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}]")
        return
    table = memory.summary(frames)
    trained, rnd = table[table["freeze"].isin(["none", "m"])], table[table["freeze"] == "cm"]
    stack = table[table["model"] != "lstm"]

    def cmp(a, b, tol=0.01):
        return "about the same as" if abs(a - b) < tol else ("higher than" if a > b else "lower than")

    inf = int(np.isinf(trained["span_longest"]).sum())
    beyond = trained["probe_beyond"].mean()
    put("memory/span_outlasts", _word(inf > len(trained) / 2), f"{inf} of {len(trained)}")
    put("memory/probe_beyond_chance", _word(beyond < 0.6), f"{beyond:.3g}")
    put("memory/moves_after_unreadable", _word(inf > len(trained) / 2 and beyond < 0.6))
    for col in ("probe_train", "probe_beyond"):
        a, b = trained[col].mean(), rnd[col].mean()
        put(f"memory/{col}_vs_random", cmp(a, b), f"{a:.3g} vs {b:.3g}")
    for col in ("reading_train", "reading_beyond"):
        a, b = (stack.loc[stack["freeze"] == m, col].mean() for m in ("m", "none"))
        put(f"memory/{col}_m_vs_none", cmp(a, b) if col == "reading_train" else "", f"{a:.3g} vs {b:.3g}")


def precision_page(put, scale: str) -> None:
    """The precision page's sentences on trained models (part (c)): the cut 0.05 on the largest accuracy change
    and 3 on the pooled growth (earlier trees), or over restarts (trees with ``precision.format_claims``)."""
    from marnn.analysis import precision

    s = precision.settings(scale)
    try:
        trained = precision.trained_precision("marked-reverse-and-copy", s.trained_models, scale, threads=1)
    except Exception as err:  # noqa: BLE001 - no checkpoints at this scale: nothing to list
        put("precision", "", f"skipped: {err}")
        return
    facts = precision.trained_facts(trained)
    if hasattr(precision, "format_claims"):
        for name, frame in (("format leaves accuracy", precision.format_claims(trained)),
                            ("amplifies", precision.growth_claims(trained))):
            for dtype, r in frame.iterrows():
                put(f"precision/{name}/{dtype}", r["verdict"], f"{r['mean']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}]")
        return
    worst = max(facts[f"acc_change_{k}"] for k in ("f32", "bf16", "f16"))
    grow = min(facts[f"typical_growth_{k}"] for k in ("f32", "bf16", "f16"))
    put("precision/format leaves accuracy/all", _word(worst < 0.05), f"{worst:.3g}")
    put("precision/amplifies/all", _word(grow > 3), f"{grow:.3g}")


def languages(put) -> None:
    """The languages page: each accuracy the paper prints against the trivial predictors and the ceiling of its
    bin. A tree with ``report.TOL`` (before issue 18's last part) decided "below" and "above the ceiling" with
    the page's fixed tolerances (0.015 and 0.005 on one number); later trees use the rounding rule."""
    from marnn import paper, plotting, report, tasks, verdicts
    from marnn.scales import PAPER

    reported = paper.lookup(paper.load(), dataset="formal", metric="accuracy")
    reported = reported[reported["split"].isin(PAPER.bin_names)]
    refs = plotting.reference_frame(tasks.names(), PAPER.test_bins, PAPER.bin_names)
    keys = ["task", "model", "freeze", "split"]
    rules = verdicts if hasattr(verdicts, "nearest_baseline") else report  # moved to verdicts in issue 20
    for r in rules.nearest_baseline(reported, refs).to_dict("records"):
        put("languages/at a baseline/" + "/".join(str(r[k]) for k in keys), r["position"], r["reference"])
    if hasattr(rules, "printed_positions"):
        placed = rules.printed_positions(reported, refs)
        vs_base, vs_ceil = placed["vs best baseline"], placed["vs ceiling"]
    else:
        tol = report.TOL
        best = refs[refs["reference"] != "ceiling"].groupby(["task", "split"])["accuracy"].max().rename("best baseline")
        ceil = refs[refs["reference"] == "ceiling"].groupby(["task", "split"])["accuracy"].min().rename("ceiling")
        placed = reported.merge(best.reset_index(), on=["task", "split"])
        placed = placed.merge(ceil.reset_index(), on=["task", "split"])
        vs_base = (placed["value"] < placed["best baseline"] - tol).map({True: "below", False: "not below"})
        vs_ceil = (placed["value"] > placed["ceiling"] + 0.005).map({True: "above", False: "not above"})
    for r, b, c in zip(placed.to_dict("records"), vs_base, vs_ceil, strict=True):
        key = "/".join(str(r[k]) for k in keys)
        put(f"languages/vs best baseline/{key}", b, r["value"])
        put(f"languages/vs ceiling/{key}", c, r["value"])


def stability(put, scale: str, df) -> None:
    """The stability page's stable runs against the trivial predictors of the last bin: per run with the
    page's fixed tolerance (a tree with ``report.TOL``), per cell over restarts by the rule (later trees)."""
    from marnn import report
    from marnn.analysis import stability as st

    recs = st.load_records(scale)
    table = st.run_table(recs, st.untrained_losses(recs))
    for r in table.to_dict("records"):
        put(f"stability/run/{r['task']}/{r['model']}/{r['freeze']}/{r['seed']}", r["verdict"])
    stable = table[table["verdict"] == "stable"]
    if hasattr(st, "stable_cells"):
        for r in st.stable_cells(table, df, report.last_bin(df)).to_dict("records"):
            key = f"{r['task']}/{r['model']}/{r['freeze']}"
            put(f"stability/stable cell vs trivial/{key}", r["vs trivial"],
                r["mean − trivial [95% interval over restarts]"])
            put(f"stability/stable cell at repeat-previous/{key}", r["at repeat-previous"],
                r["mean − repeat-previous [95% interval]"])
    else:
        tol = report.TOL
        for r in stable.to_dict("records"):
            key = f"{r['task']}/{r['model']}/{r['freeze']}/{r['seed']}"
            beats = r["last_accuracy"] - r["trivial_accuracy"] > tol
            put(f"stability/stable run vs trivial/{key}", "beats by more than TOL" if beats else "not by more than TOL")
            put(f"stability/stable run at repeat-previous/{key}",
                "within TOL" if abs(r["last_accuracy"] - r["repeat_accuracy"]) <= tol else "not within TOL")

    theorems(put, st, table)
    perturbations(put, st, scale, table)


def _word(holds) -> str:
    """A tree that decides by a majority of runs gives ``holds`` as True / False / None."""
    return {True: "holds", False: "does not hold"}.get(None if holds is None or pd.isna(holds) else bool(holds),
                                                       "no run applies")


def theorems(put, st, table) -> None:
    """The stability page's theorem checks: a majority of runs against per-run thresholds (a tree whose
    ``theorem_checks`` has ``holds``), or the verdict over restarts (later trees)."""
    checks = st.theorem_checks(table)
    for check, r in checks.iterrows():
        if "verdict" in checks.columns:
            put(f"stability/theorem/{check}", r["verdict"],
                f"{r['mean']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}] over {r['restarts']} restarts x {r['cells']} cells")
        else:
            put(f"stability/theorem/{check}", _word(r["holds"]), f"share {r['share']:.3g} of {r['runs']} runs")


def perturbations(put, st, scale: str, table) -> None:
    """The stability page's robustness sentences, from the committed weights (nothing trains): on the
    means of the runs with a 0.95 cut (earlier trees) or over restarts (trees with ``perturbation_claims``)."""
    import os

    try:
        from marnn.analysis.weights import trained_group
    except ImportError:  # trees before the kept weights replaced the checkpoints
        from marnn.analysis.checkpoints import trained_group  # type: ignore[no-redef]

    os.environ["MARNN_PAGES_READ_ONLY"] = "1"  # (by name: older trees keep it in marnn.report)
    try:
        groups = [trained_group(t, m, scale) for t in ("marked-reverse-and-copy", "marked-copy")
                  for m in ("lstm", "jm-10", "jm-hidden")]
    except Exception as err:  # noqa: BLE001 - no checkpoints at this scale: nothing to list
        put("stability/perturbation", "", f"skipped: {err}")
        return
    perturbed = pd.concat([st.perturbation_table(g, 20) for g in groups], ignore_index=True)
    if hasattr(st, "perturbation_claims"):
        for claim, r in st.perturbation_claims(perturbed).iterrows():
            put(f"stability/perturbation/{claim}", r["verdict"], f"{r['mean']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}]")
        return
    by_mode = perturbed.groupby("freeze")[["agreement", "follows"]].mean()
    a_none, a_c = by_mode.loc["none", "agreement"], by_mode.loc["c", "agreement"]
    f_none, f_c = by_mode.loc["none", "follows"], by_mode.loc["c", "follows"]
    put("stability/perturbation/c_agrees_more", _word(a_c > a_none), f"{a_c:.3g} vs {a_none:.3g}")
    put("stability/perturbation/c_follows_less", _word(f_c < f_none), f"{f_c:.3g} vs {f_none:.3g}")
    put("stability/perturbation/none_follows_short", _word(f_none < 0.95), f"{f_none:.3g}")
    put("stability/perturbation/none_changes_others", _word(a_none < 0.95), f"{a_none:.3g}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick", tuple(sys.argv[2:]) or PAGES)
