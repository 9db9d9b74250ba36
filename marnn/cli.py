"""The ``marnn`` command: a thin shell over :mod:`marnn.train`, :mod:`marnn.grid`, :mod:`marnn.store`.

::

    marnn train --task marked-copy --model jm-10 --freeze m --seed 0 --scale quick
    marnn grid  --scale smoke [--tasks ...] [--models ...] [--modes ...] [--restarts N]
                [--ptb] [--scheduler ADDRESS|sync] [--workers N]
    marnn ptb   --model rns-4-5 --freeze m [--seed 0] [--scale quick] [--embedding-group controller]
    marnn bench ...            (marnn.bench.main)

Every command takes ``--results DIR`` (default ``$MARNN_RESULTS`` or
``<repo>/results``). A bad argument exits with status 2 and one line naming
the valid choices; progress bars go to stderr (``TQDM_DISABLE=1`` silences them).
"""
from __future__ import annotations

import argparse
import sys


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise CliError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="marnn", description="Memory-augmented RNNs (Das & Mali 2024): train, grids, PTB.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    def common(q):
        q.add_argument("--scale", default="quick", help="smoke | quick | paper (default quick)")
        q.add_argument("--results", default=None, help="store folder (default $MARNN_RESULTS or <repo>/results)")
        q.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        q.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: 1 for formal languages, torch's default for PTB)")

    t = sub.add_parser("train", help="train (or load) one formal-language run")
    t.add_argument("--task", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--freeze", default="none", help="none | m | c | cm")
    t.add_argument("--seed", type=int, default=0, help="restart seed: init and learning rate")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--train-lengths", type=int, nargs=2, metavar=("LO", "HI"), default=None,
                   help="override the scale's training length range")
    t.add_argument("--max-epochs", type=int, default=None, help="override the scale's max epochs")
    common(t)

    g = sub.add_parser("grid", help="run every missing run of a grid (batched, via dask)")
    g.add_argument("--tasks", nargs="+", default=None)
    g.add_argument("--models", nargs="+", default=None)
    g.add_argument("--modes", nargs="+", default=None)
    g.add_argument("--restarts", type=int, default=None)
    g.add_argument("--ptb", action="store_true", help="the PTB grid instead of the formal one")
    g.add_argument("--embedding-group", default=None, help="PTB only: controller | memory | trained")
    g.add_argument("--scheduler", default=None, help="dask scheduler address, or 'sync' for no dask")
    g.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: cores)")
    g.add_argument("--max-replicas", type=int, default=None, help="cut batched groups to at most N replicas")
    g.add_argument("--dry-run", action="store_true", help="only count planned / missing runs")
    common(g)

    q = sub.add_parser("ptb", help="train (or load) one Penn Treebank run")
    q.add_argument("--model", required=True)
    q.add_argument("--freeze", default="none")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--embedding-group", default=None, help="controller (default) | memory | trained")
    common(q)

    sub.add_parser("bench", help="benchmarks (marnn.bench)", add_help=False)
    return p


def _scale(args):
    from .scales import get_scale

    sc = _checked(get_scale, args.scale)
    changes = {}
    if getattr(args, "train_lengths", None):
        changes["train_lengths"] = tuple(args.train_lengths)
    if getattr(args, "max_epochs", None) is not None:
        if args.max_epochs < 1:
            raise CliError(f"--max-epochs must be at least 1, got {args.max_epochs}")
        changes["max_epochs"] = args.max_epochs
    return sc.with_(**changes) if changes else sc


def _fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def _summary_formal(rec: dict, path) -> str:
    c = rec["config"]
    lines = [f"{c['task']} / {c['model']} / freeze {c['freeze']} / seed {c['seed']} / scale {c['scale']}",
             f"  lr {rec['lr']:.3g}  epochs {rec['epochs']} (best {rec['best_epoch']})  status {rec['status']}"
             + (f" at epoch {rec['diverged']['epoch']} step {rec['diverged']['step']}" if rec["diverged"] else ""),
             f"  valid: ce {_fmt(rec['valid']['cross_entropy'])}  ce-diff {_fmt(rec['valid']['ce_diff'])}"
             f"  accuracy {_fmt(rec['valid']['accuracy'])}",
             f"  {'bin':5} {'lengths':>9} {'accuracy':>9} {'ceiling':>8} {'perplexity':>10} {'ce-diff':>8}"]
    for name, b in rec["bins"].items():
        lines.append(f"  {name:5} {str(b['lo']) + '-' + str(b['hi']):>9} {_fmt(b.get('accuracy')):>9} "
                     f"{_fmt(b.get('ceiling_accuracy')):>8} {_fmt(b.get('perplexity')):>10} {_fmt(b.get('ce_diff')):>8}")
    lines.append(f"  wall {rec['wall_time_s']:.1f} s on {rec['env']['device']}; record {path}")
    return "\n".join(lines)


