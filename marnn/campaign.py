"""The ``paper-2core`` campaign: its four phases, what each has stored, and what it cost.

``scripts/paper_2core.py`` trains the phases; the provenance page and
``scripts/paper_2core.py --plan`` report them from the store (:func:`plan`).
The phases, most important first:

1. Table 3: the PTB learning-rate search (:func:`marnn.grid.ptb_search`: 8
   draws of lstm-256 / none, successive halving, the survivor trained to the
   paper's early stopping, which is the gate run), then all five models in
   modes none and m at the survivor's draw (the VRNS as the published code ran
   it, ``vrns-3-3-5-published``);
2. formal languages, lstm and jm-*;
3. formal languages, rns-3-3;
4. PTB modes c and cm, the embedding-group ablation (lstm-256 with the
   embedding in the memory group, modes m and c: in none and cm the group
   changes nothing), and vrns-3-3-5 as the equations say in mode none (the
   pair that shows what the bottom layout is worth), all at the search's draw.

Estimates are CPU-hours (hours of one core). PTB: each run to its epoch cap
(``marnn/scales.py``), a run without a cap short of the paper's for
:data:`UNCAPPED_EPOCHS` epochs, or for as many as the search's survivor took
once it is stored; per epoch its CPU-minutes in the registry
(``ptb_epoch_min`` of :data:`marnn.registry.MODELS`). Formal: the estimates
given in ``marnn/scales.py``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from . import grid, store
from .registry import MODELS, PTB_MODELS, PTB_TABLE3, PTB_VARIANTS
from .scales import get_scale

SCALE = "paper-2core"
GATE_PERPLEXITY = 140.0  # the search survivor's test perplexity must be at most this (a 256-unit LSTM
#                          without dropout lands near 120) before the other PTB cells train
UNCAPPED_EPOCHS = 15  # assumed epochs to the paper's early stopping, until the search's survivor shows its own

Root = str | os.PathLike | None


def _epoch_min(model: str) -> float:
    """CPU-minutes per epoch of one PTB replica of ``model`` on the full streams (the registry)."""
    minutes = MODELS[model].ptb_epoch_min
    if minutes is None:
        raise ValueError(f"{model}: the registry has no PTB CPU-minutes per epoch")
    return minutes


@dataclass(frozen=True)
class Phase:
    number: int
    what: str
    runs: Callable[[Root], list[dict]]  # the runs known now (PTB cells wait for the search)
    estimate: Callable[[Root], float]  # CPU-hours
    ptb: bool


def _unique(configs: list[dict]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for c in configs:
        k = store.config_key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _cells(root: Root, models, modes, **kw) -> list[dict]:
    return grid.ptb_grid(SCALE, list(models), list(modes), root=root, **kw)


def uncapped_epochs(root: Root = None) -> int:
    """Epochs of an uncapped PTB run: the search survivor's, once stored; else :data:`UNCAPPED_EPOCHS`."""
    seeds = grid.ptb_seeds(SCALE, 1, root)
    if seeds:
        rec = store.load_record(grid.ptb_config(grid.SEARCH_MODEL, grid.SEARCH_MODE, seeds[0], SCALE), root)
        if rec is not None:
            return int(rec["epochs"])
    return UNCAPPED_EPOCHS


def ptb_hours(pairs: list[tuple[str, str]], root: Root = None) -> float:
    """Projected CPU-hours of PTB runs ``(model, embedding group)``, each to its cap."""
    sc = get_scale(SCALE)
    free = uncapped_epochs(root)
    return sum(_epoch_min(m) * min(sc.for_model(m).ptb_max_epochs, free) / 60 for m, _ in pairs)


def search_hours(root: Root = None) -> float:
    """Successive halving: every draw to the first rung, half of them to the next, ...; the
    survivor on to early stopping."""
    sc = get_scale(SCALE)
    n, done, epochs = sc.ptb_draws or 0, 0, 0
    for rung in sc.ptb_halving:
        epochs += n * (rung - done)
        n, done = (n + 1) // 2, rung
    return _epoch_min(grid.SEARCH_MODEL) * (epochs + max(uncapped_epochs(root) - done, 0)) / 60


# The PTB cells of each phase, (models, modes, embedding group), all at the search's draw; the book
# counts a PTB page's cells from this table (marnn.coverage)
PTB_PHASE_CELLS: dict[int, tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...]] = {
    1: ((PTB_TABLE3, ("none", "m"), "controller"),),
    4: ((PTB_TABLE3, ("c", "cm"), "controller"), (("lstm-256",), ("m", "c"), "memory"),
        (("vrns-3-3-5",), ("none",), "controller")),
}


