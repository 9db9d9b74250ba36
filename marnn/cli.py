"""The ``marnn`` command: a thin shell over :mod:`marnn.train`, :mod:`marnn.grid`, :mod:`marnn.store`.

::

    marnn train --task marked-copy --model jm-10 --freeze m --seed 0 --scale quick
    marnn grid  --scale smoke [--tasks ...] [--models ...] [--modes ...] [--restarts N]
                [--ptb] [--scheduler ADDRESS|sync] [--workers N]
    marnn ptb   --model rns-4-5 --freeze m [--seed 0] [--scale quick] [--embedding-group controller]
    marnn bench ...            (marnn.bench.main)

Every command takes ``--results DIR`` (default ``$MARNN_RESULTS`` or
``<repo>/results``). Every argument is checked before any work starts (the
store is a writable folder, seeds and data seeds in [0, 2**32 - 1], threads,
workers, replicas, restarts and epochs >= 1, the device exists on this
machine, the scheduler address is well formed and answers within 3 s, the PTB
files match their checksums): a bad one exits with status 2 and one line
naming what is wrong and what is accepted. Ctrl-C at any moment prints one
line and exits with status 130 (a second Ctrl-C exits at once).

While training, every command writes one line per finished epoch to stderr
(:mod:`marnn.train.epochlog`: perplexities or accuracies, learning rate,
seconds) and shows progress bars; ``--quiet`` or ``TQDM_DISABLE=1`` silences
both. ``train`` and ``ptb`` keep the run's state after every epoch in
``<results>/.state/`` (:mod:`marnn.train.resume`), like ``grid``: an
interrupted run continues from its last finished epoch, with the numbers an
uninterrupted run gives; the state is removed once the record is written.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .config import RunConfig
from .scales import SCALES

SEED_MAX = 2**32 - 1  # = marnn.config.SEED_MAX (not imported here: keeps start-up light)
SCHEDULER_TIMEOUT_S = 3.0


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise CliError(f"{self.prog}: {message}")


def _int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi]."""
    accepted = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}; accepted: {accepted}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range; accepted: {accepted}")
        return value

    parse.__name__ = accepted  # argparse names the type in some messages
    return parse