def _summary_ptb(rec: dict, path) -> str:
    c = rec["config"]
    return "\n".join([
        f"ptb / {c['model']} / freeze {c['freeze']} (embedding: {c['embedding_group']}) / seed {c['seed']} / scale {c['scale']}",
        f"  lr {rec['lr']:.3g}  clip {rec['clip']:.3g}  epochs {rec['epochs']} (best {rec['best_epoch']})  status {rec['status']}",
        f"  valid perplexity {_fmt(rec['valid']['perplexity'], '.2f')}  test perplexity {_fmt(rec['test']['perplexity'], '.2f')}",
        f"  wall {rec['wall_time_s']:.1f} s on {rec['env']['device']}; record {path}",
    ])


def _run_one(config: dict, args) -> int:
    from . import store

    existing = store.load_record(config, args.results)
    if existing is None:
        from .train import train

        threads = args.threads if args.threads is not None else (1 if config["kind"] == "formal" else None)
        if threads is not None and threads < 1:
            raise CliError(f"--threads must be at least 1, got {threads}")
        (rec,) = train([config], progress=True, device=args.device, threads=threads)
        store.save_record(rec, args.results)
        print("trained and stored:")
    else:
        print("loaded from the store (already computed):")
    rec = store.load_record(config, args.results)
    path = store.record_path(config, args.results)
    print(_summary_formal(rec, path) if config["kind"] == "formal" else _summary_ptb(rec, path))
    return 0


def _checked(fn, *a, **kw):
    """Call a config builder; its ValueErrors are user errors (bad names, impossible lengths)."""
    try:
        return fn(*a, **kw)
    except ValueError as err:  # UnknownNameError included
        raise CliError(str(err)) from None


def cmd_train(args) -> int:
    from .train import formal_config

    config = _checked(formal_config, args.task, args.model, args.freeze, args.seed, _scale(args), args.data_seed)
    return _run_one(config, args)


def cmd_ptb(args) -> int:
    from .train import ptb_config

    config = _checked(ptb_config, args.model, args.freeze, args.seed, _scale(args), args.embedding_group)
    return _run_one(config, args)


def cmd_grid(args) -> int:
    from . import grid, store

    sc = _scale(args)
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.ptb:
        if args.tasks:
            raise CliError("--tasks does not apply to --ptb (PTB is one corpus)")
        configs = _checked(grid.ptb_grid, sc, args.models, args.modes, args.restarts, args.embedding_group)
    else:
        configs = _checked(grid.formal_grid, sc, args.tasks, args.models, args.modes, args.restarts)
    if args.dry_run:
        todo = store.missing(configs, args.results)
        groups = grid.group_configs(todo, args.max_replicas)
        print(f"{len(configs)} runs planned, {len(configs) - len(todo)} stored, {len(todo)} missing in {len(groups)} groups")
        return 0
    summary = grid.run_grid(configs, args.results, scheduler=args.scheduler, workers=args.workers,
                            max_replicas=args.max_replicas)
    print(f"{summary['planned']} runs planned, {summary['existing']} already stored, {summary['written']} written "
          f"in {summary['groups']} groups, {summary['wall_time_s']:.1f} s; store {summary['root']}")
    for f in summary["failed"]:
        print(f"FAILED {f['task']}/{f['model']} ({f['runs']} runs): {f['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def cmd_bench(argv: list[str]) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as err:
        raise CliError(f"marnn bench is not available ({err})") from None
    return int(bench_main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    from .registry import UnknownNameError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return cmd_bench(argv[1:])
        args = _parser().parse_args(argv)
        if args.command is None:
            raise CliError("marnn: choose a command: train, grid, ptb, bench (see marnn --help)")
        return {"train": cmd_train, "grid": cmd_grid, "ptb": cmd_ptb}[args.command](args)
    except (CliError, UnknownNameError) as err:
        msg = " ".join(str(err).split())
        print(f"marnn: error: {msg}" if not msg.startswith("marnn") else msg, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("marnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
