"""The bodies of the comparison pages that share one layout: Tables 4-7 and Figures 2-3.

Each of those notebooks is its introduction, its parameters and one call::

    pages.mode_table(scale, "m", tasks, models, restarts)              # Table 6
    pages.length_figure(scale, "m", top=3, pool=None, ...)             # Figure 2

The call displays every section of the page (headings, tables, figures and
the sentences that state a finding, each built from the data by
:mod:`marnn.verdicts`). Tables are made to be read: accuracies with two
decimals, ours with the spread over restarts beside them, bins named by their
length ranges (the paper's and ours never under one label), no raw flags.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import coverage, registry, report, store, verdicts
from .scales import PAPER, get_scale

DASH = "–"


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: '1 language', '7 languages'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def _table(frame: pd.DataFrame) -> None:
    from IPython.display import display

    display(frame)


def fmt(x, digits: int = 2) -> str:
    """A number with ``digits`` decimals; a dash for a missing one."""
    if x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)):
        return DASH
    return f"{x:.{digits}f}"


def fmt_ppl(x) -> str:
    """A perplexity with three significant digits, without exponent notation; a dash for a missing one."""
    if x is None or not np.isfinite(x):
        return DASH
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def readable(frame: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Floats as text with ``digits`` decimals (a dash where missing), flags as yes / no."""
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if s.dtype == bool:
            out[col] = s.map({True: "yes", False: "no"})
        elif pd.api.types.is_float_dtype(s):
            out[col] = s.map(lambda v: fmt(v, digits))
    return out


def bin_labels(scale: str) -> dict[str, str]:
    """``{"bin0": "10-25", ...}`` for a scale."""
    return {f"bin{i}": f"{lo}-{hi}" for i, (lo, hi) in enumerate(get_scale(scale).test_bins)}


def _ref_label(name: str) -> str:
    return {f"({report.UPPER_BOUND})": "(ceiling: upper bound)"}.get(name, name)


# ---- Tables 4-7 -------------------------------------------------------------------------------------
def accuracy_table(df: pd.DataFrame, mode: str, scale: str) -> pd.DataFrame:
    """Ours in ``mode``: per (task, model) and bin, best-restart accuracy ± standard deviation over the
    restarts that did not diverge; then the references of each task (an upper-bound ceiling labelled)."""
    labels = bin_labels(scale)
    part = df[df["freeze"] == mode]
    best = report.best_table(part, mode)
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for split, label in labels.items():
        if (split, "accuracy") not in best.columns:
            continue
        spread = report.restart_spread(part, split, "accuracy").set_index(["task", "model"])
        for (task, model), v in best[(split, "accuracy")].items():
            cell = fmt(v)
            if (task, model) in spread.index and np.isfinite(spread.loc[(task, model), "std"]):
                cell += f" ± {spread.loc[(task, model), 'std']:.2f}"
            rows.setdefault((task, _ref_label(model)), {})[label] = cell
    out = pd.DataFrame.from_dict(rows, orient="index").fillna(DASH)
    out.index = pd.MultiIndex.from_tuples(out.index, names=["task", "model"])
    return out


def perplexity_table(df: pd.DataFrame, mode: str, scale: str, metric: str = "perplexity") -> pd.DataFrame:
    """Ours in ``mode``, best restart: ``perplexity`` (validation, then per bin) or ``ce_diff`` (the
    cross-entropy's gap to the lower bound per bin, nats per symbol), three significant digits; references
    included where they have the metric."""
    labels = bin_labels(scale)
    best = report.best_table(df[df["freeze"] == mode], mode)
    cols = {("valid", "perplexity"): "valid"} if metric == "perplexity" else {}
    cols.update({(split, metric): label for split, label in labels.items()})
    out = best.reindex(columns=list(cols))
    out = out.dropna(how="all")
    out = out.map(fmt_ppl if metric == "perplexity" else (lambda v: fmt(v, 3)))
    out.columns = list(cols.values())
    out.index = pd.MultiIndex.from_tuples([(t, _ref_label(m)) for t, m in out.index], names=["task", "model"])
    return out


