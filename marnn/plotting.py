"""One look for every figure of the book: a fixed colour per model, a fixed
marker and line style per freeze mode, and the reference lines (accuracy
ceiling and trivial baselines) that every accuracy plot is read against.

Keeping the palette here means a model has the same colour in the chapter on
languages, in Figures 1-3 and in the Penn Treebank chapter. The colours are the
Okabe-Ito palette, which stays distinguishable with every common colour-vision
deficiency; a Penn Treebank model takes the colour of its formal-language
family (lstm-256 that of lstm, rns-4-5 that of rns-3-3, ...).

Figures are sized for the book's 772 px text column: :func:`use_style` sets
text of at least 9 pt and shrinks a wider figure to the column before it is
drawn, so text never shrinks below that size in the browser.

>>> from marnn import plotting
>>> plotting.color("rns-3-3")
'#CC79A7'
>>> plotting.MODE_STYLE["m"]["marker"]
's'
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.artist import Artist

from .registry import FORMAL_MODELS, MODELS, MODES, PTB_MODELS, lookup

# ---- palette --------------------------------------------------------------
# Each model's colour is named in its row of the registry (marnn.registry.MODELS), one of these;
# grey and black are kept free for reference lines.
# Okabe & Ito (2008), "Color universal design": distinct under protanopia,
# deuteranopia and tritanopia. Colours are unique within each of the two families.
OKABE_ITO: dict[str, str] = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00",
    "purple": "#CC79A7", "sky": "#56B4E9", "yellow": "#F0E442", "black": "#000000",
}
# Freeze modes (docs: book/reference/models.md, "Freeze modes"): what stays at its random initial value.
MODE_LABELS: dict[str, str] = {
    "none": "none (all trained)",
    "m": "m (memory frozen)",
    "c": "c (controller frozen)",
    "cm": "cm (both frozen)",
}
# Where a figure tells the modes apart by colour (one point per mode, not per model).
MODE_COLORS: dict[str, str] = {"none": OKABE_ITO["blue"], "m": OKABE_ITO["vermillion"],
                               "c": OKABE_ITO["green"], "cm": OKABE_ITO["purple"]}
# The paper's numbers: hollow markers; ours: filled (with their spread over restarts).
PAPER_STYLE: dict[str, Any] = {"markerfacecolor": "white", "markeredgewidth": 1.6}
MODE_STYLE: dict[str, dict[str, Any]] = {
    "none": {"marker": "o", "linestyle": "-"},
    "m": {"marker": "s", "linestyle": "--"},
    "c": {"marker": "^", "linestyle": "-."},
    "cm": {"marker": "X", "linestyle": ":"},
}

# Reference lines: the Bayes-optimal ceiling and three trivial predictors
# (marnn.tasks.Task.accuracy_ceiling / baselines).
REFERENCES: tuple[str, ...] = ("ceiling", "most-frequent", "repeat-previous", "chance")
REFERENCE_STYLE: dict[str, dict[str, Any]] = {
    "ceiling": {"color": "black", "linestyle": "-", "linewidth": 1.6},
    "most-frequent": {"color": "0.45", "linestyle": "--", "linewidth": 1.2},
    "repeat-previous": {"color": "0.45", "linestyle": ":", "linewidth": 1.6},
    "chance": {"color": "0.7", "linestyle": "-.", "linewidth": 1.0},
}

UPPER_BOUND_STYLE: dict[str, Any] = {"alpha": 0.5, "linewidth": 1.0}  # a ceiling that is a bound


def color(model: str) -> str:
    """The colour of ``model`` (its row of :data:`marnn.registry.MODELS`); an unknown name lists the known ones."""
    colours = {name: row.colour for name, row in MODELS.items() if row.colour is not None}
    return OKABE_ITO[lookup("model", model, colours)]


def mode_style(mode: str) -> dict[str, Any]:
    """Marker and line style of freeze mode ``mode``."""
    return dict(lookup("freeze mode", mode, MODE_STYLE))


COLUMN_PX = 772  # the book's text column at a 1400 px window (sphinx-book-theme)
DPI = 100
MIN_TEXT_PT = 9.0  # smallest text at page width


def use_style() -> None:
    """The book's matplotlib / seaborn defaults (call once per notebook).

    Text is at least :data:`MIN_TEXT_PT` points, the palette is Okabe-Ito, and in
    IPython a figure wider than the book's column is shrunk to it (layout redone)
    before it is shown, so its text keeps its size on the page.
    """
    import matplotlib as mpl
    import seaborn as sns
    from cycler import cycler

    sns.set_theme(context="notebook", style="whitegrid")
    mpl.rcParams.update({
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "font.size": 11,
        "axes.titlesize": 11.5,
        "axes.labelsize": 11,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "legend.fontsize": 10,
        "legend.title_fontsize": 10,
        "figure.titlesize": 12,
        "lines.markersize": 6,
        "legend.frameon": False,
        "axes.prop_cycle": cycler(color=list(OKABE_ITO.values())[:7]),
        # fixed metadata so re-executed notebooks give byte-identical images
        "svg.hashsalt": "marnn",
    })
    _fit_figures_to_column()


def fit_to_column(fig, column_px: int = COLUMN_PX) -> None:
    """Shrink ``fig`` (keeping its aspect and its font sizes) until its tight bounding box is at
    most ``column_px`` pixels wide at :data:`DPI`, redoing a tight layout after each step."""
    import warnings

    for _ in range(3):
        fig.canvas.draw()
        width_px = fig.get_tightbbox().width * DPI  # inches -> px at the book's dpi
        if width_px <= column_px:
            return
        w, h = fig.get_size_inches()
        k = max(0.4, (column_px - 4) / width_px)
        fig.set_size_inches(w * k, h * k)
        if fig.get_layout_engine() is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig.tight_layout()


def ipython_shell():
    """The running IPython shell, or None outside IPython (plain Python, tests)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _fit_figures_to_column() -> None:
    """In IPython: show every figure shrunk to the column (:func:`fit_to_column`)."""
    ip = ipython_shell()
    if ip is None:
        return
    import matplotlib.pyplot as plt  # noqa: F401 - loads the inline backend and its formatters
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    def png(fig):
        fit_to_column(fig)
        return print_figure(fig, "png", bbox_inches="tight")

    ip.display_formatter.formatters["image/png"].for_type(Figure, png)


