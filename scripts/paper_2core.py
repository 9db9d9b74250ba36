"""Train the ``paper-2core`` scale in the order the evidence matters (the phases: ``marnn.campaign``).

    python scripts/paper_2core.py --plan      # each phase: runs stored / missing, CPU-hours estimated and spent,
                                              # the groups in progress (epoch or chunk reached, from their state)
    python scripts/paper_2core.py 1           # train phase 1 (then 2, 3, 4); "all" runs them in order

Every phase is one or two ``marnn.grid.run_grid`` calls (phase 1: the PTB
learning-rate search, then the cells at its draw) on a LocalCluster of one
worker per core unless ``--workers`` or ``--scheduler``; killing it and
starting it again trains only what is missing, and a group resumes from its
last finished epoch (a PTB group: from its last 10-minute mark inside
an epoch; ``marnn.train.resume``). Two phases may run at once on one
store (each run is claimed before it is trained). ``--results`` picks the
store (default ``$MARNN_RESULTS`` or ``results/``).
"""
from __future__ import annotations

import argparse
import sys

from marnn import campaign, cli, grid, store


def gate_open(n: int, args) -> bool:
    """Whether phase ``n`` may train its PTB cells: the search survivor passed the gate (or --past-gate)."""
    g = campaign.gate(args.results)
    if g is None or g["passed"] or args.past_gate:
        return True
    print(f"phase {n}: {campaign.gate_text(g)}; find out why (e.g. a plain nn.LSTM + nn.Linear trained by the same "
          f"loop on the same streams) before training the other PTB cells, or rerun with --past-gate",
          file=sys.stderr, flush=True)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", nargs="?", choices=["1", "2", "3", "4", "all"], help="1 | 2 | 3 | 4 | all")
    p.add_argument("--plan", action="store_true", help="print the phases and what is missing; train nothing")
    p.add_argument("--results", default=None)
    p.add_argument("--workers", type=cli.POSITIVE, default=None)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--past-gate", action="store_true",
                   help="train the PTB cells even when the search survivor's test perplexity is above the gate "
                        f"({campaign.GATE_PERPLEXITY:g})")
    args = p.parse_args(argv)
    try:  # the checks of `marnn grid`: one line and exit 2, before any work
        args.results = cli.check_results(args.results)
        if args.plan or args.phase is None:
            print(campaign.plan_text(args.results))
            return 0
        scheduler = cli.check_scheduler(args.scheduler)
        phases = list(campaign.PHASES) if args.phase == "all" else [int(args.phase)]
        if any(campaign.PHASES[n].ptb for n in phases):
            cli.check_ptb_files()
    except cli.CliError as err:
        print(f"paper_2core: error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for n in phases:
        phase = campaign.PHASES[n]
        print(f"phase {n}: {phase.what} (~{phase.estimate(args.results):.1f} CPU-h)", flush=True)
        for _ in range(2):  # phase 1: the search first, then the cells at its draw
            runs, waiting = campaign.runs(n, args.results), campaign.waiting(n, args.results)
            if n == 4 and waiting:
                print("phase 4: waits for the PTB learning-rate search of phase 1; run phase 1 first", flush=True)
                break
            if phase.ptb and not waiting and not gate_open(n, args):
                failed += 1
                break
            todo = store.missing(runs, args.results)
            summary = grid.run_grid(runs, args.results, scheduler=scheduler, workers=args.workers)
            print(f"phase {n}: {summary['written']} written, {len(summary['failed'])} groups failed, "
                  f"{summary['wall_time_s']:.0f} s", flush=True)
            for f in summary["failed"]:
                print(f"FAILED {f['task']}/{f['model']} ({f['runs']} runs): {f['error']}", file=sys.stderr)
            failed += len(summary["failed"])
            if summary["failed"] or not waiting or not todo:
                break
            seeds = grid.ptb_seeds(campaign.SCALE, 1, args.results)
            if seeds is None:
                print(f"phase {n}: the PTB search is still not stored; run the phase again", file=sys.stderr)
                failed += 1
                break
            print(f"phase {n}: the search chose draw {seeds[0] if seeds else 'none (every draw diverged)'}",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