def paper_accuracy_table(theirs: pd.DataFrame) -> pd.DataFrame:
    """The paper's accuracies (two decimals, as printed), bins named by its length ranges."""
    acc = theirs[(theirs["metric"] == "accuracy") & theirs["split"].str.startswith("bin")]
    wide = report.paper_table(acc)
    wide.columns = [bin_labels("paper").get(s, s) for s, _ in wide.columns]
    return readable(wide)


def side_by_side(ours: pd.DataFrame, theirs: pd.DataFrame, scale: str, metric: str = "accuracy",
                 digits: int = 2) -> pd.DataFrame:
    """Paper → ours per (task, model) and bin position; a column is named 'paper's range → our range'."""
    ours_l, paper_l = bin_labels(scale), bin_labels("paper")
    a = theirs[theirs["metric"] == metric].set_index(["task", "model", "split"])["value"]
    b = ours[ours["metric"] == metric].set_index(["task", "model", "split"])["value"]
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for (task, model, split), pv in a.items():
        if split not in ours_l or (task, model, split) not in b.index:
            continue
        ov = b[(task, model, split)]
        col = f"{paper_l[split]} → {ours_l[split]}"
        rows.setdefault((task, model), {})[col] = (f"{fmt(pv, digits)} → {fmt(ov, digits)}" if metric == "accuracy"
                                                   else f"{fmt_ppl(pv)} → {fmt_ppl(ov)}")
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame.from_dict(rows, orient="index").fillna(DASH)
    out.index = pd.MultiIndex.from_tuples(out.index, names=["task", "model"])
    return out.loc[report._ordered_index(out.index, ["task", "model"])]


def best_against_baseline(df: pd.DataFrame, theirs: pd.DataFrame, scale: str) -> tuple[pd.DataFrame, str]:
    """Last bin, per language and mode: our model chosen on validation against the best trivial predictor
    and the ceiling, by the rule over restarts; the paper's model chosen on its printed validation
    perplexity against its bins' references, as printed (within half a unit of the exact reference)."""
    from . import plotting

    last = report.last_bin(df, scale)
    best = report.best_per_task(report.ours_long(df, ["accuracy", "perplexity"]), [last])
    cells = [{"task": r.task, "model": r.model, "freeze": r.freeze} for r in best.itertuples()]
    pos = verdicts.positions(df, cells, last)
    tasks_shown = list(dict.fromkeys(theirs["task"]))
    prefs = plotting.reference_frame(tasks_shown, PAPER.test_bins, PAPER.bin_names)
    prefs = prefs[prefs["split"] == "bin2"]
    pbest = report.best_per_task(theirs, ["bin2"])
    pv = []
    for r in pbest.itertuples():
        base = prefs[(prefs["task"] == r.task) & (prefs["reference"] != "ceiling")]["accuracy"].max()
        pv.append(verdicts.printed_vs_exact(float(r.value), float(base)))
    pc = verdicts.count(pv)
    table = readable(pos.set_index("task").drop(columns=["freeze"]))
    restarts = int(df["seed"].nunique()) if len(df) else 0
    text = (f"On {verdicts.bin_label(scale, last)}, our model of each language chosen on validation: "
            f"{verdicts.position_sentence(pos, 'languages')} {verdicts.design_note(restarts)} The paper's model "
            f"chosen on its printed validation perplexity, on 201-400, above the best trivial predictor of its "
            f"bin (as printed, best of 10 restarts, each within {verdicts.ACC_HALF} of the exact reference): "
            f"{pc.text('languages')}.")
    return table, text


