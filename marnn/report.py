"""What the result pages compute: load-or-train a grid, best of restarts, spread, paper vs ours.

Every table and figure notebook of the book follows the same path::

    df = report.formal_results("quick", modes=["none", "m"])   # train what is missing, load the rest
    report.best_table(df, "m")                                  # best restart per (task, model)
    report.restart_spread(df, "bin2", "accuracy")               # the other restarts
    report.compare(ours, theirs)                                # paper vs ours, with a difference

:func:`formal_results` and :func:`ptb_results` are the pages' only entry into
the store: they build the configs of the requested cells (``marnn.grid``), run
the missing ones in this process (``scheduler="sync"``) and return the tidy
rows of *exactly those* configs, in the format of :func:`marnn.store.load_frame`,
with the ``best`` column recomputed within the selection (so asking for two of
three stored restarts picks the best of those two). Everything else here is a
pure function of such a frame and of :func:`marnn.paper.load`.

Names follow the paper: models as in its tables, freeze modes ``none`` / ``m``
/ ``c`` / ``cm`` (docs: book/reference/models.md, "Freeze modes"), test bins ``bin0`` ... and
``valid`` for the validation split (the paper's ``validation``).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from . import paper, store
from .config import RunConfig
from .registry import FORMAL_MODELS, MODES, PTB_MODELS, PTB_VARIANTS, lookup
from .scales import get_scale

# The paper's table of each freeze mode on the formal languages (docs: book/reference/claims.md; marnn.paper).
MODE_TABLE: dict[str, str] = {"none": "Table 4", "c": "Table 5", "m": "Table 6", "cm": "Table 7"}
REFERENCES: tuple[str, ...] = ("ceiling", "ceiling upper bound", "most-frequent", "repeat-previous", "chance")
UPPER_BOUND = "ceiling upper bound"  # the row of a ceiling known only as an upper bound (exact=False)


# ---- names -------------------------------------------------------------------
def check_mode(freeze: str) -> str:
    """``freeze`` if it is a freeze mode, else an error that lists the valid ones."""
    lookup("freeze mode", freeze, dict.fromkeys(MODES))
    return freeze


def _names(kind: str, given: Iterable[str] | None, valid: Sequence[str]) -> list[str]:
    """``given`` (default: all of ``valid``) after checking every name."""
    if given is None:
        return list(valid)
    if isinstance(given, str):
        given = [given]
    out = list(given)
    for name in out:
        lookup(kind, name, dict.fromkeys(valid))
    return out


def last_bin(frame: pd.DataFrame, scale: str | None = None) -> str:
    """The longest test bin present in ``frame`` (column ``split``); with none there (nothing stored
    yet), the last bin of ``scale``."""
    found = max((s for s in frame["split"].unique() if str(s).startswith("bin")), key=split_rank, default=None)
    if found is None:
        if scale is None:
            raise ValueError("no test bin in the frame (no stored run); pass the scale to name its last bin")
        return bin_names(scale)[-1]
    return found


def task_names() -> list[str]:
    from . import tasks

    return list(tasks.names())


def bin_names(scale: str) -> list[str]:
    return list(get_scale(scale).bin_names)


# ---- load or compute -----------------------------------------------------------


def results_frame(configs: list[dict], root: str | None = None, *, compute: bool = True,
                  lengths: bool = True, on_failure: str = "raise") -> pd.DataFrame:
    """The tidy rows (``store.load_frame`` format) of exactly ``configs``.

    With ``compute`` (and :func:`may_train`), missing configs are trained first with
    ``grid.run_grid(..., scheduler="sync")``. A group that fails raises
    ``RuntimeError`` (a page must not silently lose cells), unless
    ``on_failure="warn"``: then a warning names it and its cells are absent
    (:func:`missing_cells` lists them for the page). Without ``compute``,
    missing configs are simply absent. ``best`` marks the best restart
    *within* these configs. ``frame.attrs["grid"]`` holds run_grid's summary
    (or None).
    """
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
    compute = compute and store.may_train()
    summary = None
    if compute and store.missing(configs, root):
        from . import grid

        # training output (progress-bar warnings, prints) would make a page's first execution differ
        # from a re-execution that only loads; failures are reported below instead
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            summary = grid.run_grid(configs, root, scheduler="sync", progress=False)
        if summary["failed"]:
            lines = [f"{f['task']}/{f['model']} ({f['runs']} runs): {f['error']}" for f in summary["failed"]]
            message = "training failed for\n  " + "\n  ".join(lines)
            if on_failure == "raise":
                raise RuntimeError(message)
            warnings.warn(message, stacklevel=2)
    rows: list[dict] = []
    for config in configs:
        rec = store.load_record(config, root)
        if rec is not None:
            rows.extend(r for r in store.record_rows(rec) if lengths or r["length"] is None)
    cols = store.ID_COLUMNS + ["split", "length", "metric", "value", "best"]
    if not rows:  # typed, so that filters such as df[df["best"]] select rows of an empty frame too
        df = pd.DataFrame(columns=cols).astype({"length": "float64", "value": "float64", "best": bool,
                                                "diverged": bool})
    else:
        df = pd.DataFrame(rows)
        df["length"] = df["length"].astype("float64")
        df["best"] = df["key"].isin(store.best_keys(df))
        df = df[cols]
    df.attrs["grid"] = summary
    return df


def missing_cells(configs: list[dict], root: str | None = None,
                  by: Sequence[str] = ("model", "freeze", "embedding_group")) -> pd.DataFrame:
    """The cells (``by`` columns of the configs) of ``configs`` that have no record, with a count."""
    gone = store.missing(configs, root)
    cols = [c for c in by if any(c in g for g in configs)]
    if not gone:
        return pd.DataFrame(columns=cols + ["runs"])
    frame = pd.DataFrame([{c: g.get(c) for c in cols} for g in gone])
    return order(frame.groupby(cols, sort=False).size().rename("runs").reset_index())


def formal_configs(scale: str, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                   modes: Iterable[str] | None = None, restarts: int | None = None) -> list[dict]:
    """Configs of a formal-language grid; None = every task / model / mode, the scale's restarts."""
    from . import grid

    return grid.formal_grid(scale, tasks=_names("task", tasks, task_names()),
                            models=_names("model", models, FORMAL_MODELS),
                            modes=_names("freeze mode", modes, MODES), restarts=restarts)


