"""Train the ``paper-2core`` scale in the order the evidence matters.

    python scripts/paper_2core.py --plan      # each phase: runs, stored, missing, estimated CPU-hours
    python scripts/paper_2core.py 1           # train phase 1 (then 2, 3, 4); "all" runs them in order

Phases (the estimates are upper bounds, every run going to its epoch cap,
except phase 2, whose runs stop early: see ``marnn/scales.py`` for the numbers
behind them):

1. Table 3: first the PTB learning-rate search (``marnn.grid.ptb_search``:
   8 draws of lstm-256 / none, successive halving, the survivor trained to the
   paper's early stopping: the gate run), then all five models in modes none
   and m at the survivor's draw, the VRNS as the published code ran it
   (``vrns-3-3-5-published``);
2. formal languages, lstm and jm-*;
3. formal languages, rns-3-3;
4. PTB modes c and cm, the embedding-group ablation (lstm-256, embedding in
   the memory group, modes m and c: in none and cm the group changes nothing),
   and vrns-3-3-5 as the equations say in mode none (the pair that shows what
   the bottom layout is worth).

Every phase is one ``marnn.grid.run_grid`` call (a LocalCluster of one worker
per core unless ``--scheduler``); killing it and starting it again trains only
what is missing, and a group resumes from its last finished epoch
(``marnn.train.resume``). ``--results`` picks the store (default
``$MARNN_RESULTS`` or ``results/``).
"""
from __future__ import annotations

import argparse
import sys

from marnn import cli, grid, store

SCALE = "paper-2core"
PTB_TABLE3 = ["lstm-256", "jm-hidden-247", "jm-learned-22", "rns-4-5", "vrns-3-3-5-published"]