def mode_table(scale: str, mode: str, tasks: Sequence[str] | None = None, models: Sequence[str] | None = None,
               restarts: int | None = None) -> None:
    """Tables 4-7, everything below the introduction: the paper's table, ours (with the references and the
    spread over restarts), paper vs ours, and where the best models sit against the references."""
    from . import plotting

    report.check_mode(mode)
    pd.set_option("display.max_rows", 400)  # a row per (language, model)
    table = report.MODE_TABLE[mode]
    theirs = report.paper_formal(mode)
    if tasks is not None or models is not None:
        theirs = theirs[theirs["task"].isin(tasks or report.task_names())
                        & theirs["model"].isin(models or registry.FORMAL_MODELS)]
    _show(f"## The paper's numbers\n\n{table} as printed (accuracy, then perplexity; the paper's bins are "
          f"{', '.join(bin_labels('paper').values())}):")
    _table(paper_accuracy_table(theirs))
    ppl = report.paper_table(theirs[theirs["metric"] == "perplexity"])
    ppl.columns = [bin_labels("paper").get(s, s) for s, _ in ppl.columns]
    _table(ppl.map(fmt_ppl))
    kept = report.retention(theirs)
    if len(kept):
        worst = kept.loc[kept["ratio"].idxmin()]
        acc = theirs[theirs["metric"] == "accuracy"]
        _show(f"Over its {int((acc['split'] == 'bin0').sum())} (language, model) cells the paper's mean accuracy "
              f"goes from {acc.loc[acc['split'] == 'bin0', 'value'].mean():.3f} on the first bin to "
              f"{acc.loc[acc['split'] == 'bin2', 'value'].mean():.3f} on the last; the mean ratio last / first "
              f"is {kept['ratio'].mean():.3f}. Its largest loss is **{worst['model']}** on **{worst['task']}**: "
              f"{worst['first']:.2f} on the first bin, {worst['last']:.2f} on the last (ratio "
              f"{worst['ratio']:.2f}).")

    df = report.formal_results(scale, tasks=tasks, models=models, modes=[mode], restarts=restarts)
    cells = coverage.formal_cells(scale, tasks, models, [mode])
    if df.empty:
        _show("## Our runs\n\n" + coverage.nothing_stored(cells))
        _table(coverage.missing_table(cells, "task", ["model"]))
        return
    last = report.last_bin(df, scale)
    S = get_scale(scale)
    _show(f"## Our runs\n\n{df['key'].nunique()} runs: {counted(df['task'].nunique(), 'language')} x "
          f"{counted(df['model'].nunique(), 'model')} x {counted(df['seed'].nunique(), 'restart')} in mode "
          f"`{mode}`, test bins "
          f"{', '.join(bin_labels(scale).values())} (scale `{S.name}`). Accuracy of the best restart (lowest "
          "validation cross-entropy) ± the standard deviation over the restarts that did not diverge, then the "
          "references of each bin: the ceiling (the Bayes predictor's accuracy; *upper bound* where only a "
          "bound is known) and the trivial predictors.")
    _table(accuracy_table(df, mode, scale))
    if not cells["stored"].all():
        _show(coverage.missing_sentence(cells).replace("(not drawn; ", "(not in the table; "))
    _show("Perplexity (the ceiling's is $e^H$ for the lower bound $H$ on the cross-entropy), then the gap of "
          "the cross-entropy to that bound in nats per symbol (0 for the ceiling). Accuracy alone can hide a "
          "model that merely repeats the last symbol:")
    _table(perplexity_table(df, mode, scale))
    _table(perplexity_table(df, mode, scale, "ce_diff"))
    points = report.run_metrics(df, [last], ["accuracy"]).rename(columns={"accuracy": "value"})
    fig = plotting.restart_grid(points, report.references_long(df), last, list(dict.fromkeys(points["task"])),
                                models=[m for m in registry.FORMAL_MODELS if m in set(points["model"])])
    fig.suptitle(f"accuracy on {verdicts.bin_label(scale, last)}, mode {mode}: every restart (dots), best "
                 "restart (rings)", y=1.02)
    import matplotlib.pyplot as plt

    plt.show()

    _show(f"## Paper vs ours\n\n{report.scale_caveat(scale)} Accuracy, paper → ours (best restarts), for every "
          f"cell of {table} that this page ran; each column is named by the paper's length range → ours:")
    ours = report.ours_long(df)
    _table(side_by_side(ours, report.restrict(theirs, df), scale))
    _show("Perplexity, paper → ours:")
    _table(side_by_side(ours, report.restrict(theirs, df), scale, "perplexity"))
    comparison = report.compare(ours, report.restrict(theirs, df))
    base_table, base_text = best_against_baseline(df, report.restrict(theirs, df), scale)
    _show(" ".join([report.comparison_sentence(comparison, "accuracy"), base_text]))
    _table(base_table)


