"""One look for every figure of the book: a fixed colour per model, a fixed
marker and line style per freeze mode, and the reference lines (accuracy
ceiling and trivial baselines) that every accuracy plot is read against.

Keeping the palette here means a model has the same colour in the chapter on
languages, in Figures 1-3 and in the Penn Treebank chapter.

>>> from marnn import plotting
>>> plotting.color("rns-3-3")
'#9467bd'
>>> plotting.MODE_STYLE["m"]["marker"]
's'
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

from .registry import lookup

# ---- palette --------------------------------------------------------------
# Formal-language models (PAPER.md, "Models"), then the Penn Treebank models.
# Grey and black are kept free for reference lines.
MODEL_COLORS: dict[str, str] = {
    "lstm": "#1f77b4",
    "jm-10": "#ff7f0e",
    "jm-3.3.3": "#2ca02c",
    "jm-hidden": "#d62728",
    "rns-3-3": "#9467bd",
    "lstm-256": "#17becf",
    "jm-hidden-247": "#e377c2",
    "jm-learned-22": "#bcbd22",
    "rns-4-5": "#8c564b",
    "vrns-3-3-5": "#393b79",
}
FORMAL_MODELS: tuple[str, ...] = ("lstm", "jm-10", "jm-3.3.3", "jm-hidden", "rns-3-3")
PTB_MODELS: tuple[str, ...] = ("lstm-256", "jm-hidden-247", "jm-learned-22", "rns-4-5", "vrns-3-3-5")

# Freeze modes (PAPER.md, "Freeze modes"): what stays at its random initial value.
MODES: tuple[str, ...] = ("none", "m", "c", "cm")
MODE_LABELS: dict[str, str] = {
    "none": "none (all trained)",
    "m": "m (memory frozen)",
    "c": "c (controller frozen)",
    "cm": "cm (both frozen)",
}
MODE_STYLE: dict[str, dict[str, object]] = {
    "none": {"marker": "o", "linestyle": "-"},
    "m": {"marker": "s", "linestyle": "--"},
    "c": {"marker": "^", "linestyle": "-."},
    "cm": {"marker": "X", "linestyle": ":"},
}

# Reference lines: the Bayes-optimal ceiling and three trivial predictors
# (marnn.tasks.Task.accuracy_ceiling / baselines).
REFERENCES: tuple[str, ...] = ("ceiling", "most-frequent", "repeat-previous", "chance")
REFERENCE_STYLE: dict[str, dict[str, object]] = {
    "ceiling": {"color": "black", "linestyle": "-", "linewidth": 1.6},
    "most-frequent": {"color": "0.45", "linestyle": "--", "linewidth": 1.2},
    "repeat-previous": {"color": "0.45", "linestyle": ":", "linewidth": 1.6},
    "chance": {"color": "0.7", "linestyle": "-.", "linewidth": 1.0},
}

UPPER_BOUND_STYLE: dict[str, object] = {"alpha": 0.5, "linewidth": 1.0}  # a ceiling that is a bound


def color(model: str) -> str:
    """The colour of ``model``; an unknown name lists the known ones."""
    return lookup("model", model, MODEL_COLORS)


def mode_style(mode: str) -> dict[str, object]:
    """Marker and line style of freeze mode ``mode``."""
    return dict(lookup("freeze mode", mode, MODE_STYLE))


def use_style() -> None:
    """The book's matplotlib / seaborn defaults (call once per notebook)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    mpl.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "axes.titlesize": "medium",
        "legend.frameon": False,
        # fixed metadata so re-executed notebooks give byte-identical images
        "svg.hashsalt": "marnn",
    })


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
        for split, (lo, hi) in zip(names, bins):
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
    order = list(models) if models is not None else [m for m in MODEL_COLORS if m in set(frame["model"])]
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
                    references: Sequence[str] = REFERENCES):
    """Draw the ceiling and baselines of ``task`` as a step over each length range.

    Each range ``(lo, hi)`` gets a horizontal segment from ``lo`` to ``hi`` at
    the reference value of that range; a ceiling that is only an upper bound
    is drawn thinner and semi-transparent. Returns the reference frame used.
    """
    refs = reference_frame([task], bins)
    for ref in references:
        style = dict(REFERENCE_STYLE[ref])
        for row in refs[refs["reference"] == ref].itertuples():
            kw = dict(style)
            if not row.exact:
                kw.update(UPPER_BOUND_STYLE)
            ax.hlines(row.accuracy, row.lo, row.hi, zorder=1, **kw)
    return refs


def legend_handles(models: Sequence[str] = FORMAL_MODELS, modes: Sequence[str] = MODES,
                   references: Sequence[str] = REFERENCES, upper_bound: bool = True) -> dict[str, object]:
    """Legend entries (label -> artist) for models, freeze modes and reference lines.

    ``upper_bound`` adds the style of a ceiling that is only an upper bound.
    """
    from matplotlib.lines import Line2D

    handles: dict[str, object] = {}
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