def _phase_cells(n: int, root: Root) -> list[dict]:
    return [c for models, modes, group in PTB_PHASE_CELLS[n]
            for c in _cells(root, models, modes, embedding_group=group)]


def ptb_planned() -> set[tuple[str, str, str]]:
    """Every PTB (model, freeze mode, embedding group) the campaign trains."""
    return {(m, f, g) for cells in PTB_PHASE_CELLS.values() for models, modes, g in cells
            for m in models for f in modes}


def _phase1(root: Root) -> list[dict]:
    return grid.ptb_search(SCALE) + _phase_cells(1, root)


def _phase4(root: Root) -> list[dict]:
    return _phase_cells(4, root)


PHASES = {
    1: Phase(1, "Table 3: the PTB learning-rate search (8 draws of lstm-256 / none, halving after epochs 1, 2, 4; "
                "the survivor to early stopping: the gate), then all five models in modes none and m at its draw",
             _phase1,
             lambda root: search_hours(root) + ptb_hours(
                 [(m, "controller") for m in PTB_TABLE3 for f in ("none", "m")
                  if (m, f) != (grid.SEARCH_MODEL, grid.SEARCH_MODE)], root), ptb=True),
    2: Phase(2, "formal lstm and jm-* (9.7 CPU-h at a mean of 50 epochs; 2.1 at 11, 11.7 at the cap of 60)",
             lambda root: grid.formal_grid(SCALE, models=["lstm", "jm-10", "jm-3.3.3", "jm-hidden"]),
             lambda root: 9.7, ptb=False),
    3: Phase(3, "formal rns-3-3", lambda root: grid.formal_grid(SCALE, models=["rns-3-3"]), lambda root: 7.0,
             ptb=False),
    4: Phase(4, "PTB modes c and cm, the embedding ablation (lstm-256, modes m and c: in none and cm the "
                "embedding's group changes nothing), vrns-3-3-5 (equations) none, all at the search's draw",
             _phase4,
             lambda root: ptb_hours([(m, "controller") for m in PTB_TABLE3 for _ in ("c", "cm")]
                                    + [("lstm-256", "memory")] * 2 + [("vrns-3-3-5", "controller")], root),
             ptb=True),
}


def gate(root: Root = None) -> dict | None:
    """The gate of the PTB cells: the search survivor (lstm-256 / none, trained to the paper's early
    stopping) and its test perplexity against :data:`GATE_PERPLEXITY`; None while the search is not
    stored. ``passed`` is False when every draw diverged."""
    seeds = grid.ptb_seeds(SCALE, 1, root)
    if seeds is None:
        return None
    if not seeds:
        return {"seed": None, "perplexity": None, "status": "diverged", "passed": False}
    rec = store.load_record(grid.ptb_config(grid.SEARCH_MODEL, grid.SEARCH_MODE, seeds[0], SCALE), root)
    ppl = rec["test"]["perplexity"] if rec is not None else None
    return {"seed": seeds[0], "perplexity": ppl, "status": rec["status"] if rec is not None else None,
            "passed": ppl is not None and ppl <= GATE_PERPLEXITY}


def gate_text(g: dict | None) -> str:
    """:func:`gate` in one line."""
    if g is None:
        return "gate: not decided yet (the search is not stored)"
    if g["seed"] is None:
        return "gate: failed (every draw of the search diverged)"
    ppl = "none" if g["perplexity"] is None else f"{g['perplexity']:.1f}"
    return (f"gate: {'passed' if g['passed'] else 'failed'}: {grid.SEARCH_MODEL} / {grid.SEARCH_MODE} at draw "
            f"{g['seed']} ({g['status']}), test perplexity {ppl} {'<=' if g['passed'] else 'above'} "
            f"{GATE_PERPLEXITY:g}")


def runs(n: int, root: Root = None) -> list[dict]:
    """The runs of phase ``n`` known now."""
    return _unique(PHASES[n].runs(root))


def waiting(n: int, root: Root = None) -> bool:
    """Whether phase ``n`` has PTB cells that wait for the search (:func:`marnn.grid.ptb_seeds`)."""
    return PHASES[n].ptb and grid.ptb_seeds(SCALE, 1, root) is None


def cpu_hours(records: list[dict]) -> float:
    """CPU-hours of the groups behind ``records``, each group counted once."""
    groups = {(r["group"]["cpu_time_s"], r["created"], tuple(r["group"]["members"])) for r in records}
    return sum(g[0] for g in groups) / 3600