# ---- Figures 2 and 3 -----------------------------------------------------------------------------------
def length_figure(scale: str, freeze: str, top: int, pool: Sequence[str] | None, tasks: Sequence[str] | None = None,
                  restarts: int | None = None, default_pool: Sequence[str] = registry.FORMAL_MODELS) -> None:
    """Figures 2 and 3, everything below the introduction: the paper's numbers for the two modes, the
    curves of the models picked from ``pool`` (default ``default_pool``), the spread over restarts, and the
    verdicts by the one rule with where the compared curves sit against the references."""
    import matplotlib.pyplot as plt

    from . import plotting

    report.check_frozen_mode(freeze)
    pd.set_option("display.max_rows", 400)
    modes = ["none", freeze]
    pool = list(pool) if pool is not None else list(default_pool)
    theirs = report.paper_formal(metrics=["accuracy", "perplexity"])  # validation perplexity chooses models
    theirs = theirs[theirs["freeze"].isin(modes) & theirs["model"].isin(pool)]
    if tasks is not None:
        theirs = theirs[theirs["task"].isin(tasks)]
    _show(f"## The paper's numbers\n\nAccuracy, as printed (best of 10 restarts), of the model with the lowest "
          f"printed validation perplexity per language, in modes `none` and `{freeze}`, on its bins "
          f"{', '.join(bin_labels('paper').values())}:")
    overview = report.overview_table(report.best_per_task(theirs, ["bin0", "bin1", "bin2"]))
    overview.columns = [f"{m} {bin_labels('paper')[s]}" for m, s in overview.columns]
    _table(readable(overview))
    paper_cmp = verdicts.paper_mode_verdicts(theirs, freeze)
    _show(verdicts.count_sentence(
        paper_cmp, f"On 201-400 the paper's model chosen on validation in mode `{freeze}` more accurate than the "
                   f"one chosen in mode `none` (as printed, best of 10 restarts: two printed values that differ "
                   f"are ordered, equal ones cannot be told apart)", "languages"))
    _table(readable(paper_cmp.set_index("task")))

    df = report.formal_results(scale, tasks=tasks, models=pool, modes=modes, restarts=restarts)
    cells = coverage.formal_cells(scale, tasks, pool, modes)
    if df.empty:
        _show("## Our runs\n\n" + coverage.nothing_stored(cells))
        _table(coverage.missing_table(cells, "task", ["model", "freeze"]))
        return
    chosen = report.top_models(df, top, modes=modes, models=pool)
    _show("## Our runs\n\nThe models shown per language:")
    _table(pd.DataFrame({"models shown": [", ".join(v) for v in chosen.values()]},
                        index=pd.Index(list(chosen), name="task")))
    _show("Each panel: accuracy of the best restart at every test length (colour = model, marker and dash = "
          "mode), a shaded band from the lowest to the highest restart, and, as horizontal steps over each test "
          "bin, the accuracy ceiling (black) and the trivial predictors (grey: most-frequent dashed, "
          "repeat-previous dotted, chance dash-dotted). The first bin overlaps the training lengths.")
    sc = get_scale(scale)
    # the references as the records store them, the values Tables 4-7 print (report.references_long)
    fig = plotting.length_grid(report.length_curves(df), chosen, modes, sc.test_bins,
                               refs=report.references_long(df), names=sc.bin_names)
    fig.suptitle(f"accuracy against length: {plotting.MODE_LABELS['none']} vs {plotting.MODE_LABELS[freeze]}", y=1.01)
    plt.show()
    if not cells["stored"].all():
        _show(coverage.missing_sentence(cells))

    last = report.last_bin(df, scale)
    _show(f"## Spread over restarts\n\nAccuracy on {verdicts.bin_label(scale, last)} for the models shown, "
          "over the restarts that did not diverge:")
    pairs = pd.DataFrame([(t, m) for t, ms in chosen.items() for m in ms], columns=["task", "model"])
    spread = pairs.merge(report.restart_spread(df, last, "accuracy"), on=["task", "model"])
    _table(readable(spread.set_index(["task", "model", "freeze"])))

    _show("## Paper vs ours\n\nAccuracy, paper → ours, for the models shown (mode `none`, then mode "
          f"`{freeze}`; each column is named by the paper's length range → ours):")
    shown = report.ours_long(df, ["accuracy"]).merge(pairs, on=["task", "model"])
    for mode in modes:
        _table(side_by_side(shown[shown["freeze"] == mode], theirs[theirs["freeze"] == mode].merge(pairs),
                            scale))
    summary = verdicts.figure_summary(df, theirs, chosen, freeze, scale, modes)
    _show(summary["text"])
    _show("One effect per language, ours (95% t interval over restarts) and the paper's (as printed, best of 10 "
          "restarts: a rounding range):")
    _table(summary["languages"])
    _table(summary["paper_languages"])
    _show("Per (language, model), descriptive (not counted), ours then the paper's:")
    _table(summary["ours"])
    _table(readable(summary["paper"]))
    _table(readable(summary["positions"]))