def text_sizes_at_page(fig, column_px: int = COLUMN_PX) -> list[float]:
    """Font size in points of every visible text of ``fig`` as the book shows it: a figure wider
    than the column is scaled down by the browser."""
    fig.canvas.draw()
    width_px = fig.get_tightbbox().width * DPI
    scale = min(1.0, column_px / width_px)
    return [t.get_fontsize() * scale for t in fig.findobj(lambda a: hasattr(a, "get_text") and
                                                          hasattr(a, "get_fontsize"))
            if t.get_visible() and t.get_text().strip()]


# ---- reference values -------------------------------------------------------
def reference_frame(tasks: Iterable[str], bins: Sequence[tuple[int, int]],
                    names: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy frame of every reference value of every task on every length range.

    Columns: task, split, lo, hi, reference (ceiling / chance / most-frequent /
    repeat-previous), accuracy, cross_entropy (nats per symbol; the lower bound
    for the ceiling, NaN for repeat-previous) and exact (False where the
    ceiling is only an upper bound, see ``Task.accuracy_ceiling``).
    ``names`` labels the ranges (default ``"lo-hi"``).
    """
    from . import tasks as _tasks

    names = list(names) if names is not None else [f"{lo}-{hi}" for lo, hi in bins]
    rows = []
    for name in tasks:
        task = _tasks.get(name)
        for split, (lo, hi) in zip(names, bins, strict=True):
            refs = {"ceiling": task.accuracy_ceiling(lo, hi), **task.baselines(lo, hi)}
            for ref, r in refs.items():
                rows.append({"task": name, "split": split, "lo": lo, "hi": hi, "reference": ref,
                             "accuracy": r.accuracy, "cross_entropy": r.cross_entropy,
                             "exact": r.exact})
    return pd.DataFrame(rows)


# ---- drawing --------------------------------------------------------------
def accuracy_vs_length(ax, frame: pd.DataFrame, x: str = "length", y: str = "accuracy",
                       models: Sequence[str] | None = None, dodge: float = 0.0, **line_kw):
    """One line per (model, freeze) of ``frame`` on ``ax``: colour = model, marker = mode.

    ``frame`` needs columns ``model``, ``freeze``, ``x`` and ``y``; rows are
    sorted by ``x`` within each line. ``dodge`` shifts model ``i`` of ``n``
    sideways by the factor ``exp(dodge * (i - (n - 1) / 2))`` so that equal
    values stay visible on a log axis. Returns ``ax``.
    """
    order = list(models) if models is not None else [m for m in FORMAL_MODELS + PTB_MODELS if m in set(frame["model"])]
    for i, model in enumerate(order):
        shift = math.exp(dodge * (i - (len(order) - 1) / 2))
        for mode in MODES:
            part = frame[(frame["model"] == model) & (frame["freeze"] == mode)].sort_values(x)
            if part.empty:
                continue
            kw = {"color": color(model), "markersize": 5, "linewidth": 1.3, **mode_style(mode), **line_kw}
            ax.plot(part[x] * shift, part[y], label=f"{model} / {mode}", **kw)
    return ax


def reference_lines(ax, task: str, bins: Sequence[tuple[int, int]],
                    references: Sequence[str] = REFERENCES, refs: pd.DataFrame | None = None,
                    names: Sequence[str] | None = None):
    """Draw the ceiling and baselines of ``task`` as a step over each length range.

    Each range ``(lo, hi)`` gets a horizontal segment from ``lo`` to ``hi`` at
    the reference value of that range; a ceiling that is only an upper bound
    is drawn thinner and semi-transparent. ``refs``: the values to draw (columns
    task, split, reference, accuracy, exact), as the records store them
    (:func:`marnn.report.references_long`, which the tables read too), the ranges
    named by ``names`` (default ``"lo-hi"``); without it they are computed from the
    task (:func:`reference_frame`: the paper's bins, which no record holds).
    Returns the reference frame used.
    """
    names = list(names) if names is not None else [f"{lo}-{hi}" for lo, hi in bins]
    if refs is None:
        refs = reference_frame([task], bins, names)
    else:
        where = dict(zip(names, bins, strict=True))
        refs = refs[(refs["task"] == task) & refs["split"].isin(where)]
        refs = refs.assign(lo=[where[s][0] for s in refs["split"]], hi=[where[s][1] for s in refs["split"]])
    for ref in references:
        style = dict(REFERENCE_STYLE[ref])
        for row in refs[refs["reference"] == ref].itertuples():
            kw = dict(style)
            if not row.exact:
                kw.update(UPPER_BOUND_STYLE)
            ax.hlines(row.accuracy, row.lo, row.hi, zorder=1, **kw)
    return refs


def legend_handles(models: Sequence[str] = FORMAL_MODELS, modes: Sequence[str] = MODES,
                   references: Sequence[str] = REFERENCES, upper_bound: bool = True) -> dict[str, Artist]:
    """Legend entries (label -> artist) for models, freeze modes and reference lines.

    ``upper_bound`` adds the style of a ceiling that is only an upper bound.
    """
    from matplotlib.lines import Line2D

    handles: dict[str, Artist] = {}
    for m in models:
        handles[m] = Line2D([], [], color=color(m), linewidth=2)
    for mode in modes:
        style = mode_style(mode)
        handles[MODE_LABELS[mode]] = Line2D([], [], color="0.2", markersize=6, **style)
    for ref in references:
        handles[ref] = Line2D([], [], **REFERENCE_STYLE[ref])
        if ref == "ceiling" and upper_bound:
            handles["ceiling (upper bound)"] = Line2D([], [], **{**REFERENCE_STYLE[ref], **UPPER_BOUND_STYLE})
    return handles


# ---- result pages (marnn.report) ----------------------------------------------------
def restart_strip(ax, spread_points: pd.DataFrame, refs: pd.DataFrame | None = None,
                  models: Sequence[str] = FORMAL_MODELS, y: str = "value", jitter: float = 0.12):
    """Every restart of every model as a dot (x = model), its best restart as a large ring.

    ``spread_points``: one row per run with columns ``model``, ``best`` and ``y``;
    ``refs``: optional rows with ``reference`` and ``accuracy`` drawn as horizontal
    lines across the panel (ceiling and baselines of one task and bin). Returns ``ax``.
    """
    import numpy as np

    models = [m for m in models if m in set(spread_points["model"])]
    for i, model in enumerate(models):
        part = spread_points[spread_points["model"] == model].sort_values("seed" if "seed" in spread_points else y)
        offsets = np.linspace(-jitter, jitter, len(part)) if len(part) > 1 else np.zeros(1)
        ax.scatter(i + offsets, part[y], s=14, color=color(model), alpha=0.6, zorder=3, linewidths=0)
        best = part[part["best"]]
        ax.scatter([i] * len(best), best[y], s=70, facecolors="none", edgecolors=color(model), linewidths=1.6,
                   zorder=4)
    if refs is not None:
        for row in refs.itertuples():
            ax.axhline(row.accuracy, zorder=1, **REFERENCE_STYLE[row.reference])
    ax.set_xticks(range(len(models)), labels=models, rotation=45, ha="right", fontsize="small")
    ax.set_xlim(-0.6, len(models) - 0.4)
    return ax


def length_band(ax, curves: pd.DataFrame, model: str, mode: str, alpha: float = 0.12):
    """Best restart of (model, mode) against length as a line, the min-max over its restarts as a band.

    ``curves``: :func:`marnn.report.length_curves` rows. Returns ``ax``.
    """
    part = curves[(curves["model"] == model) & (curves["freeze"] == mode) & ~curves["diverged"].astype(bool)]
    if part.empty:
        return ax
    band = part.groupby("length")["value"].agg(["min", "max"]).sort_index()
    ax.fill_between(band.index, band["min"], band["max"], color=color(model), alpha=alpha, linewidth=0, zorder=2)
    best = part[part["best"]].sort_values("length")
    kw = {"color": color(model), "markersize": 3.5, "linewidth": 1.3, **mode_style(mode)}
    ax.plot(best["length"], best["value"], label=f"{model} / {mode}", zorder=3, **kw)
    return ax


def paired_bars(ax, table: pd.DataFrame, colors: Sequence[str] | None = None, width: float = 0.8,
                hatches: Sequence[str] | None = None, kind: str = "bar", markers: Sequence[str] | None = None):
    """Grouped bars: one group per row of ``table``, one bar per column. Returns the bar containers.

    ``kind="dot"`` draws one marker per value at the same places instead (use it on a log axis,
    where a bar's length means nothing); ``markers`` default to the freeze modes' markers when
    the columns are modes, else circles. Returns the marker lines then.
    """
    import numpy as np

    if kind not in ("bar", "dot"):
        raise ValueError(f"unknown kind {kind!r}; valid: bar, dot")
    n = len(table.columns)
    x = np.arange(len(table))
    w = width / max(n, 1)
    bars = []
    if kind == "dot":
        for j, col in enumerate(table.columns):
            marker = markers[j] if markers is not None else MODE_STYLE.get(str(col), {}).get("marker", "o")
            kw = {"color": colors[j]} if colors is not None else {}
            line, = ax.plot(x - width / 2 + (j + 0.5) * w, table[col].to_numpy(dtype=float), marker=marker,
                            linestyle="", markersize=7, label=str(col), zorder=3, **kw)
            bars.append(line)
        ax.set_xticks(x, labels=[str(i) for i in table.index])
        return bars
    for j, col in enumerate(table.columns):
        kw = {}
        if colors is not None:
            kw["color"] = colors[j]
        if hatches is not None:
            kw["hatch"] = hatches[j]
        bars.append(ax.bar(x - width / 2 + (j + 0.5) * w, table[col].to_numpy(dtype=float), w, label=str(col),
                           edgecolor="white", **kw))
    ax.set_xticks(x, labels=[str(i) for i in table.index])
    return bars


def _panel_grid(n: int, ncols: int, width: float = 4.2, height: float = 2.6):
    import matplotlib.pyplot as plt

    nrows = max(1, math.ceil((n + 1) / ncols))  # one spare panel for the legend
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, list(axes.flat)


def restart_grid(points: pd.DataFrame, refs: pd.DataFrame, split: str, tasks: Sequence[str],
                 models: Sequence[str] = FORMAL_MODELS, ncols: int = 4, ylabel: str = "accuracy"):
    """One :func:`restart_strip` panel per task (accuracy of every restart on ``split``), legend last.

    ``points``: one row per run (task, model, seed, best, value); ``refs``:
    :func:`marnn.report.references_long`. Returns the figure.
    """
    from matplotlib.lines import Line2D

    fig, axes = _panel_grid(len(tasks), ncols, width=3.2, height=2.7)
    for ax, task in zip(axes, tasks, strict=False):  # the grid has spare panels
        r = refs[(refs["task"] == task) & (refs["split"] == split)]
        restart_strip(ax, points[points["task"] == task], r, models=models)
        ax.set_title(task, fontsize="small")
        ax.set_ylabel(ylabel if ax in axes[::ncols] else "")
    for ax in axes[len(tasks):]:
        ax.axis("off")
    handles: dict[str, Artist] = {"one restart": Line2D([], [], marker="o", linestyle="", color="0.4", markersize=4),
               "best restart": Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.2",
                                      markersize=8)}
    handles.update({k: v for k, v in legend_handles(models=(), modes=(), upper_bound=False).items()})
    axes[-1].legend(handles.values(), handles.keys(), loc="center", fontsize="small")
    fig.tight_layout()
    return fig


def length_grid(curves: pd.DataFrame, top: dict[str, list[str]], modes: Sequence[str],
                bins: Sequence[tuple[int, int]], ncols: int = 2, refs: pd.DataFrame | None = None,
                names: Sequence[str] | None = None):
    """Accuracy against string length, one panel per task, for the models ``top[task]`` in ``modes``.

    Lines: best restart (colour = model, marker and dash = mode); bands: min-max
    over restarts; steps: ceiling and baselines of each test bin (``refs`` and
    ``names``: as :func:`reference_lines`). Returns the figure.
    """
    fig, axes = _panel_grid(len(top), ncols)
    used: list[str] = []
    for ax, (task, models) in zip(axes, top.items(), strict=False):  # the grid has spare panels
        reference_lines(ax, task, bins, refs=refs, names=names)
        for model in models:
            for mode in modes:
                length_band(ax, curves[curves["task"] == task], model, mode)
            used += [m for m in [model] if m not in used]
        ax.set_title(f"{task}: " + ", ".join(models), fontsize="small")
        ax.set_xlim(bins[0][0] - 1, bins[-1][1] + 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("string length")
        ax.set_ylabel("accuracy")
    for ax in axes[len(top):]:
        ax.axis("off")
    order = [m for m in FORMAL_MODELS + PTB_MODELS if m in used]
    handles = legend_handles(models=order, modes=modes)
    axes[-1].legend(handles.values(), handles.keys(), loc="center", fontsize="small", ncol=2)
    fig.tight_layout()
    return fig


# ---- the landing page ---------------------------------------------------------------
def baseline_panel(ax, best: pd.DataFrame, refs: pd.DataFrame, split: str, tasks: Sequence[str],
                   spread: pd.DataFrame | None = None, paper: bool = False, modes: Sequence[str] = MODES):
    """Best accuracy per language and freeze mode on ``split`` against what needs no memory.

    Grey band: from 0 to the best trivial predictor of the language on that bin; black tick:
    the accuracy ceiling. One marker per mode (colour and shape = mode), hollow for the paper's
    numbers; ``spread`` (columns task, freeze, model, min, max: ``report.restart_spread``) draws
    the range over the restarts of the model shown. Returns ``ax``.
    """
    offsets = dict(zip(modes, [(-0.27 + 0.54 * i / max(1, len(modes) - 1)) for i in range(len(modes))], strict=True))
    part = best[best["split"] == split]
    r = refs[refs["split"] == split]
    for i, task in enumerate(tasks):
        base = r[(r["task"] == task) & (r["reference"] != "ceiling")]["accuracy"]
        if len(base):
            ax.barh(i, float(base.max()), height=0.8, color="0.86", zorder=1, linewidth=0)
        ceil = r[(r["task"] == task) & (r["reference"] == "ceiling")]["accuracy"]
        if len(ceil):
            ax.plot([float(ceil.max())] * 2, [i - 0.4, i + 0.4], color="black", linewidth=1.8, zorder=2)
        for mode in modes:
            row = part[(part["task"] == task) & (part["freeze"] == mode)]
            if row.empty:
                continue
            x, y = float(row["value"].iloc[0]), i + offsets[mode]
            kw = {"marker": mode_style(mode)["marker"], "color": MODE_COLORS[mode], "linestyle": "",
                  "markersize": 7, "zorder": 4}
            if paper:
                kw.update(PAPER_STYLE)
            if spread is not None and not paper:
                s = spread[(spread["task"] == task) & (spread["freeze"] == mode)
                           & (spread["model"] == row["model"].iloc[0])]
                if len(s) and pd.notna(s["min"].iloc[0]):
                    ax.plot([float(s["min"].iloc[0]), float(s["max"].iloc[0])], [y, y],
                            color=MODE_COLORS[mode], linewidth=1.4, zorder=3)
            ax.plot([x], [y], **kw)
    ax.set_yticks(range(len(tasks)), labels=list(tasks))
    ax.set_ylim(len(tasks) - 0.5, -0.5)
    ax.set_xlim(0, 1.02)
    ax.grid(axis="y", visible=False)
    return ax


def findings_figure(paper_best: pd.DataFrame, paper_refs: pd.DataFrame, paper_split: str, paper_title: str,
                    ours_best: pd.DataFrame, ours_refs: pd.DataFrame, ours_split: str, ours_title: str,
                    tasks: Sequence[str], ours_spread: pd.DataFrame | None = None):
    """Two :func:`baseline_panel` panels side by side (the paper's longest bin, ours), legend below."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 0.55 * len(tasks) + 2.3), sharey=True)
    baseline_panel(axes[0], paper_best, paper_refs, paper_split, tasks, paper=True)
    baseline_panel(axes[1], ours_best, ours_refs, ours_split, tasks, spread=ours_spread)
    axes[0].set_title(paper_title)
    axes[1].set_title(ours_title)
    for ax in axes:
        ax.set_xlabel("best accuracy")
    handles: list[Artist] = [Line2D([], [], marker=mode_style(m)["marker"], color=MODE_COLORS[m], linestyle="",
                      markersize=7, label=f"mode {m}") for m in MODES]
    handles += [Line2D([], [], marker="o", color="0.3", linestyle="", markersize=7, label="paper",
                       **PAPER_STYLE),
                Line2D([], [], marker="o", color="0.3", linestyle="-", markersize=7, label="ours, range of restarts"),
                Patch(color="0.86", label="reached with no memory (best trivial predictor)"),
                Line2D([], [], color="black", linewidth=1.8, label="ceiling (best possible)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, 0.0), fontsize=9.5,
               columnspacing=1.0, handletextpad=0.4)
    fig.tight_layout(rect=(0, 1.0 / (0.55 * len(tasks) + 2.3), 1, 1))
    return fig


# ---- learning curves and stopping epochs (marnn.curves) ----------------------------------------------
STATUS_COLORS: dict[str, str] = {"early-stop": OKABE_ITO["green"], "max-epochs": OKABE_ITO["blue"],
                                 "pruned": OKABE_ITO["orange"], "diverged": OKABE_ITO["vermillion"]}
STATUS_LABELS: dict[str, str] = {"early-stop": "early stop", "max-epochs": "at the epoch cap",
                                 "pruned": "pruned (lr search)", "diverged": "diverged"}


def ptb_curve_grid(curves: pd.DataFrame, models: Sequence[str] | None = None, modes: Sequence[str] = MODES,
                   ncols: int = 3):
    """Validation perplexity against epoch, one panel per PTB model, legend last.

    ``curves``: :func:`marnn.curves.ptb_curves`. One line per run, colour, marker
    and dash by freeze mode; the best restart of each mode thick, the other
    restarts thin; a ring marks the epoch whose weights each best restart kept.
    Logarithmic perplexity axis. Returns the figure.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    present = list(dict.fromkeys(curves["model"]))
    models = [m for m in (models or present) if m in present]
    fig, axes = _panel_grid(len(models), ncols, width=3.4, height=2.8)
    for ax, model in zip(axes, models, strict=False):  # the grid has spare panels
        part = curves[curves["model"] == model]
        for mode in modes:
            for _, run in part[part["freeze"] == mode].groupby("key", sort=False):
                run = run.sort_values("epoch")
                best = bool(run["best"].iloc[0])
                ax.plot(run["epoch"], run["valid_perplexity"], color=MODE_COLORS[mode], markersize=4 if best else 2.5,
                        linewidth=1.6 if best else 0.8, alpha=1.0 if best else 0.45, zorder=3 if best else 2,
                        **mode_style(mode))
                kept = run[run["selected"]]
                if best and len(kept):
                    ax.plot(kept["epoch"], kept["valid_perplexity"], marker="o", markersize=9, linestyle="",
                            markerfacecolor="none", markeredgecolor=MODE_COLORS[mode], markeredgewidth=1.3, zorder=4)
        _log_ticks(ax, part["valid_perplexity"])
        ax.set_title(model, fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation perplexity" if ax in axes[::ncols] else "")
        last = int(part["epoch"].max()) if len(part) else 1
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for ax in axes[len(models):]:
        ax.axis("off")
    handles: dict[str, Artist] = {MODE_LABELS[m]: Line2D([], [], color=MODE_COLORS[m], markersize=5, linewidth=1.6,
                                                         **mode_style(m)) for m in modes}
    handles["best restart (thick)"] = Line2D([], [], color="0.3", linewidth=1.6)
    handles["other restarts"] = Line2D([], [], color="0.3", linewidth=0.8, alpha=0.45)
    handles["epoch kept (best validation)"] = Line2D([], [], marker="o", linestyle="", markersize=9,
                                                     markerfacecolor="none", markeredgecolor="0.3")
    axes[-1].legend(handles.values(), handles.keys(), loc="center", fontsize="small")
    fig.tight_layout()
    return fig


def _log_ticks(ax, values: pd.Series) -> None:
    """A logarithmic y axis labelled with plain numbers: 1-2-5 steps over a decade or more,
    finer steps over a narrower range (so a panel always shows a few labels)."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    narrow = len(finite) > 0 and float(finite.max()) < 4 * float(finite.min())
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.2, 1.5, 2, 3, 4, 5, 7) if narrow else (1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def stop_epoch_panel(ax, stops: pd.DataFrame, models: Sequence[str], jitter: float = 0.28):
    """Where the runs of one scale and kind stopped: one row per model, one dot per run at
    its last epoch (colour: how it ended), a black bar at the model's epoch cap and, at
    the right, the number of runs that ended each way. Returns ``ax``."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    for i, model in enumerate(models):
        part = stops[stops["model"] == model]
        offsets = np.linspace(-jitter, jitter, len(part)) if len(part) > 1 else np.zeros(1)
        ax.scatter(part["epochs"].to_numpy(dtype=float), i + offsets, s=24 if len(part) <= 20 else 10, linewidths=0,
                   alpha=0.75, zorder=3, c=[STATUS_COLORS.get(s, "0.5") for s in part["status"]])
        for cap in sorted(set(part["cap"].dropna())):
            ax.plot([cap, cap], [i - 0.45, i + 0.45], color="black", linewidth=1.2, zorder=2)
        counts = part["status"].value_counts()
        text = " / ".join(str(int(counts.get(s, 0))) for s in STATUS_COLORS)
        ax.annotate(text, xy=(1.01, i), xycoords=("axes fraction", "data"), va="center", fontsize="small")
    ax.set_yticks(range(len(models)), labels=list(models), fontsize="small")
    ax.set_ylim(len(models) - 0.5, -0.5)
    last = max([1.0, *stops["epochs"].dropna().astype(float), *stops["cap"].dropna().astype(float)])
    ax.set_xlim(0.5, last + 0.5)
    ax.annotate("early / cap / pruned / div.", xy=(1.01, 1.0), xycoords="axes fraction", va="bottom", fontsize="small",
                color="0.35")
    ax.set_xlabel("epoch at which the run stopped")
    ax.grid(axis="y", visible=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return ax


def stop_epoch_grid(stops: pd.DataFrame, panels: Sequence[tuple[str, str]]):
    """One :func:`stop_epoch_panel` per (scale, phase) of ``panels``, stacked, legend on top.

    ``stops``: :func:`marnn.curves.stop_epochs`; ``panels``: :func:`marnn.curves.panels`.
    Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [list(dict.fromkeys(stops[(stops["scale"] == s) & (stops["phase"] == p)]["model"])) for s, p in panels]
    heights = [0.32 * len(r) + 0.9 for r in rows]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.2, sum(heights) + 1.1), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (scale, phase), models in zip(axes[:, 0], panels, rows, strict=True):
        stop_epoch_panel(ax, stops[(stops["scale"] == scale) & (stops["phase"] == phase)], models)
        ax.set_title(f"{scale}: {phase}", fontsize="small", loc="left")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, markersize=6, label=STATUS_LABELS[s])
               for s, c in STATUS_COLORS.items()]
    handles.append(Line2D([], [], color="black", linewidth=1.6, label="epoch cap"))
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize="small", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 0.88, 1 - 0.7 / (sum(heights) + 1.1)))
    return fig