def formal_results(scale: str, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                   modes: Iterable[str] | None = None, restarts: int | None = None,
                   root: str | None = None, *, compute: bool = True, lengths: bool = True) -> pd.DataFrame:
    """Results of tasks x models x modes x restarts on the formal languages, training what is missing.

    The four modes of one (task, model) train as one replica-batched model, so
    missing runs are computed for *every* mode of the requested (task, model)
    pairs (a later page asking for another mode then finds it stored); the
    frame holds only the requested modes.
    """
    wanted = formal_configs(scale, tasks, models, modes, restarts)
    if compute:
        everything = formal_configs(scale, tasks, models, None, restarts)
        if store.missing(everything, root):
            results_frame(everything, root, compute=True, lengths=False)
    return results_frame(wanted, root, compute=compute, lengths=lengths)


def ptb_configs(scale: str, models: Iterable[str] | None = None, modes: Iterable[str] | None = None,
                restarts: int | None = None, embedding_groups: Iterable[str] = ("controller",),
                root: str | None = None) -> list[dict]:
    """Configs of the PTB grid (empty at a scale whose learning-rate search is not stored in
    ``root`` yet: :func:`marnn.grid.ptb_seeds`). At a scale with a campaign only the cells it trains
    (:func:`marnn.campaign.planned_ptb`); ``models`` None: the models the scale shows
    (:func:`marnn.campaign.ptb_models`)."""
    from . import campaign, grid
    from .registry import EMBEDDING_GROUPS

    planned = campaign.planned_ptb(scale)
    names = campaign.ptb_models(scale) if models is None else _names("model", models, PTB_MODELS + PTB_VARIANTS)
    configs = []
    for group in _names("embedding group", embedding_groups, EMBEDDING_GROUPS):
        configs += [c for c in grid.ptb_grid(scale, models=names, modes=_names("freeze mode", modes, MODES),
                                             restarts=restarts, embedding_group=group, root=root)
                    if planned is None or (c["model"], c["freeze"], group) in planned]
    return configs


def ptb_results(scale: str, models: Iterable[str] | None = None, modes: Iterable[str] | None = None,
                restarts: int | None = None, embedding_groups: Iterable[str] = ("controller",),
                root: str | None = None, *, compute: bool = True, on_failure: str = "raise") -> pd.DataFrame:
    """Results of the Penn Treebank grid (models x modes x restarts x embedding groups).

    ``embedding_groups``: which freezable group the input embedding joins
    (``marnn.models.base.EMBEDDING_GROUPS``; the default ``"controller"`` is
    the package's reading, ``"memory"`` the ablation).
    """
    configs = ptb_configs(scale, models, modes, restarts, embedding_groups, root)
    df = results_frame(configs, root, compute=compute, lengths=False, on_failure=on_failure)
    # runs that failed to train; where the pages train nothing, a missing run is not trained yet instead
    df.attrs["missing"] = missing_cells(configs if compute and store.may_train() else [], root)
    df.attrs["scale"] = get_scale(scale).name
    return df