# ---- Table 1 ----------------------------------------------------------------------------------------------
def overview(best: pd.DataFrame, scale: str, column: str = "value", split: str | None = None) -> pd.DataFrame:
    """:func:`marnn.report.overview_table` (of one ``split`` if given) with columns named 'mode range'
    (``scale``: "paper" for the paper's bins) and two decimals."""
    wide = report.overview_table(best if split is None else best[best["split"] == split], column)
    labels = bin_labels(scale)
    wide.columns = [f"{m} {labels.get(s, s)}" for m, s in wide.columns]
    return readable(wide) if column == "value" else wide.fillna(DASH)


def overview_side_by_side(ours: pd.DataFrame, theirs: pd.DataFrame, scale: str, position: int) -> pd.DataFrame:
    """Best accuracy per language and mode on one bin position (0 = first, -1 = last), paper → ours; the
    columns are the modes; ``.attrs["caption"]`` names both length ranges."""
    ours_bins, paper_bins = list(bin_labels(scale)), list(bin_labels("paper"))
    ob, pb = ours_bins[position], paper_bins[position]
    a = theirs[theirs["split"] == pb].set_index(["task", "freeze"])["value"]
    b = ours[ours["split"] == ob].set_index(["task", "freeze"])["value"]
    rows: dict[str, dict[str, str]] = {}
    for (task, mode), pv in a.items():
        ov = b.get((task, mode), np.nan)
        rows.setdefault(task, {})[mode] = f"{fmt(pv)} → {fmt(ov)}"
    out = pd.DataFrame.from_dict(rows, orient="index").fillna(DASH)
    out = out.reindex(columns=[m for m in registry.MODES if m in out.columns])
    out.index.name = "task"
    out = out.reindex([t for t in report.task_names() if t in out.index])
    which = {0: "First bin", -1: "Last bin"}.get(position, f"Bin {position}")
    out.attrs["caption"] = (f"*{which}, paper {bin_labels('paper')[pb]} → ours {bin_labels(scale)[ob]}, one "
                            "column per freeze mode:*")
    return out


def mean_ratio(ratios: pd.DataFrame) -> pd.DataFrame:
    """Mean of :func:`marnn.report.retention` ratios per (model, mode), in the long ``value`` format."""
    return ratios.groupby(["model", "freeze"])["ratio"].mean().rename("value").reset_index()


def ratio_side_by_side(ours_ratio: pd.DataFrame, theirs_ratio: pd.DataFrame) -> pd.DataFrame:
    """Mean retention ratio per model (rows) and mode (columns), paper → ours, two decimals."""
    a = mean_ratio(theirs_ratio).set_index(["model", "freeze"])["value"]
    b = mean_ratio(ours_ratio).set_index(["model", "freeze"])["value"]
    rows: dict[str, dict[str, str]] = {}
    for (model, mode), pv in a.items():
        rows.setdefault(model, {})[mode] = f"{fmt(pv)} → {fmt(b.get((model, mode), np.nan))}"
    out = pd.DataFrame.from_dict(rows, orient="index").fillna(DASH)
    out = out.reindex(columns=[m for m in registry.MODES if m in out.columns])
    out.index.name = "model"
    return out.reindex([m for m in registry.FORMAL_MODELS if m in out.index])