def _unique(configs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for c in configs:
        k = store.config_key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


# CPU-minutes per epoch of one PTB replica on the full streams (``marnn bench``, idle development
# machine; see marnn/scales.py), and the epochs a run without a cap short of the paper's is
# assumed to need (early stopping after 2 epochs without improvement; an assumption until the
# search's survivor has stopped: --plan then uses its real epochs)
PTB_EPOCH_MIN = {"lstm-256": 7.6, "jm-hidden-247": 8.4, "jm-learned-22": 8.0, "rns-4-5": 21.0,
                 "vrns-3-3-5": 14.0, "vrns-3-3-5-published": 14.0}
UNCAPPED_EPOCHS = 15


def _ptb_hours(configs: list[dict], epochs_uncapped: int) -> float:
    """Projected CPU-hours of PTB runs, each to its cap (or ``epochs_uncapped`` below the paper's)."""
    from marnn.scales import get_scale

    total = 0.0
    for c in configs:
        cap = get_scale(SCALE).for_model(c["model"]).ptb_max_epochs
        total += PTB_EPOCH_MIN[c["model"]] * min(cap, epochs_uncapped) / 60
    return total


def _search_hours() -> float:
    """Successive halving: every draw to the first rung, half of them to the next, ...; the
    survivor on to early stopping."""
    from marnn.scales import get_scale

    sc = get_scale(SCALE)
    n, done, epochs = sc.ptb_draws or 0, 0, 0.0
    for rung in sc.ptb_halving:
        epochs += n * (rung - done)
        n, done = (n + 1) // 2, rung
    return PTB_EPOCH_MIN[grid.SEARCH_MODEL] * (epochs + max(UNCAPPED_EPOCHS - done, 0)) / 60


def _cells(root, models, modes, **kw) -> list[dict]:
    return grid.ptb_grid(SCALE, models, modes, root=root, **kw)


# phase: (what, the runs it trains given the store (PTB cells wait for the search), CPU-hours)
PHASES = {
    1: ("Table 3: the PTB learning-rate search (8 draws of lstm-256 / none, halving after epochs 1, 2, 4; "
        "the survivor to early stopping: the gate), then all five models in modes none and m at its draw",
        lambda root: grid.ptb_search(SCALE) + _cells(root, PTB_TABLE3, ["none", "m"]),
        lambda: _search_hours() + _ptb_hours([grid.ptb_config(m, f, 0, SCALE) for m in PTB_TABLE3
                                              for f in ("none", "m")
                                              if (m, f) != (grid.SEARCH_MODEL, grid.SEARCH_MODE)],
                                             UNCAPPED_EPOCHS)),
    2: ("formal lstm and jm-* (15 at a mean of 50 epochs; 3.4-62)",
        lambda root: grid.formal_grid(SCALE, models=["lstm", "jm-10", "jm-3.3.3", "jm-hidden"]), lambda: 15.0),
    3: ("formal rns-3-3", lambda root: grid.formal_grid(SCALE, models=["rns-3-3"]), lambda: 5.4),
    4: ("PTB modes c and cm, the embedding ablation (lstm-256, modes m and c: in none and cm the embedding's "
        "group changes nothing), vrns-3-3-5 (equations) none, all at the search's draw",
        lambda root: (_cells(root, PTB_TABLE3, ["c", "cm"])
                      + _cells(root, ["lstm-256"], ["m", "c"], embedding_group="memory")
                      + _cells(root, ["vrns-3-3-5"], ["none"])),
        lambda: _ptb_hours([grid.ptb_config(m, f, 0, SCALE) for m in PTB_TABLE3 for f in ("c", "cm")]
                           + [grid.ptb_config("lstm-256", f, 0, SCALE, "memory") for f in ("m", "c")]
                           + [grid.ptb_config("vrns-3-3-5", "none", 0, SCALE)], UNCAPPED_EPOCHS)),
}


def _phase_runs(n: int, root) -> tuple[list[dict], bool]:
    """The runs of phase ``n`` known now, and whether more wait for the PTB search."""
    runs = _unique(PHASES[n][1](root))
    waiting = n in (1, 4) and grid.ptb_seeds(SCALE, 1, root) is None
    return runs, waiting


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", nargs="?", choices=["1", "2", "3", "4", "all"], help="1 | 2 | 3 | 4 | all")
    p.add_argument("--plan", action="store_true", help="print the phases and what is missing; train nothing")
    p.add_argument("--results", default=None)
    p.add_argument("--workers", type=cli.POSITIVE, default=None)
    p.add_argument("--scheduler", default=None)
    args = p.parse_args(argv)
    try:  # the checks of `marnn grid`: one line and exit 2, before any work
        args.results = cli.check_results(args.results)
        if args.plan or args.phase is None:
            return _plan(args.results)
        scheduler = cli.check_scheduler(args.scheduler)
        phases = list(PHASES) if args.phase == "all" else [int(args.phase)]
        if any(n in (1, 4) for n in phases):
            cli.check_ptb_files()
    except cli.CliError as err:
        print(f"paper_2core: error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for n in phases:
        what, _, hours = PHASES[n]
        print(f"phase {n}: {what} (~{hours():.1f} CPU-h)", flush=True)
        for _ in range(2):  # phase 1: the search first, then the cells at its draw
            runs, waiting = _phase_runs(n, args.results)
            todo = store.missing(runs, args.results)
            if n == 4 and waiting:
                print("phase 4: waits for the PTB learning-rate search of phase 1; run phase 1 first", flush=True)
                break
            summary = grid.run_grid(runs, args.results, scheduler=scheduler, workers=args.workers)
            print(f"phase {n}: {summary['written']} written, {len(summary['failed'])} groups failed, "
                  f"{summary['wall_time_s']:.0f} s", flush=True)
            for f in summary["failed"]:
                print(f"FAILED {f['task']}/{f['model']} ({f['runs']} runs): {f['error']}", file=sys.stderr)
            failed += len(summary["failed"])
            if summary["failed"] or not waiting or not todo:
                break
            seeds = grid.ptb_seeds(SCALE, 1, args.results)
            if seeds is None:
                print(f"phase {n}: the PTB search is still not stored; run the phase again", file=sys.stderr)
                failed += 1
                break
            print(f"phase {n}: the search chose draw {seeds[0] if seeds else 'none (every draw diverged)'}",
                  flush=True)
    return 1 if failed else 0


def _plan(results: str) -> int:
    total = spent = 0.0
    for n, (what, _, hours) in PHASES.items():
        configs, waiting = _phase_runs(n, results)
        todo = store.missing(configs, results)
        groups = grid.group_configs(todo)
        h = hours()
        total += h
        done = [store.load_record(c, results) for c in configs]
        cpu = _cpu_hours([r for r in done if r is not None])
        spent += cpu
        more = "; the cells wait for the PTB search" if waiting else ""
        print(f"phase {n}: {what}: {len(configs)} runs known, {len(configs) - len(todo)} stored, {len(todo)} missing "
              f"in {len(groups)} groups{more}; ~{h:.1f} CPU-h estimated (cumulative {total:.1f}), "
              f"{cpu:.2f} CPU-h spent")
    seeds = grid.ptb_seeds(SCALE, 1, results)
    print(f"PTB draw: {'not chosen yet (the search is not stored)' if seeds is None else seeds[0]}; "
          f"CPU-h spent in all: {spent:.2f}")
    return 0


def _cpu_hours(records: list[dict]) -> float:
    """CPU-hours of the groups behind ``records`` (each group's time counted once)."""
    groups = {(r["group"]["cpu_time_s"], r["created"], tuple(r["group"]["members"])) for r in records}
    return sum(g[0] for g in groups) / 3600


if __name__ == "__main__":
    sys.exit(main())
