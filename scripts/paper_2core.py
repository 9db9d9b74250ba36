"""Train the ``paper-2core`` scale in the order the evidence matters.

    python scripts/paper_2core.py --plan      # each phase: runs, stored, missing, estimated CPU-hours
    python scripts/paper_2core.py 1           # train phase 1 (then 2, 3, 4); "all" runs them in order

Phases (the estimates are upper bounds, every run going to its epoch cap,
except phase 2, whose runs stop early: see ``marnn/scales.py`` for the numbers
behind them):

1. Table 3: PTB, all five models in modes none and m, the VRNS as the
   published code ran it (``vrns-3-3-5-published``), lstm-256 in mode none
   with 3 restarts;
2. formal languages, lstm and jm-*;
3. formal languages, rns-3-3;
4. PTB modes c and cm, the embedding-group ablation (lstm-256, embedding in
   the memory group), and vrns-3-3-5 as the equations say in mode none (the
   pair that shows what the bottom layout is worth).

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


PHASES = {
    1: ("Table 3: PTB modes none and m (vrns published), lstm-256 none x 3", 10.1,
        lambda: grid.ptb_grid(SCALE, PTB_TABLE3, ["none", "m"])
        + grid.ptb_grid(SCALE, ["lstm-256"], ["none"], restarts=3)),
    2: ("formal lstm and jm-* (15 at a mean of 50 epochs; 3.4-62)", 15.0,
        lambda: grid.formal_grid(SCALE, models=["lstm", "jm-10", "jm-3.3.3", "jm-hidden"])),
    3: ("formal rns-3-3", 5.4, lambda: grid.formal_grid(SCALE, models=["rns-3-3"])),
    4: ("PTB modes c and cm, embedding ablation, vrns-3-3-5 (equations) none", 12.3,
        lambda: grid.ptb_grid(SCALE, PTB_TABLE3, ["c", "cm"])
        + grid.ptb_grid(SCALE, ["lstm-256"], embedding_group="memory")
        + grid.ptb_grid(SCALE, ["vrns-3-3-5"], ["none"])),
}


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
        what, hours, make = PHASES[n]
        print(f"phase {n}: {what} (~{hours:g} CPU-h)", flush=True)
        summary = grid.run_grid(_unique(make()), args.results, scheduler=scheduler, workers=args.workers)
        print(f"phase {n}: {summary['written']} written, {len(summary['failed'])} groups failed, "
              f"{summary['wall_time_s']:.0f} s", flush=True)
        for f in summary["failed"]:
            print(f"FAILED {f['task']}/{f['model']} ({f['runs']} runs): {f['error']}", file=sys.stderr)
        failed += len(summary["failed"])
    return 1 if failed else 0


def _plan(results: str) -> int:
    total = 0.0
    for n, (what, hours, make) in PHASES.items():
        configs = _unique(make())
        todo = store.missing(configs, results)
        groups = grid.group_configs(todo)
        total += hours
        print(f"phase {n}: {what}: {len(configs)} runs, {len(configs) - len(todo)} stored, "
              f"{len(todo)} missing in {len(groups)} groups; ~{hours:g} CPU-h (cumulative {total:g})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