# ---- the languages chapter ---------------------------------------------------------------------------------
def length_range_text(lengths: Sequence[int]) -> str:
    """'21-39 (7)': first and last valid length, and how many there are."""
    return f"{lengths[0]}-{lengths[-1]} ({len(lengths)})"


def reference_split_table(refs: pd.DataFrame, split: str, order: Sequence[str]) -> pd.DataFrame:
    """One length range of :func:`marnn.plotting.reference_frame`: lower bound, ceiling (exact or an upper
    bound, said in its own column) and the three trivial predictors, per language."""
    part = refs[refs["split"] == split]
    acc = part.pivot(index="task", columns="reference", values="accuracy")
    ceiling = part[part["reference"] == "ceiling"].set_index("task")
    table = pd.DataFrame({
        "lower bound (nats)": ceiling["cross_entropy"],
        "ceiling": acc["ceiling"],
        "ceiling is": ceiling["exact"].map({True: "exact", False: "upper bound"}),
        "chance": acc["chance"],
        "most-frequent": acc["most-frequent"],
        "repeat-previous": acc["repeat-previous"],
    })
    return readable(table.reindex(list(order)).rename_axis("language"), 3)


def short_task_name(name: str) -> str:
    """A language's name broken at a hyphen, for axis labels."""
    return name.replace("-different", "-\ndifferent").replace("-and-", "-and-\n")


def ceiling_sentence(refs: pd.DataFrame, random_word: Sequence[str], count_task: str = "count-3") -> str:
    """How far the ceilings are from 1, from a :func:`marnn.plotting.reference_frame`."""
    ceil = refs[refs["reference"] == "ceiling"]
    word = ceil[ceil["task"].isin(list(random_word))]
    c3 = ceil[ceil["task"] == count_task]["accuracy"]
    rep = refs[(refs["task"] == count_task) & (refs["reference"] == "repeat-previous")]["accuracy"]
    return (f"For the languages with a random word the ceiling is at most {word['accuracy'].max():.3f} on every "
            f"range above (lowest {word['accuracy'].min():.3f}): the first half of $w$ (or all of it) cannot be "
            f"predicted better than a coin flip, so roughly $k$ of the $n + 1$ predictions are guesses. The "
            f"ceiling of {count_task} is {c3.min():.3f} to {c3.max():.3f}, and repeating the previous symbol "
            f"already scores {rep.min():.3f} to {rep.max():.3f} there, because a string $a^n b^n c^n$ changes "
            "symbol only twice.")


def ablation_table(ablation: pd.DataFrame, scale: str, models: Sequence[str] = (coverage.ABLATION_MODEL,),
                   split: str = "test") -> pd.DataFrame:
    """``report.ablation_table`` with a :data:`marnn.coverage.NOT_TRAINED` row for every (model, mode) of the ablation
    that has no stored run in some group (numbers as text then); unchanged when nothing is missing."""
    table = report.ablation_table(ablation, split) if len(ablation) else pd.DataFrame()
    wanted = [(m, f) for m in models for f in registry.MODES]
    complete = (not table.empty and all(w in table.index for w in wanted)
                and {"controller", "memory"} <= set(table.columns)
                and table[["controller", "memory"]].notna().all().all())
    if complete or store.may_train():
        return table
    groups = ["controller", "memory", "memory - controller"]
    shown = table.reindex(columns=groups) if not table.empty else pd.DataFrame(columns=groups)
    text = shown.astype(object).map(lambda v: fmt_ppl(v) if isinstance(v, float) and pd.notna(v) and v > 0
                                    else (f"{v:+.3g}" if isinstance(v, float) and pd.notna(v)
                                          else coverage.NOT_TRAINED))
    if not text.empty:
        text.index = pd.MultiIndex.from_tuples(list(text.index), names=["model", "freeze"])
    else:
        text.index = pd.MultiIndex.from_tuples([], names=["model", "freeze"])
    return coverage.mark_rows(text, wanted)