SEED = _int_in(0, SEED_MAX)
POSITIVE = _int_in(1)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="marnn", description="Memory-augmented RNNs (Das & Mali 2024): train, grids, PTB.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    def common(q):
        q.add_argument("--scale", default="quick", help=" | ".join(SCALES) + " (default quick)")
        q.add_argument("--results", default=None, help="store folder (default $MARNN_RESULTS or <repo>/results)")
        q.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        q.add_argument("--threads", type=POSITIVE, default=None,
                       help="torch threads (default: 1 for formal languages, torch's default for PTB)")
        q.add_argument("--quiet", action="store_true",
                       help="no progress bars and no line per finished epoch on stderr")

    t = sub.add_parser("train", help="train (or load) one formal-language run")
    t.add_argument("--task", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--freeze", default="none", help="none | m | c | cm")
    t.add_argument("--seed", type=SEED, default=0, help=f"restart seed: init and learning rate (0 to {SEED_MAX})")
    t.add_argument("--data-seed", type=SEED, default=0, help=f"training data and its order (0 to {SEED_MAX})")
    t.add_argument("--train-lengths", type=POSITIVE, nargs=2, metavar=("LO", "HI"), default=None,
                   help="override the scale's training length range")
    t.add_argument("--max-epochs", type=POSITIVE, default=None, help="override the scale's max epochs")
    common(t)

    g = sub.add_parser("grid", help="run every missing run of a grid (batched, via dask)")
    g.add_argument("--tasks", nargs="+", default=None)
    g.add_argument("--models", nargs="+", default=None)
    g.add_argument("--modes", nargs="+", default=None)
    g.add_argument("--restarts", type=_int_in(1, SEED_MAX + 1), default=None)
    g.add_argument("--ptb", action="store_true", help="the PTB grid instead of the formal one")
    g.add_argument("--embedding-group", default=None, help="PTB only: controller | memory | trained")
    g.add_argument("--scheduler", default=None, help="dask scheduler address, or 'sync' for no dask")
    g.add_argument("--workers", type=POSITIVE, default=None, help="LocalCluster worker processes (default: cores)")
    g.add_argument("--max-replicas", type=POSITIVE, default=None, help="cut batched groups to at most N replicas")
    g.add_argument("--dry-run", action="store_true", help="only count planned / missing runs")
    common(g)

    q = sub.add_parser("ptb", help="train (or load) one Penn Treebank run")
    q.add_argument("--model", required=True)
    q.add_argument("--freeze", default="none")
    q.add_argument("--seed", type=SEED, default=0, help=f"restart seed (0 to {SEED_MAX})")
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
        changes["max_epochs"] = args.max_epochs
    return sc.with_(**changes) if changes else sc


def check_results(path) -> str:
    """The store's folder, created if missing and checked writable (a probe file
    is created and removed); else CliError naming the problem."""
    from . import store

    root = store.results_dir(path)
    given = f"--results {path}" if path else (f"${store.ENV_VAR}={root}" if os.environ.get(store.ENV_VAR)
                                               else f"the results folder {root}")
    accepted = "accepted: a folder this user can write (created if missing)"
    if root.exists() and not root.is_dir():
        raise CliError(f"{given} is not a folder; {accepted}")
    real = root.resolve()
    if real == Path("/proc") or Path("/proc") in real.parents or Path("/sys") in real.parents:
        raise CliError(f"{given} is inside a kernel file system; {accepted}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe~{store._HOST}~{os.getpid()}~0.tmp"  # named like the store's temporaries
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.unlink(probe)
    except OSError as err:
        raise CliError(f"{given} cannot be written ({err.strerror or err}); {accepted}") from None
    return str(root)


def check_device(name: str | None) -> str | None:
    """A torch device that exists on this machine (None: the default), else CliError."""
    if name is None:
        return None
    import torch

    accepted = "accepted: cpu" + (", cuda, cuda:N" if torch.cuda.is_available() else "") + \
        (", mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise CliError(f"--device {name!r} is not a torch device; {accepted}") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {name!r}: this torch ({torch.__version__}) sees no CUDA device; {accepted}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CliError(f"--device {name!r}: there are {torch.cuda.device_count()} CUDA devices; {accepted}")
        return name
    if dev.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return name
    raise CliError(f"--device {name!r} is not available here; {accepted}")


def check_scheduler(address: str | None) -> str | None:
    if address is None or address == "sync":
        return address
    from .grid import check_scheduler as check

    return _checked(check, address, SCHEDULER_TIMEOUT_S)


def check_ptb_files() -> None:
    """The vendored PTB files match SHA256SUMS.txt (before training starts)."""
    from .ptb import ChecksumError, verify

    try:
        verify()
    except ChecksumError as err:
        raise CliError(str(err)) from None


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
                     f"{_fmt(b.get('ceiling_accuracy')):>8} {_fmt(b.get('perplexity')):>10} "
                     f"{_fmt(b.get('ce_diff')):>8}")
    lines.append(f"  wall {rec['wall_time_s']:.1f} s on {rec['env']['device']}; record {path}")
    return "\n".join(lines)


def _summary_ptb(rec: dict, path) -> str:
    c = rec["config"]
    return "\n".join([
        f"ptb / {c['model']} / freeze {c['freeze']} (embedding: {c['embedding_group']}) / seed {c['seed']} "
        f"/ scale {c['scale']}",
        f"  lr {rec['lr']:.3g}  clip {rec['clip']:.3g}  epochs {rec['epochs']} (best {rec['best_epoch']})  "
        f"status {rec['status']}",
        f"  valid perplexity {_fmt(rec['valid']['perplexity'], '.2f')}  "
        f"test perplexity {_fmt(rec['test']['perplexity'], '.2f')}",
        f"  wall {rec['wall_time_s']:.1f} s on {rec['env']['device']}; record {path}",
    ])


def _run_one(config: RunConfig, args) -> int:
    """Load the run's record, or train and store it through the one load-or-train path
    (:func:`marnn.train.run.train_missing`: claimed, resumable; waits while another
    process trains it)."""
    from . import store

    if store.load_record(config, args.results) is None:
        from .train.run import train_missing

        threads = args.threads if args.threads is not None else (1 if config.is_formal else None)
        if store.claimed_elsewhere(config, args.results):
            print(f"another process is training this run ({store.record_path(config, args.results)}); "
                  "waiting for its record", file=sys.stderr)
        written = train_missing([config.to_dict()], args.results, wait=True, progress=not args.quiet,
                                epoch_lines=not args.quiet, device=args.device, threads=threads)
        print("trained and stored:" if written else "loaded from the store (trained meanwhile by another process):")
    else:
        print("loaded from the store (already computed):")
    rec = store.load_record(config, args.results)
    path = store.record_path(config, args.results)
    if rec is None:
        raise CliError(f"no valid record of this run at {path} after training it")
    print(_summary_formal(rec, path) if config.is_formal else _summary_ptb(rec, path))
    return 0


def _checked(fn, *a, **kw):
    """Call a config builder; its ValueErrors are user errors (bad names, impossible lengths)."""
    try:
        return fn(*a, **kw)
    except ValueError as err:  # UnknownNameError included
        raise CliError(str(err)) from None


def cmd_train(args) -> int:
    config = _checked(RunConfig.formal, args.task, args.model, args.freeze, args.seed, _scale(args), args.data_seed)
    args.device = check_device(args.device)
    args.results = check_results(args.results)
    return _run_one(config, args)


def cmd_ptb(args) -> int:
    config = _checked(RunConfig.ptb, args.model, args.freeze, args.seed, _scale(args), args.embedding_group)
    args.device = check_device(args.device)
    args.results = check_results(args.results)
    check_ptb_files()
    return _run_one(config, args)


def cmd_grid(args) -> int:
    from . import grid, store

    sc = _scale(args)
    if args.ptb:
        if args.tasks:
            raise CliError("--tasks does not apply to --ptb (PTB is one corpus)")
        args.results = check_results(args.results)
        configs = _checked(grid.ptb_grid, sc, args.models, args.modes, args.restarts, args.embedding_group,
                           root=args.results)
        if not configs and sc.ptb_draws:  # the cells wait for the learning-rate search
            configs = grid.ptb_search(sc)
            print(f"{sc.name}: the PTB learning-rate search comes first ({len(configs)} draws of "
                  f"{grid.SEARCH_MODEL} / {grid.SEARCH_MODE}); run the command again for the cells",
                  file=sys.stderr)
    elif args.embedding_group is not None:
        raise CliError("--embedding-group applies only to --ptb")
    else:
        configs = _checked(grid.formal_grid, sc, args.tasks, args.models, args.modes, args.restarts)
    if args.scheduler is not None and args.workers is not None:
        raise CliError("--workers sizes the LocalCluster; it does not apply with --scheduler")
    args.device = check_device(args.device)
    args.results = check_results(args.results)
    if args.dry_run:
        todo = store.missing(configs, args.results)
        groups = grid.group_configs(todo, args.max_replicas)
        print(f"{len(configs)} runs planned, {len(configs) - len(todo)} stored, "
              f"{len(todo)} missing in {len(groups)} groups")
        return 0
    scheduler = check_scheduler(args.scheduler)
    if args.ptb and store.missing(configs, args.results):
        check_ptb_files()
    summary = grid.run_grid(configs, args.results, scheduler=scheduler, workers=args.workers, progress=not args.quiet,
                            max_replicas=args.max_replicas, torch_threads=args.threads or 1,
                            train_kwargs={"device": args.device} if args.device else None)
    elsewhere = f", {summary['elsewhere']} trained by another process" if summary["elsewhere"] else ""
    print(f"{summary['planned']} runs planned, {summary['existing']} already stored, {summary['written']} written"
          f"{elsewhere} in {summary['groups']} groups, {summary['wall_time_s']:.1f} s; store {summary['root']}")
    for f in summary["failed"]:
        print(f"FAILED {f['task']}/{f['model']} ({f['runs']} runs): {f['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def cmd_bench(argv: list[str]) -> int:
    for i, arg in enumerate(argv):  # marnn.bench parses the rest; its --threads is checked here
        if arg == "--threads" or arg.startswith("--threads="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                POSITIVE(value)
            except argparse.ArgumentTypeError as err:
                raise CliError(f"marnn bench: argument --threads: {err}") from None
    try:
        from .bench import main as bench_main
    except ImportError as err:
        raise CliError(f"marnn bench is not available ({err})") from None

    def one_line(parser, message):  # marnn.bench's own argparse errors, as one line like ours
        raise CliError(f"{parser.prog}: {message}")

    plain = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = one_line  # type: ignore[method-assign]  # patched for bench_main, restored below
    try:
        return int(bench_main(argv) or 0)
    finally:
        argparse.ArgumentParser.error = plain  # type: ignore[method-assign]


_INTERRUPTED = False


def _on_sigint(signum, frame):
    """First Ctrl-C: raise KeyboardInterrupt (clean-up runs, quietly); second: leave now."""
    global _INTERRUPTED
    if _INTERRUPTED:
        os.write(2, b"marnn: interrupted\n")
        os._exit(130)
    _INTERRUPTED = True
    raise KeyboardInterrupt


def _exit_interrupted(signum, frame):
    """After main() returned (interpreter and library teardown): Ctrl-C ends the process at once, one line."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os.write(2, b"marnn: interrupted\n")
    os._exit(130)


def _leave(code: int) -> None:
    """End the process now with ``code``, after the exit handlers. A KeyboardInterrupt that reached
    Python's own error printing (e.g. one raised while a library was importing) makes the interpreter
    end itself by SIGINT at shutdown, whatever ``main`` returned; this exit does not go through that."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def _quiet_exit() -> None:
    """After Ctrl-C: no logging or warnings from libraries shutting down."""
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")


def main(argv: list[str] | None = None) -> int:
    global _INTERRUPTED
    _INTERRUPTED = False
    program = argv is None  # the process is this command (not a caller passing its own argv, e.g. a test)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        old = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread
        old = None
    try:
        from .registry import UnknownNameError

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
    except BaseException as err:  # noqa: BLE001 - Ctrl-C may surface as anything mid-start-up
        if not (_INTERRUPTED or isinstance(err, KeyboardInterrupt)):
            raise
        _INTERRUPTED = True
        _quiet_exit()
        print("marnn: interrupted", file=sys.stderr)
        if program:
            _leave(130)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, _exit_interrupted if program else old)


if __name__ == "__main__":
    sys.exit(main())