def in_progress(groups: list[list[dict]], root: Root = None) -> list[dict]:
    """The groups among ``groups`` that have a saved state (:func:`marnn.train.resume.progress`):
    what they are and where they stand."""
    from .train import resume

    out = []
    for g in groups:
        p = resume.progress(g, resume.state_dir(root))
        if p is not None:
            first = g[0]
            where = f"{first['task']}/{first['model']}" if first["kind"] == "formal" else f"PTB {first['model']}"
            out.append({"group": f"{where} x{len(g)}", **p})
    return out


def progress_text(p: dict) -> str:
    """One :func:`in_progress` entry in words."""
    at = (f"in epoch {p['epoch'] + 1} at chunk {p['chunk']}" if p["chunk"] is not None
          else f"after epoch {p['epoch']}")
    return f"{p['group']} {at}, {p['running']} running, {p['cpu_s'] / 3600:.2f} CPU-h so far"


def plan(root: Root = None) -> list[dict]:
    """One row per phase: runs known, stored, missing, groups, estimated and spent CPU-hours,
    runs stopped early / at their cap / pruned / diverged, whether the cells wait for the search,
    and the groups in progress (a saved state, :func:`in_progress`)."""
    rows = []
    for n, phase in PHASES.items():
        configs = runs(n, root)
        records = [r for r in (store.load_record(c, root) for c in configs) if r is not None]
        todo = store.missing(configs, root)
        groups = grid.group_configs(todo)
        status = [r["status"] for r in records]
        rows.append(dict(phase=n, what=phase.what, runs=len(configs), stored=len(records), missing=len(todo),
                         groups=len(groups), in_progress=in_progress(groups, root), estimate_cpu_h=phase.estimate(root),
                         spent_cpu_h=cpu_hours(records), early_stop=status.count("early-stop"),
                         at_cap=status.count("max-epochs"), pruned=status.count("pruned"),
                         diverged=status.count("diverged"), waits_for_search=waiting(n, root),
                         machines=sorted({r["env"].get("cpu") or "?" for r in records})))
    return rows


def plan_frame(root: Root = None):
    """:func:`plan` as the provenance page shows it: one row per phase."""
    import pandas as pd

    rows = [{"phase": f"{r['phase']}: {r['what'].split(':')[0].split(' (')[0]}",
             "runs stored / known": f"{r['stored']} / {r['runs']}" + (" (+ cells after the search)"
                                                                    if r["waits_for_search"] else ""),
             "CPU-h spent": round(r["spent_cpu_h"], 2), "CPU-h estimated": round(r["estimate_cpu_h"], 1),
             "early stop": r["early_stop"], "at the cap": r["at_cap"], "pruned": r["pruned"],
             "diverged": r["diverged"], "machines": ", ".join(r["machines"]) or "-"} for r in plan(root)]
    return pd.DataFrame(rows).set_index("phase")


def plan_text(root: Root = None) -> str:
    lines, total = [], 0.0
    for row in plan(root):
        total += row["estimate_cpu_h"]
        more = "; the PTB cells wait for the search" if row["waits_for_search"] else ""
        if row["in_progress"]:
            more += "; in progress: " + "; ".join(progress_text(p) for p in row["in_progress"])
        lines.append(f"phase {row['phase']}: {row['what']}: {row['runs']} runs known, {row['stored']} stored "
                     f"({row['early_stop']} stopped early, {row['at_cap']} at the cap, {row['pruned']} pruned, "
                     f"{row['diverged']} diverged), {row['missing']} missing in {row['groups']} groups{more}; "
                     f"~{row['estimate_cpu_h']:.1f} CPU-h estimated (cumulative {total:.1f}), "
                     f"{row['spent_cpu_h']:.2f} CPU-h spent")
    seeds = grid.ptb_seeds(SCALE, 1, root)
    lines.append(f"PTB draw: {'not chosen yet (the search is not stored)' if seeds is None else seeds[0]}")
    lines.append(gate_text(gate(root)))
    return "\n".join(lines)


def planned_ptb(scale: str) -> set[tuple[str, str, str]] | None:
    """The PTB (model, mode, embedding group) cells a scale's campaign trains; None: every cell asked for."""
    return ptb_planned() if get_scale(scale).name == SCALE else None


def ptb_models(scale: str) -> list[str]:
    """The PTB models a page shows at ``scale``: the paper's five, and the variants the scale trains."""
    planned = planned_ptb(scale)
    if planned is None:
        return list(PTB_MODELS)
    names = {m for m, _, _ in planned}
    return [m for m in PTB_MODELS + PTB_VARIANTS if m in names]
