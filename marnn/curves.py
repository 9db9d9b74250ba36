"""Learning curves and stopping epochs, read from the records for the pages.

Every record keeps its run's learning curve (``curve``: one row per trained
epoch with the learning rate and the training and validation numbers, see
:mod:`marnn.store`) and how its training ended (``status``: ``"early-stop"``,
``"max-epochs"`` or ``"diverged"``; ``epochs``: the last epoch trained). The
Table 3 page draws the Penn Treebank curves (:func:`ptb_curves`,
:func:`marnn.plotting.ptb_curve_grid`); the provenance page shows where the
runs of every scale in the store stopped (:func:`stop_epochs`,
:func:`stop_summary`, :func:`marnn.plotting.stop_epoch_grid`). Nothing here
trains: runs without a record are left out.
"""
from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from . import store
from .config import RunConfig
from .scales import SCALES

STATUSES = ("early-stop", "max-epochs", "pruned", "diverged")
KIND_LABELS = {"formal": "formal languages", "ptb": "Penn Treebank"}
CURVE_COLUMNS = ["key", "model", "freeze", "embedding_group", "seed", "best", "status", "best_epoch", "epoch",
                 "lr", "train_perplexity", "valid_perplexity", "selected"]
STOP_COLUMNS = ["scale", "phase", "kind", "task", "model", "freeze", "embedding_group", "seed", "status", "epochs",
                "best_epoch", "cap"]


def ptb_curves(scale: str, models: Iterable[str] | None = None, restarts: int | None = None,
               embedding_groups: Iterable[str] = ("controller",), root: str | None = None) -> pd.DataFrame:
    """Validation (and training) perplexity against epoch of the stored PTB runs of the
    Table 3 grid (the runs of :func:`marnn.report.ptb_results` with the same arguments).

    One row per run and trained epoch; ``best``: the run is the best restart of
    its (model, mode, embedding group) cell (lowest validation cross-entropy,
    diverged runs excluded, as in the tables); ``selected``: the epoch whose
    weights the run kept (its best validation epoch).
    """
    from .report import order, ptb_configs

    records = [rec for c in ptb_configs(scale, models, None, restarts, embedding_groups)
               if (rec := store.load_record(c, root)) is not None]
    best = {rec["key"] for rec in store.best_records(records, ("model", "freeze", "embedding_group")).values()}
    rows = []
    for rec in records:
        c = rec["config"]
        for row in rec.get("curve", []):
            rows.append({"key": rec["key"], "model": c["model"], "freeze": c["freeze"],
                         "embedding_group": c["embedding_group"], "seed": c["seed"], "best": rec["key"] in best,
                         "status": rec["status"], "best_epoch": rec["best_epoch"], "epoch": row["epoch"],
                         "lr": row.get("lr"), "train_perplexity": _num(row.get("train_perplexity")),
                         "valid_perplexity": _num(row.get("valid_perplexity")),
                         "selected": row["epoch"] == rec["best_epoch"]})
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    return order(frame).reset_index(drop=True) if len(frame) else frame


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _cap(config: RunConfig) -> int:
    """The epoch cap the run trained under (its scale's, for its model)."""
    return config.scale.max_epochs if config.is_formal else config.scale.ptb_max_epochs


def _phases(root: str | None) -> dict[str, int]:
    """Config key -> phase number, for the runs of the ``paper-2core`` campaign (:mod:`marnn.campaign`)."""
    from . import campaign

    return {store.config_key(c): n for n in campaign.PHASES for c in campaign.runs(n, root)}


def _phase_label(kind: str, number: int | None) -> str:
    what = KIND_LABELS.get(kind, kind)
    return what if number is None else f"phase {number} ({what})"


def stop_epochs(root: str | None = None) -> pd.DataFrame:
    """One row per record in the store: where its training ended.

    ``phase``: the phase of the scale the run belongs to: for ``paper-2core``
    the phase of its campaign (:mod:`marnn.campaign`: ``"phase 1 (Penn
    Treebank)"`` ...), else its kind (``"formal languages"``, ``"Penn
    Treebank"``); ``epochs``: the last epoch trained; ``cap``: the epoch cap of
    its scale and model; ``status``: how it ended: ``early-stop``
    (``early_stop`` epochs without improvement; this can happen at the cap
    itself), ``max-epochs`` (trained to the cap), ``pruned`` (dropped by a
    learning-rate search) or ``diverged``. Rows: scales in the order of
    :mod:`marnn.scales`, then phases, then the paper's order of tasks, models
    and modes.
    """
    from .campaign import SCALE as CAMPAIGN
    from .report import order

    records = [rec for _, rec in store.iter_records(root)]
    phases = _phases(root) if any(r["config"]["scale"] == CAMPAIGN for r in records) else {}
    rows = []
    for rec in records:
        c = RunConfig.from_dict(rec["config"])
        number = phases.get(rec["key"]) if c.scale_name == CAMPAIGN else None
        rows.append({"scale": c.scale_name, "phase": _phase_label(c.kind, number),
                     "phase_rank": (number or 0, list(KIND_LABELS).index(c.kind) if c.kind in KIND_LABELS else 9),
                     "kind": c.kind, "task": c.corpus, "model": c.model, "freeze": c.freeze,
                     "embedding_group": c.embedding_group, "seed": c.seed, "status": rec["status"],
                     "epochs": int(rec["epochs"]), "best_epoch": rec.get("best_epoch"), "cap": _cap(c)})
    frame = pd.DataFrame(rows, columns=[*STOP_COLUMNS, "phase_rank"])
    if frame.empty:
        return frame.drop(columns="phase_rank")
    frame = order(frame)  # tasks, models, modes, seeds as in the paper; then scales as in marnn.scales, phases
    rank = {name: i for i, name in enumerate(SCALES)}
    frame["_scale"] = frame["scale"].map(lambda name: rank.get(name, len(rank)))
    frame = frame.sort_values(["_scale", "phase_rank"], kind="stable")
    return frame.drop(columns=["_scale", "phase_rank"]).reset_index(drop=True)


def stop_summary(stops: pd.DataFrame) -> pd.DataFrame:
    """Per scale, phase and model: runs, how many ended by each status, the epoch cap, and the
    median and range of the epochs at which the runs stopped."""
    cols = ["scale", "phase", "model", "runs", *STATUSES, "cap", "median stop", "first stop", "last stop"]
    if stops.empty:
        return pd.DataFrame(columns=cols)
    g = stops.groupby(["scale", "phase", "model"], sort=False)
    out = g.size().rename("runs").to_frame()
    for status in STATUSES:
        out[status] = g["status"].apply(lambda s, st=status: int((s == st).sum()))
    out["cap"] = g["cap"].agg(lambda s: "/".join(str(int(v)) for v in sorted(set(s.dropna()))) or "-")
    out["median stop"] = g["epochs"].median()
    out["first stop"] = g["epochs"].min()
    out["last stop"] = g["epochs"].max()
    return out.reset_index()[cols]


def panels(stops: pd.DataFrame) -> list[tuple[str, str]]:
    """The (scale, phase) pairs present, in the frame's order: one panel of the stop figure each."""
    return list(dict.fromkeys(zip(stops["scale"], stops["phase"], strict=True)))