# ---- the stability chapter (notebooks/stability.ipynb; marnn.analysis.stability computes) ----
def plot_mode_profiles(lengths: pd.DataFrame, train: tuple[int, int], width: int = 5):
    """rho against length per freeze mode (median line, interquartile band), chance and training range marked."""
    import matplotlib.pyplot as plt

    from .analysis import stability as st

    prof = st.mode_profile(lengths, width)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.axvspan(train[0], train[1], color="0.92", zorder=0, label="training lengths")
    ax.axhline(1.0, **REFERENCE_STYLE["chance"], label="chance (uniform guessing)")
    ax.axhline(0.0, **REFERENCE_STYLE["ceiling"], label="lower bound")
    shades = {"none": "0.1", "m": "0.35", "c": "0.55", "cm": "0.7"}
    for mode in MODES:
        p = prof[prof["freeze"] == mode]
        if p.empty:
            continue
        ax.fill_between(p["group"], p["q1"], p["q3"], color=shades[mode], alpha=0.15, linewidth=0)
        ax.plot(p["group"], p["median"], color=shades[mode], markersize=4, label=MODE_LABELS[mode],
                **mode_style(mode))
    ax.set_xlabel(f"string length (groups of {width})")
    ax.set_ylabel("excess loss / chance's excess (rho)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def plot_example(records: Sequence[dict], table: pd.DataFrame, task: str):
    """One panel per freeze mode: the best restart of every model on ``task``, per-symbol excess against
    length (markers) and its fitted ``(a n^b + c) / (n + 1)`` (line); chance's excess in grey."""
    import matplotlib.pyplot as plt

    from .analysis import stability as st

    recs = [r for r in records if r["config"]["task"] == task]
    if not recs:
        raise ValueError(f"no record of task {task!r}")
    best = st.best_keys(recs)
    by_key = {st.run_key(r): r for r in recs}
    fits = table.set_index("key")
    modes = [m for m in MODES if any(k[2] == m for k in best)]
    fig, axes = plt.subplots(1, len(modes), figsize=(3.3 * len(modes), 3.2), sharey=True, squeeze=False)
    lo, hi = st.train_lengths(recs[0])
    for ax, mode in zip(axes[0], modes, strict=True):
        ax.axvspan(lo, hi, color="0.92", zorder=0)
        for model in FORMAL_MODELS:
            key = best.get((task, model, mode))
            if key is None:
                continue
            p = st.profile(by_key[key])
            f = fits.loc[key]
            ax.plot(p["length"], p["ce_diff"], linestyle="", marker=MODE_STYLE[mode]["marker"],
                    markersize=3, color=color(model), alpha=0.6)
            n = np.linspace(p["length"].min(), p["length"].max(), 200)
            ax.plot(n, st.growth_curve(f, n), color=color(model), linewidth=1.3,
                    label=f"{model} (b={f['b']:.3g})")
        ax.plot(p["length"], p["chance_ce"] - p["lower_bound"], **REFERENCE_STYLE["chance"])
        ax.set_title(MODE_LABELS[mode], fontsize="small")
        ax.set_xlabel("string length")
        ax.legend(fontsize="x-small", loc="upper left")
    axes[0][0].set_ylabel("excess cross-entropy (nats/symbol)")
    fig.suptitle(f"{task}: best restart per model and mode, with the fit a n^b + c", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_growth(table: pd.DataFrame):
    """Growth exponents of every run by mode (dot colour = model): over the test range and over the onset."""
    import matplotlib.pyplot as plt

    from .analysis import stability as st

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    models = [m for m in FORMAL_MODELS if m in set(table["model"])]
    modes = [m for m in MODES if m in set(table["freeze"])]
    for ax, col, title in zip(axes, ["b", "b_onset"], ["whole test range", "onset [lo, 2 hi]"], strict=True):
        for i, mode in enumerate(modes):
            for j, model in enumerate(models):
                v = table[(table["freeze"] == mode) & (table["model"] == model)][col].dropna()
                x = i + (j - (len(models) - 1) / 2) * 0.13
                ax.scatter(np.full(len(v), x), v, s=10, alpha=0.6, color=color(model), linewidths=0)
        for y, style in ((1 - st.GROWTH_TOL, ":"), (1.0, "-"), (1 + st.GROWTH_TOL, ":")):
            ax.axhline(y, color="0.4", linestyle=style, linewidth=1)
        ax.set_xticks(range(len(modes)), labels=modes)
        ax.set_xlabel("freeze mode")
        ax.set_title(title, fontsize="small")
    axes[0].set_ylabel("growth exponent b")
    handles = legend_handles(models=models, modes=(), references=())
    axes[1].legend(handles.values(), handles.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