# ---- reshaping ---------------------------------------------------------------------
RUN_COLUMNS = ["key", "task", "model", "freeze", "embedding_group", "seed", "best", "diverged"]


def run_metrics(df: pd.DataFrame, splits: Iterable[str] | None = None,
                metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per run and split (lengths dropped), one column per metric."""
    part = df[df["length"].isna()]
    if splits is not None:
        part = part[part["split"].isin(list(splits))]
    if metrics is not None:
        part = part[part["metric"].isin(list(metrics))]
    part = part.fillna({"embedding_group": "-"})
    wide = part.pivot_table(index=RUN_COLUMNS + ["split"], columns="metric", values="value", aggfunc="first",
                            dropna=False)
    wide = wide.dropna(how="all").reset_index()
    wide.columns.name = None
    return order(wide)


def split_rank(split: str) -> tuple[int, str]:
    """valid, bin0, bin1, ..., test, then anything else."""
    if split == "valid":
        return (-1, split)
    if isinstance(split, str) and split.startswith("bin") and split[3:].isdigit():
        return (int(split[3:]), split)
    return (10_000 if split == "test" else 10_001, str(split))


@lru_cache(maxsize=1)
def _orders() -> dict[str, dict[str, int]]:
    lists = {"task": ["ptb"] + task_names(), "model": list(FORMAL_MODELS + PTB_MODELS), "freeze": list(MODES),
             "metric": ["accuracy", "perplexity", "ce_diff"]}
    return {k: {v: i for i, v in enumerate(vals)} for k, vals in lists.items()}


def _rank(name: str, value) -> tuple[int, str]:
    """Sort key of ``value`` in column ``name``: the paper's order, unknown values last."""
    if name == "split":
        return split_rank(value)
    return (_orders().get(name, {}).get(value, 10_000), str(value))


def order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the paper's order: tasks, models and modes as in its tables, then seeds."""
    sort_cols, out = [], frame.copy()
    for col in ("task", "model", "freeze", "embedding_group", "seed", "split", "length", "metric"):
        if col not in out.columns:
            continue
        if col in ("task", "model", "freeze", "split", "metric"):
            out[f"_{col}"] = out[col].map(lambda v, c=col: _rank(c, v)[0])
        else:
            out[f"_{col}"] = out[col].astype(str) if col == "embedding_group" else out[col]
        sort_cols.append(f"_{col}")
    out = out.sort_values(sort_cols, kind="stable")
    return out.drop(columns=[c for c in out.columns if c.startswith("_")]).reset_index(drop=True)


def best_runs(df: pd.DataFrame, splits: Iterable[str] | None = None,
              metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """:func:`run_metrics` of the best restart of every cell only."""
    wide = run_metrics(df[df["best"]], splits, metrics)
    return wide.drop(columns=["best"])


# ---- Tables 4-7 ----------------------------------------------------------------
TABLE_METRICS = ("accuracy", "perplexity", "ce_diff")


def best_table(df: pd.DataFrame, mode: str, references: bool = True) -> pd.DataFrame:
    """Tables 4-7: per task, best restart of each model in ``mode``.

    Columns ``(valid, perplexity)`` then ``(bin, accuracy / perplexity /
    ce_diff)`` per test bin. With ``references``, every task also gets rows for
    the accuracy ceiling (perplexity = e^lower bound, ce_diff 0) and the
    trivial predictors (chance, most-frequent: accuracy and perplexity;
    repeat-previous: accuracy only), taken from the records themselves.
    """
    check_mode(mode)
    part = df[df["freeze"] == mode]
    wide = best_runs(part)
    bins = sorted((s for s in wide["split"].unique() if s.startswith("bin")), key=split_rank)
    rows: dict[tuple[str, str], dict] = {}
    for r in wide.itertuples(index=False):
        row = rows.setdefault((r.task, r.model), {})
        if r.split == "valid":
            row[("valid", "perplexity")] = r.perplexity
        elif r.split in bins:
            for m in TABLE_METRICS:
                row[(r.split, m)] = getattr(r, m)
    table = pd.DataFrame.from_dict(rows, orient="index")
    if references and not table.empty:
        table = pd.concat([table, reference_table(part)])
    if table.empty:
        return table
    table.index = pd.MultiIndex.from_tuples(table.index, names=["task", "model"])
    cols = [("valid", "perplexity")] + [(b, m) for b in bins for m in TABLE_METRICS]
    table = table.reindex(columns=pd.MultiIndex.from_tuples(cols, names=["split", "metric"]))
    rank_t = {t: i for i, t in enumerate(task_names())}
    rank_m = {m: i for i, m in enumerate(FORMAL_MODELS + tuple(f"({r})" for r in REFERENCES))}
    idx = sorted(table.index, key=lambda k: (rank_t.get(k[0], 99), rank_m.get(k[1], 99), k))
    return table.loc[idx]


def reference_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ``(task, "(reference)")`` with the references stored in the records of ``df``."""
    part = df[df["length"].isna() & df["split"].str.startswith("bin")]
    vals = part.groupby(["task", "split", "metric"])["value"].first()
    rows: dict[tuple[str, str], dict] = {}
    for (task, split, metric), v in vals.items():
        def put(ref, m, value, task=task, split=split):
            rows.setdefault((task, f"({ref})"), {})[(split, m)] = value

        if metric == "ceiling_accuracy":
            put("ceiling", "accuracy", v)
        elif metric == "lower_bound":
            put("ceiling", "perplexity", float(np.exp(v)))
            put("ceiling", "ce_diff", 0.0)
        for ref in ("chance", "most-frequent"):
            if metric == f"{ref}_accuracy":
                put(ref, "accuracy", v)
            elif metric == f"{ref}_cross_entropy":
                put(ref, "perplexity", float(np.exp(v)))
                lb = vals.get((task, split, "lower_bound"))
                if lb is not None:
                    put(ref, "ce_diff", v - lb)
        if metric == "repeat-previous_accuracy":
            put("repeat-previous", "accuracy", v)
    # a ceiling that is only an upper bound (ceiling_exact = 0) gets its own row, so it is never read as exact
    for (task, split, metric), v in vals.items():
        if metric == "ceiling_exact" and v == 0 and (task, "(ceiling)") in rows:
            exact = rows[(task, "(ceiling)")]
            bound = rows.setdefault((task, f"({UPPER_BOUND})"), {})
            for m in ("accuracy", "perplexity", "ce_diff"):
                if (split, m) in exact:
                    bound[(split, m)] = exact.pop((split, m))
    return pd.DataFrame.from_dict(rows, orient="index")


def references_long(df: pd.DataFrame) -> pd.DataFrame:
    """Tidy references per task and bin: task, split, reference, accuracy, exact (False: the ceiling is
    an upper bound)."""
    ref = reference_table(df)
    if ref.empty:
        return pd.DataFrame(columns=["task", "split", "reference", "accuracy", "exact"])
    out = []
    for (task, name), row in ref.iterrows():
        name = name.strip("()")
        for (split, metric), v in row.items():
            if metric == "accuracy" and pd.notna(v):
                out.append({"task": task, "split": split, "reference": "ceiling" if name == UPPER_BOUND else name,
                            "accuracy": v, "exact": name != UPPER_BOUND})
    return pd.DataFrame(out)


# ---- spread over restarts -----------------------------------------------------------
def restart_spread(df: pd.DataFrame, split: str, metric: str,
                   by: Sequence[str] = ("task", "model", "freeze")) -> pd.DataFrame:
    """Per cell: restarts, diverged, best-restart value, and mean / std / min / max over restarts.

    Diverged restarts count in ``restarts`` and ``diverged`` but not in the
    statistics (their numbers are not meaningful).
    """
    wide = run_metrics(df, [split], [metric])
    if wide.empty or metric not in wide.columns:
        return pd.DataFrame(columns=list(by) + ["restarts", "diverged", "best", "mean", "std", "min", "max"])
    ok = wide[~wide["diverged"].astype(bool)]
    g = ok.groupby(list(by), sort=False)[metric]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "min": g.min(), "max": g.max()})
    counts = wide.groupby(list(by), sort=False).agg(restarts=("key", "size"),
                                                    diverged=("diverged", lambda s: int(s.astype(bool).sum())))
    best = wide[wide["best"]].groupby(list(by), sort=False)[metric].first().rename("best")
    out = counts.join(best).join(out).reset_index()
    return order(out)


# ---- the paper's numbers --------------------------------------------------------------
def paper_formal(mode: str | None = None, metrics: Iterable[str] = ("accuracy", "perplexity")) -> pd.DataFrame:
    """The paper's formal-language numbers (Tables 4-7) with our split names.

    Columns: source, task, model, freeze, split (``valid``, ``bin0`` ...), metric, value.
    """
    df = paper.lookup(paper.load(), dataset="formal")
    if mode is not None:
        df = df[df["freeze"] == check_mode(mode)]
    df = df[df["metric"].isin(list(metrics))].copy()
    df["split"] = df["split"].replace({"validation": "valid"})
    return order(df.drop(columns=["dataset"]))


def paper_ptb() -> pd.DataFrame:
    """Table 3: the paper's PTB test perplexities (columns model, freeze, split, metric, value)."""
    df = paper.lookup(paper.load(), dataset="ptb").copy()
    df["split"] = df["split"].replace({"validation": "valid"})
    return order(df.drop(columns=["dataset", "task"]))


def ours_long(df: pd.DataFrame, metrics: Iterable[str] = ("accuracy", "perplexity")) -> pd.DataFrame:
    """Best-restart values of ``df`` in the paper's long format (no lengths)."""
    part = df[df["best"] & df["length"].isna() & df["metric"].isin(list(metrics))]
    cols = ["task", "model", "freeze", "split", "metric", "value"]
    if "embedding_group" in part and part["embedding_group"].notna().any():
        cols.insert(3, "embedding_group")
    return order(part[cols])


def compare(ours: pd.DataFrame, theirs: pd.DataFrame, on: Sequence[str] | None = None,
            how: str = "left") -> pd.DataFrame:
    """Paper vs ours: a join on ``on`` with columns ``paper``, ``ours``, ``difference`` (= ours - paper).

    Both frames are long (a ``value`` column); ``on`` defaults to the columns
    they share besides ``value``. ``how="left"`` keeps exactly the cells the
    paper prints (ours NaN where we have no run); ``"outer"`` keeps ours too.
    """
    on = list(on) if on is not None else [c for c in ours.columns if c in theirs.columns and c != "value"]
    a = theirs[on + ["value"]].rename(columns={"value": "paper"})
    b = ours[on + ["value"]].rename(columns={"value": "ours"})
    out = a.merge(b, on=on, how=how)
    out["difference"] = out["ours"] - out["paper"]
    return order(out)


def compare_wide(comparison: pd.DataFrame, index: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """A :func:`compare` frame pivoted: ``columns`` on top, then paper / ours / difference."""
    wide = comparison.pivot_table(index=list(index), columns=list(columns),
                                  values=["paper", "ours", "difference"], aggfunc="first", dropna=False)
    wide = wide.reorder_levels(list(range(1, wide.columns.nlevels)) + [0], axis=1)
    seen = sorted(dict.fromkeys(tuple(c[:-1]) for c in wide.columns),
                  key=lambda t: tuple(_rank(n, v) for n, v in zip(columns, t, strict=True)))
    cols = [(*t, v) for t in seen for v in ("paper", "ours", "difference")]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(cols, names=list(columns) + [""]))
    wide = wide.dropna(how="all")
    return wide.loc[_ordered_index(wide.index, index)]


def _ordered_index(idx: pd.Index, names: Sequence[str]) -> list:
    def key(k):
        k = k if isinstance(k, tuple) else (k,)
        return tuple(_rank(n, v) for n, v in zip(names, k, strict=True))

    return sorted(idx, key=key)


# ---- Tables 1 and 2: overview and retention --------------------------------------------
def best_per_task(long: pd.DataFrame, splits: Sequence[str], metric: str = "accuracy") -> pd.DataFrame:
    """Per task x mode x split: the model chosen **on validation** and its ``metric`` on each split.

    ``long``: :func:`ours_long` (with ``"perplexity"`` among its metrics) or :func:`paper_formal`
    (columns task, model, freeze, split, metric, value). The model of a (task, mode) is the one with the
    lowest validation perplexity (the best restart's, as the paper prints it); the test bins are only
    read, never used to choose, so the chosen model's test numbers are not flattered by the choice. Ties
    go to the model listed first in the paper.
    """
    valid = order(long[(long["split"] == "valid") & (long["metric"] == "perplexity")].dropna(subset=["value"]))
    if valid.empty:
        raise ValueError("best_per_task chooses models on validation: the frame needs rows with split 'valid' "
                         "and metric 'perplexity' (ours_long(df, ['accuracy', 'perplexity']) or paper_formal())")
    pick = valid.loc[valid.groupby(["task", "freeze"], sort=False)["value"].idxmin(), ["task", "freeze", "model"]]
    part = long[(long["metric"] == metric) & long["split"].isin(list(splits))].dropna(subset=["value"])
    out = part.merge(pick, on=["task", "freeze", "model"])
    return order(out[["task", "freeze", "split", "model", "value"]])


def overview_table(best: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    """:func:`best_per_task` pivoted: task rows, (mode, split) columns in the paper's mode order."""
    wide = best.pivot(index="task", columns=["freeze", "split"], values=column)
    splits = sorted(dict.fromkeys(best["split"]), key=split_rank)
    cols = [(m, s) for m in MODES for s in splits if (m, s) in wide.columns]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(cols, names=["freeze", "split"]))
    return wide.reindex([t for t in task_names() if t in wide.index])


def retention(long: pd.DataFrame, first: str = "bin0", last: str = "bin2",
              by: Sequence[str] = ("task", "model", "freeze")) -> pd.DataFrame:
    """Accuracy on ``last`` divided by accuracy on ``first`` per cell of ``long`` (columns first, last, ratio).

    ``long`` may hold one row per restart (add ``seed`` to ``by``) or best
    restarts only. The paper's "retained close to 90%" and "60% drop" are
    statements about this ratio (docs: book/reference/claims.md, "Formal languages").
    """
    acc = long[long["metric"] == "accuracy"]
    wide = acc[acc["split"].isin([first, last])].pivot_table(index=list(by), columns="split", values="value",
                                                             aggfunc="first")
    out = pd.DataFrame({"first": wide.get(first), "last": wide.get(last)})
    out["ratio"] = out["last"] / out["first"]
    return order(out.reset_index())


def retention_table(ratios: pd.DataFrame, stat: str = "mean") -> pd.DataFrame:
    """Model x mode table of the ratio aggregated over tasks (``stat``: mean, min, max, median),
    with a final row aggregating over every (task, model)."""
    t = ratios.pivot_table(index="model", columns="freeze", values="ratio", aggfunc=stat)
    t.loc["all models"] = ratios.groupby("freeze")["ratio"].agg(stat)
    t = t.reindex(columns=[m for m in MODES if m in t.columns])
    return t.reindex([m for m in list(FORMAL_MODELS) + ["all models"] if m in t.index])


def all_runs_long(df: pd.DataFrame, metrics: Iterable[str] = ("accuracy",)) -> pd.DataFrame:
    """Every non-diverged restart in the long format (with ``seed``), lengths dropped."""
    part = df[df["length"].isna() & df["metric"].isin(list(metrics)) & ~df["diverged"].astype(bool)]
    return order(part[["task", "model", "freeze", "seed", "split", "metric", "value"]])


# ---- Figures 2 and 3 ---------------------------------------------------------------
def top_models(df: pd.DataFrame, k: int, modes: Sequence[str] = ("none",), split: str | None = None,
               models: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Per task, the ``k`` models with the lowest validation cross-entropy of their best restart, averaged
    over ``modes``; ties go to the paper's order. Chosen on validation, so the test bins they are shown
    on do not choose them (``split`` is accepted for compatibility and not used).

    The paper does not say how its "top" models were chosen; this is our reading.
    """
    part = df[df["best"] & df["length"].isna() & (df["split"] == "valid") & (df["metric"] == "cross_entropy")
              & df["freeze"].isin(list(modes))]
    if models is not None:
        part = part[part["model"].isin(list(models))]
    score = part.groupby(["task", "model"])["value"].mean().reset_index()
    rank = {m: i for i, m in enumerate(FORMAL_MODELS)}
    out = {}
    for task in [t for t in task_names() if t in set(score["task"])]:
        s = score[score["task"] == task]
        s = s.assign(r=s["model"].map(rank)).sort_values(["value", "r"], ascending=[True, True])
        out[task] = list(s["model"].head(k))
    return out


def length_curves(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per-length values of every restart: task, model, freeze, seed, best, bin, length, value."""
    part = df[df["length"].notna() & (df["metric"] == metric)]
    part = part.rename(columns={"split": "bin"})
    return order(part[["task", "model", "freeze", "seed", "best", "diverged", "bin", "length", "value"]])


# ---- PTB -------------------------------------------------------------------------------
def ptb_table(df: pd.DataFrame, split: str = "test", embedding_group: str | None = "controller") -> pd.DataFrame:
    """Model x mode table of best-restart perplexities on ``split`` (``valid`` or ``test``)."""
    part = df if embedding_group is None else df[df["embedding_group"] == embedding_group]
    b = best_runs(part, [split], ["perplexity"])
    if "perplexity" not in b.columns:  # nothing stored
        return pd.DataFrame(index=pd.Index([], name="model"), columns=pd.Index([], name="freeze"), dtype=float)
    t = b.pivot_table(index="model", columns="freeze", values="perplexity", aggfunc="first")
    t = t.reindex(columns=[m for m in MODES if m in t.columns])
    return t.reindex([m for m in PTB_MODELS + PTB_VARIANTS if m in t.index])


def ablation_table(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Embedding-group ablation: (model, mode) rows, one column per embedding group and their difference."""
    b = best_runs(df, [split], ["perplexity"])
    if "perplexity" not in b.columns:  # nothing stored
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["model", "freeze"]), dtype=float)
    t = b.pivot_table(index=["model", "freeze"], columns="embedding_group", values="perplexity", aggfunc="first")
    groups = [g for g in ("controller", "memory", "trained") if g in t.columns]
    t = t[groups]
    if "controller" in groups and "memory" in groups:
        t["memory - controller"] = t["memory"] - t["controller"]
    t.columns.name = None
    return t.loc[_ordered_index(t.index, ["model", "freeze"])]


# ---- provenance -------------------------------------------------------------------------
def provenance_runs(root: str | None = None) -> pd.DataFrame:
    """One row per record in the store: what ran, where, with what, when, how long.

    ``commit`` ends in "+modified" when the package differed from that commit;
    ``kernel`` is the fused kernel's backend setting ("auto": the compiled loop where
    it applies; "numpy*": a record older than the setting, made by the NumPy loop)."""
    rows = []
    for _, rec in store.iter_records(root):
        c, env = RunConfig.from_dict(rec["config"]), rec.get("env", {})
        commit = (env.get("git_commit") or "unknown")[:10] + ("+modified" if env.get("code_modified") else "")
        rows.append({"scale": c.scale_name, "kind": c.kind, "task": c.corpus, "model": c.model,
                     "freeze": c.freeze, "seed": c.seed, "status": rec["status"], "commit": commit,
                     "kernel": env.get("fused_backend", "numpy*"), "date": str(rec["created"])[:10],
                     "created": rec["created"], "device": env.get("device", "?"),
                     "cpu": env.get("cpu_model") or env.get("cpu", "?"),
                     "host": env.get("hostname", "?"), "torch": env.get("torch", "?"),
                     "python": env.get("python", "?"), "marnn": env.get("marnn", "?"),
                     "wall_time_s": rec.get("wall_time_s") or 0.0})
    cols = ["scale", "kind", "task", "model", "freeze", "seed", "status", "commit", "kernel", "date", "created",
            "device", "cpu", "host", "torch", "python", "marnn", "wall_time_s"]
    return order(pd.DataFrame(rows, columns=cols))


def _joined(s: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in s}))


def provenance_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per scale and kind: runs, statuses, commits, machines and versions (no times)."""
    g = runs.groupby(["scale", "kind"], sort=True)
    out = pd.DataFrame({
        "runs": g.size(),
        "diverged": g["status"].apply(lambda s: int((s == "diverged").sum())),
        "commits": g["commit"].apply(_joined),
        "kernels": g["kernel"].apply(_joined),
        "devices": g["device"].apply(_joined),
        "cpus": g["cpu"].apply(_joined),
        "torch": g["torch"].apply(_joined),
        "python": g["python"].apply(_joined),
    })
    return out


def provenance_times(runs: pd.DataFrame) -> pd.DataFrame:
    """Per scale and kind: first and last date, total wall time (hours)."""
    g = runs.groupby(["scale", "kind"], sort=True)
    return pd.DataFrame({"first": g["date"].min(), "last": g["date"].max(), "machines": g["host"].nunique(),
                         "wall time (h)": g["wall_time_s"].sum() / 3600})


def wall_time_by_model(runs: pd.DataFrame) -> pd.DataFrame:
    """Per scale: total wall time in hours of every model's runs (model rows, scale columns): the
    paper's models in their order, then any other model the store holds (e.g. the published VRNS)."""
    t = runs.pivot_table(index="model", columns="scale", values="wall_time_s", aggfunc="sum") / 3600
    known = FORMAL_MODELS + PTB_MODELS
    return t.reindex([m for m in known if m in t.index] + sorted(m for m in t.index if m not in known))


# ---- judgements: sentences computed from the data ------------------------------------------
def count_phrase(n: int, total: int, what: str) -> str:
    """'3 of 7 languages', 'none of the 7 languages', 'all 7 languages'."""
    if total == 0:
        return f"no {what}"
    if n == 0:
        return f"none of the {total} {what}"
    if n == total:
        return f"all {total} {what}" if total > 1 else f"the one {what}"
    return f"{n} of {total} {what}"


def comparison_sentence(comparison: pd.DataFrame, metric: str = "accuracy") -> str:
    """How our ``metric`` compares with the paper's over the cells both have."""
    both = comparison[comparison["metric"] == metric].dropna(subset=["paper", "ours"])
    if both.empty:
        return f"There is no {metric} cell that both the paper and this run report."
    higher = int((both["difference"] > 0).sum())
    med = float(both["difference"].median())
    word = "higher" if metric == "accuracy" else "higher (worse)"
    return (f"Our {metric} is {word} than the paper's in {higher} of {len(both)} cells; the median difference "
            f"(ours - paper) is {med:+.3g}, the largest absolute one {float(both['difference'].abs().max()):.3g}.")


def scale_caveat(scale: str) -> str:
    """A sentence on what the scale means for a comparison with the paper's bins."""
    from .scales import PAPER

    sc = get_scale(scale)
    if sc.name == "paper":
        return "This page was built at the paper's scale, so bins of the same name cover the same lengths."
    ours = ", ".join(f"{lo}-{hi}" for lo, hi in sc.test_bins)
    theirs = ", ".join(f"{lo}-{hi}" for lo, hi in PAPER.test_bins)
    note = " Its numbers mean nothing: it exists to test the pages." if sc.name == "smoke" else ""
    return (f"This page was built at the `{sc.name}` scale: training lengths {sc.train_lengths[0]}-"
            f"{sc.train_lengths[1]}, test bins {ours} (the paper: 40-80 and {theirs}), "
            f"{sc.restarts} restarts instead of {PAPER.restarts}. Bins are compared by position (first, "
            f"second, last), not by length.{note}")


def restrict(theirs: pd.DataFrame, ours: pd.DataFrame, on: Sequence[str] = ("task", "model")) -> pd.DataFrame:
    """The rows of the paper's frame whose ``on`` values all occur in ours (parameters may select a subset)."""
    keep = np.ones(len(theirs), dtype=bool)
    for col in on:
        keep &= theirs[col].isin(set(ours[col])).to_numpy()
    return theirs[keep]


def paper_table(theirs: pd.DataFrame, index: Sequence[str] = ("task", "model")) -> pd.DataFrame:
    """The paper's long numbers as a wide table: ``index`` rows, (split, metric) columns, in its order."""
    wide = theirs.pivot_table(index=list(index), columns=["split", "metric"], values="value", aggfunc="first")
    cols = sorted(wide.columns, key=lambda c: (split_rank(c[0]), _rank("metric", c[1])))
    return wide.reindex(columns=cols).loc[_ordered_index(wide.index, index)]


def glue_all(facts: dict) -> None:
    """``myst_nb.glue`` every value of ``facts`` (numpy scalars as Python numbers), not displayed."""
    from myst_nb import glue

    for key, value in facts.items():
        glue(key, value.item() if hasattr(value, "item") else value, display=False)


def check_frozen_mode(freeze: str) -> str:
    """``freeze`` if it is a mode that freezes something (m, c, cm), else an error listing them."""
    lookup("freeze mode", freeze, dict.fromkeys(MODES[1:]))
    return freeze


def ptb_scale_caveat(scale: str) -> str:
    """What the scale changes in the Penn Treebank protocol, as a sentence."""
    from .scales import PAPER

    sc = get_scale(scale)
    if sc.name == "paper":
        return "This page was built at the paper's scale (the whole corpus, 100 epochs at most, 10 restarts)."
    tokens = f"{sc.ptb_train_tokens:,}" if sc.ptb_train_tokens else "all"
    note = " Its numbers mean nothing: it exists to test the pages." if sc.name == "smoke" else ""
    return (f"This page was built at the `{sc.name}` scale: {tokens} training tokens, at most "
            f"{sc.ptb_max_epochs} epochs, {sc.ptb_restarts} restart(s) instead of {PAPER.ptb_restarts}, so "
            f"a comparison is decided only once our perplexities beat a unigram model fitted on the same tokens.{note}")
