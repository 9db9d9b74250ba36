"""Which cells a page needs at a scale, how many of them the store holds, and how a missing one shows.

A *cell* is one entry of a result table with all the restarts of its scale: a
formal-language (task, model, freeze mode) or a Penn Treebank (model, freeze
mode, embedding group). It is *stored* when every restart has a record (and,
for a chapter that analyses weights, its kept weights).

At a scale whose runs the book does not train (every scale but those of
``marnn.book.TRAINING_SCALES``; ``$MARNN_PAGES_READ_ONLY``), a page shows what
is stored and marks the rest :data:`NOT_TRAINED`; a verdict that needs a
missing cell is :data:`CANNOT_TELL`. The page states at its top how many of its
cells the store holds (:func:`page_note`, added by ``marnn.book`` to the
executed copy).

At ``paper-2core`` the PTB cells are those of the campaign
(:func:`marnn.campaign.planned_ptb`): Table 3's five models (the VRNS in its
published layout) in every mode, ``vrns-3-3-5`` in mode none, and the
embedding-group ablation in modes m and c only. In modes none and cm the
embedding's group changes nothing (nothing is frozen, or the controller and
the memory both are), so the ablation shows the controller-group records there
(:func:`ablation_results`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd

from . import campaign, report, store
from .registry import FORMAL_MODELS, MEMORY_MODELS, MODES, PTB_MODELS
from .scales import get_scale

NOT_TRAINED = "not trained yet"
CANNOT_TELL = "cannot tell (not trained yet)"
SHARED_MODES = ("none", "cm")  # modes in which the embedding's group changes nothing
ABLATION_MODEL = "lstm-256"
STOP = "marnn-stop"  # metadata of the output after which a page has nothing to show (:func:`require`)

Root = str | os.PathLike | None


# ---- cells ------------------------------------------------------------------------------------
def _formal_stored(configs: list[dict], root: Root, weights: bool) -> bool:
    if store.missing(configs, root):
        return False
    if not weights:
        return True
    return all(store.weights_path(c, root).exists() for c in configs)


def formal_cells(scale: str, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                 modes: Iterable[str] | None = None, root: Root = None, weights: bool = False) -> pd.DataFrame:
    """One row per (task, model, freeze) with ``restarts`` and ``stored``."""
    rows = []
    for task in tasks or report.task_names():
        for model in models or FORMAL_MODELS:
            for mode in modes or MODES:
                configs = report.formal_configs(scale, [task], [model], [mode])
                rows.append({"kind": "formal", "task": task, "model": model, "freeze": mode,
                             "restarts": len(configs), "stored": _formal_stored(configs, root, weights)})
    return pd.DataFrame(rows, columns=["kind", "task", "model", "freeze", "restarts", "stored"])


def stability_cells(scale: str, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                    perturb_tasks: Iterable[str] = (), perturb_models: Iterable[str] = (),
                    root: Root = None) -> pd.DataFrame:
    """The stability chapter's cells: every record of ``tasks`` x ``models``, and for the groups it
    perturbs (``perturb_tasks`` x ``perturb_models``) their kept weights too."""
    cells = formal_cells(scale, tasks, models, root=root)
    weighed = formal_cells(scale, list(perturb_tasks), list(perturb_models), root=root, weights=True) \
        if list(perturb_tasks) and list(perturb_models) else cells.iloc[:0]
    keys = ["task", "model", "freeze"]
    merged = cells.merge(weighed[keys + ["stored"]].rename(columns={"stored": "weights"}), on=keys, how="left")
    merged["stored"] = merged["stored"] & merged["weights"].fillna(True).astype(bool)
    return merged.drop(columns=["weights"])


def ptb_cells(scale: str, models: Iterable[str] | None = None, modes: Iterable[str] | None = None,
              embedding_groups: Iterable[str] = ("controller",), root: Root = None) -> pd.DataFrame:
    """One row per (model, freeze, embedding group) that ``scale`` trains, with ``restarts`` and ``stored``
    (False while the scale's learning-rate search is not stored: the cell's seed is not known yet)."""
    from . import grid

    planned = campaign.planned_ptb(scale)
    restarts = get_scale(scale).ptb_restarts
    rows = []
    for group in embedding_groups:
        for model in models or campaign.ptb_models(scale):
            for mode in modes or MODES:
                if planned is not None and (model, mode, group) not in planned:
                    continue
                configs = grid.ptb_grid(scale, [model], [mode], embedding_group=group, root=root)
                rows.append({"kind": "ptb", "model": model, "freeze": mode, "embedding_group": group,
                             "restarts": restarts, "stored": bool(configs) and not store.missing(configs, root)})
    return pd.DataFrame(rows, columns=["kind", "model", "freeze", "embedding_group", "restarts", "stored"])


def ptb_page_cells(scale: str, root: Root = None, ablation_models: Sequence[str] = (ABLATION_MODEL,)) -> pd.DataFrame:
    """Table 3 and Figure 1: every mode with the embedding in the controller group, and the ablation's
    cells with it in the memory group (those this scale trains)."""
    main = ptb_cells(scale, root=root)
    ablation = ptb_cells(scale, list(ablation_models), embedding_groups=["memory"], root=root)
    return pd.concat([main, ablation], ignore_index=True)


def page_cells(name: str, scale: str, root: Root = None) -> pd.DataFrame:
    """The cells page ``name`` needs at ``scale`` with its default parameters (empty for a page that
    needs no trained run)."""
    formal = lambda **kw: formal_cells(scale, root=root, **kw)  # noqa: E731
    mode_pages = {"table4": "none", "table5": "c", "table6": "m", "table7": "cm"}
    if name in mode_pages:
        return formal(modes=[mode_pages[name]])
    if name == "fig2":
        return formal(modes=["none", "m"])
    if name == "fig3":
        return formal(models=list(MEMORY_MODELS), modes=["none", "m"])
    if name in ("table1", "table2"):
        return formal()
    if name == "stability":  # the notebook's defaults
        return stability_cells(scale, perturb_tasks=["marked-reverse-and-copy", "marked-copy"],
                               perturb_models=["lstm", "jm-10", "jm-hidden"], root=root)
    if name in ("table3", "fig1"):
        return ptb_page_cells(scale, root)
    if name in ("findings", "audit", "provenance"):
        return pd.concat([formal(), ptb_page_cells(scale, root)], ignore_index=True)
    if name == "memory":
        return formal(tasks=["marked-reverse-and-copy", "marked-copy"],
                      models=["lstm", "jm-10", "jm-3.3.3", "jm-hidden"], weights=True)
    if name == "precision":
        from .analysis.precision import SETTINGS

        return formal(tasks=["marked-reverse-and-copy"], models=list(SETTINGS[get_scale(scale).name].trained_models),
                      weights=True)
    return pd.DataFrame(columns=["kind", "stored"])


def counts(cells: pd.DataFrame) -> tuple[int, int]:
    """(stored, needed)."""
    return int(cells["stored"].sum()) if len(cells) else 0, len(cells)


def count_text(cells: pd.DataFrame) -> str:
    """'3 of 140 cells stored'."""
    n, m = counts(cells)
    return f"{n} of {m} cells stored"


def page_note(name: str, scale: str, root: Root = None) -> str:
    """A MyST admonition for the top of page ``name`` built at a scale the book does not train: how many
    of its cells the store holds and how the missing ones are shown (or that the page needs no run)."""
    cells = page_cells(name, scale, root)
    if not len(cells):
        return "\n".join([":::{admonition} No trained run needed", ":class: note marnn-coverage", "",
                          "Everything on this page is computed from the languages and the paper's numbers.", ":::"])
    n, m = counts(cells)
    sc = get_scale(scale).name
    if n == m:
        return "\n".join([f":::{{admonition}} {count_text(cells)}", ":class: note marnn-coverage", "",
                          f"Every cell this page needs at the `{sc}` scale is in the result store.", ":::"])
    kinds = [{"formal": "a (language, model, mode)", "ptb": "a Penn Treebank (model, mode, embedding group)"}[k]
             for k in dict.fromkeys(cells["kind"])]
    body = (f"The `{sc}` runs are still training and this page trains nothing: it shows the {n} stored "
            f"cell{'s' * (n != 1)}, marks the other {m - n} *{NOT_TRAINED}*, and a verdict that needs a missing "
            f"cell says *{CANNOT_TELL}*. A cell is " + " or ".join(kinds) + " with all its restarts.")
    return "\n".join([f":::{{admonition}} {count_text(cells)}", ":class: warning marnn-coverage", "", body, ":::"])


# ---- showing what is missing ------------------------------------------------------------------
def missing_table(cells: pd.DataFrame, rows: str = "task",
                  columns: Sequence[str] = ("model", "freeze")) -> pd.DataFrame:
    """Stored / :data:`NOT_TRAINED` per cell: ``rows`` down, ``columns`` across."""
    shown = cells.assign(status=cells["stored"].map({True: "stored", False: NOT_TRAINED}))
    wide = shown.pivot_table(index=rows, columns=list(columns), values="status", aggfunc="first", sort=False)
    wide.columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in wide.columns]
    return wide.fillna("–")


def mark_rows(table: pd.DataFrame, wanted: Iterable[tuple]) -> pd.DataFrame:
    """``table`` (text cells) with a row of :data:`NOT_TRAINED` for every index in ``wanted`` it lacks,
    in the order of ``wanted`` (rows of ``table`` not in ``wanted`` follow)."""
    wanted = list(dict.fromkeys(wanted))
    absent = [w for w in wanted if w not in table.index]
    if not absent:
        return table
    extra = pd.DataFrame(NOT_TRAINED, index=pd.MultiIndex.from_tuples(absent, names=table.index.names)
                         if table.index.nlevels > 1 else pd.Index(absent, name=table.index.name),
                         columns=table.columns)
    out = pd.concat([table, extra])
    rest = [i for i in out.index if i not in set(wanted)]
    return out.loc[[w for w in wanted if w in out.index] + rest]


def mark_ptb(table: pd.DataFrame, cells: pd.DataFrame, number) -> pd.DataFrame:
    """A model x mode table of numbers (``report.ptb_table``) as text (``number`` formats a value), with
    :data:`NOT_TRAINED` where a cell of ``cells`` (``embedding_group`` controller) is not stored; a mode
    the scale never trains for a model stays a dash. Unchanged when every cell is stored."""
    ctl = cells[cells["embedding_group"] == "controller"] if len(cells) else cells
    if not len(ctl) or ctl["stored"].all():
        return table
    models = list(dict.fromkeys(list(table.index) + list(ctl["model"])))
    models = [m for m in ptb_order() if m in models]
    modes = [m for m in MODES if m in set(table.columns) | set(ctl["freeze"])]
    out = pd.DataFrame("–", index=pd.Index(models, name="model"), columns=pd.Index(modes, name="freeze"))
    for r in ctl.itertuples():
        out.loc[r.model, r.freeze] = NOT_TRAINED
    for model in table.index:
        for mode in table.columns:
            v = table.loc[model, mode]
            if pd.notna(v):
                out.loc[model, mode] = number(v)
    return out


def ptb_order() -> list[str]:
    from .registry import PTB_VARIANTS

    return list(PTB_MODELS + PTB_VARIANTS)


# ---- the embedding-group ablation -------------------------------------------------------------
def ablation_results(scale: str, models: Sequence[str] = (ABLATION_MODEL,), restarts: int | None = None,
                     root: Root = None, on_failure: str = "raise") -> pd.DataFrame:
    """The ablation's runs (``report.ptb_results`` with the embedding in the controller and the memory
    group). Where ``scale`` does not train a memory-group cell of mode none or cm (it would repeat the
    controller group's run: in those modes the group changes nothing), that cell is the controller
    group's records, relabelled; ``.attrs["shared"]`` then says so in one sentence (else "")."""
    df = report.ptb_results(scale, models=list(models), restarts=restarts, embedding_groups=["controller", "memory"],
                            root=None if root is None else str(root), on_failure=on_failure)
    planned = campaign.planned_ptb(scale)
    shared = [] if planned is None else [(m, f) for m in models for f in SHARED_MODES
                                         if (m, f, "memory") not in planned]
    df.attrs["shared"] = ""
    if not shared:
        return df
    keep = pd.Series(False, index=df.index)
    for m, f in shared:
        keep |= (df["model"] == m) & (df["freeze"] == f) & (df["embedding_group"] == "controller")
    attrs = dict(df.attrs)
    parts = [df.copy(), df[keep].assign(embedding_group="memory")]
    for part in parts:
        part.attrs = {}  # concat compares the attrs, and a frame in them has no truth value
    out = pd.concat(parts, ignore_index=True)
    out.attrs.update(attrs)
    modes = " and ".join(f"`{f}`" for f in SHARED_MODES)
    out.attrs["shared"] = (f"At the `{get_scale(scale).name}` scale the memory-group cells of modes {modes} are "
                           "not trained: with nothing frozen, or with the controller and the memory both frozen, "
                           "the embedding's group changes nothing, so those cells show the controller-group runs.")
    return out


# ---- a chapter that cannot run without its models --------------------------------------------------
def require(cells: pd.DataFrame, what: str, need: str = "all") -> bool:
    """True when the page may go on: the store holds ``need`` ("all" or "any") of ``cells``, or the page
    may train what is missing. Otherwise shows why the rest of the page is empty, and (in IPython) every
    later cell of the notebook runs as a no-op: this page trains nothing and has nothing to show below."""
    n, m = counts(cells)
    if store.may_train() or (n == m if need == "all" else n > 0):
        return True
    from IPython.display import Markdown, display

    display(Markdown(f"**{NOT_TRAINED.capitalize()}.** {what} needs {'every one' if need == 'all' else 'one'} "
                     f"of its {m} cells at this scale and the store holds {n}; the rest of this page is left out "
                     f"until they are trained, and every verdict it would give is *{CANNOT_TELL}*."),
            metadata={STOP: True})  # marnn.book leaves the cells below out of the executed copy
    from .plotting import ipython_shell

    ip = ipython_shell()
    if ip is not None and _skip not in ip.input_transformers_post:
        ip.input_transformers_post.append(_skip)
    return False


def _skip(lines: list[str]) -> list[str]:
    """An IPython input transformer: the cell does nothing."""
    return ["pass\n"]


def missing_sentence(cells: pd.DataFrame) -> str:
    """'*Not trained yet* (not drawn): lstm-256 none, ...' for the cells of ``cells`` not stored; "" if none."""
    gone = cells[~cells["stored"].astype(bool)] if len(cells) else cells
    if not len(gone):
        return ""
    keys = [c for c in ("task", "model", "freeze", "embedding_group") if c in gone.columns]
    names = [" ".join(str(v) for v in row if pd.notna(v) and v != "controller")
             for row in gone[keys].itertuples(index=False)]
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"*{NOT_TRAINED.capitalize()}* (not drawn; {count_text(cells)}): {shown}."


def nothing_stored(cells: pd.DataFrame) -> str:
    """The paragraph a section shows in place of our results while none of its cells is stored."""
    return (f"**{NOT_TRAINED.capitalize()}.** None of the {len(cells)} cells of this section is stored at this "
            f"scale; this page trains nothing, so our side stays empty and every verdict on it is "
            f"*{CANNOT_TELL}*. The cells:")
