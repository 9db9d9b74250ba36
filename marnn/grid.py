"""Grids of runs: plan the cells, find the missing ones, train them in batched groups via dask.

A grid is a list of run configs (:func:`formal_grid`, :func:`ptb_grid`).
:func:`run_grid` drops every config that already has a record, groups the rest
by everything except freeze mode and seed (:func:`group_configs`: the restarts
x modes of one (task, model) become ONE replica-batched model), and runs each
group as one task on a dask.distributed cluster; each worker writes its records
straight into the shared store (atomically), so killing a grid at any moment
and running it again computes only what is missing. Every run is claimed
before it is trained (:func:`marnn.store.hold`): two grids on one store, or
a group given to a second worker after its first was lost, never train a run
twice; a grid waits for the runs another live process holds. A group is
trained by :func:`run_group`, which hands it to the one load-or-train path
(:func:`marnn.train.run.train_missing`: claims, resume from ``<store>/.state``,
halves on out-of-memory, kept weights); this module only plans and schedules.

Cluster: by default a ``LocalCluster`` of worker *processes* sized to the
machine (one single-threaded worker per core, since one small recurrent model
cannot use several cores well); ``scheduler="tcp://host:8786"`` sends the same
grid to an existing cluster, whose workers must import this checkout and see
the same results folder. ``scheduler="sync"`` runs the groups in this process,
one after the other (no dask).

SLURM with dask-jobqueue (not a dependency; ``pip install dask-jobqueue``)::

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    from marnn import grid

    cluster = SLURMCluster(
        queue="gpu", cores=4, processes=4, memory="32GB", walltime="04:00:00",
        job_extra_directives=["--gres=gpu:1"],
        job_script_prologue=["source /path/to/marnn/.venv/bin/activate",
                             "export MARNN_RESULTS=/shared/marnn-results"],
    )
    cluster.scale(jobs=8)  # 8 SLURM jobs x 4 worker processes
    with Client(cluster) as client:
        configs = grid.formal_grid("paper")
        grid.run_grid(configs, root="/shared/marnn-results", client=client)

or, from the command line, start the cluster as above in a Python session,
print ``cluster.scheduler_address`` and run
``marnn grid --scale paper --scheduler tcp://...:PORT --results /shared/marnn-results``.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from . import registry, store
from .config import RunConfig
from .registry import FORMAL_MODELS, MODES, PTB_MODELS, TASKS
from .scales import Scale, get_scale
from .train import epochlog, formal_config, progress_disabled, ptb_config


def formal_grid(scale: str | Scale, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                modes: Iterable[str] | None = None, restarts: int | None = None, data_seed: int = 0) -> list[dict]:
    """Configs of the formal-language grid: tasks x models x modes x restarts (seeds 0..N-1)."""
    sc = get_scale(scale)
    if restarts is not None and int(restarts) < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    return [formal_config(t, m, f, s, sc, data_seed)
            for t in (tasks or TASKS)
            for m in (models or FORMAL_MODELS)
            for f in (modes or MODES)
            for s in range(sc.for_model(m).restarts if restarts is None else int(restarts))]


def ptb_grid(scale: str | Scale, models: Iterable[str] | None = None, modes: Iterable[str] | None = None,
             restarts: int | None = None, embedding_group: str | None = None,
             root: str | os.PathLike | None = None) -> list[dict]:
    """Configs of the PTB grid: models x modes x restarts.

    The restarts are seeds 0..N-1, or, at a scale with a learning-rate search
    (``ptb_draws``), the N best draws of the search stored in ``root``
    (:func:`ptb_seeds`); while the search is not stored there are no cells yet
    and the list is empty (:func:`ptb_search` gives the search's own configs).
    """
    sc = get_scale(scale)
    restarts = sc.ptb_restarts if restarts is None else int(restarts)
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    seeds = ptb_seeds(sc, restarts, root)
    return [ptb_config(m, f, s, sc, embedding_group)
            for m in (models or PTB_MODELS) for f in (modes or MODES) for s in seeds or ()]


SEARCH_MODEL, SEARCH_MODE = "lstm-256", "none"  # the model and mode a PTB learning-rate search trains


def ptb_search(scale: str | Scale) -> list[dict]:
    """The configs of a scale's PTB learning-rate search: ``ptb_draws`` draws (seeds
    0..N-1) of lstm-256 in mode none, one replica-batched group with successive
    halving after the epochs of ``ptb_halving`` (:meth:`marnn.train.loop.Tracker.halve`);
    empty for a scale without a search."""
    sc = get_scale(scale)
    return [ptb_config(SEARCH_MODEL, SEARCH_MODE, s, sc) for s in range(sc.ptb_draws or 0)]


def ptb_seeds(scale: str | Scale, restarts: int, root: str | os.PathLike | None = None) -> list[int] | None:
    """The seeds of a scale's PTB restarts: 0..N-1 without a search; with one, the
    ``restarts`` draws of the stored search with the lowest validation
    cross-entropy (the draw that survived the halving first; diverged draws never),
    or None while any record of the search is missing."""
    sc = get_scale(scale)
    if not sc.ptb_draws:
        return list(range(restarts))
    if restarts > sc.ptb_draws:
        raise ValueError(f"restarts must be at most the {sc.ptb_draws} draws of the {sc.name} search, got {restarts}")
    records = [store.load_record(c, root) for c in ptb_search(sc)]
    if any(r is None for r in records):
        return None
    ranked = sorted((r["valid"]["cross_entropy"], r["status"] == "pruned", r["seed"]) for r in records
                    if r is not None and r["status"] != "diverged" and r["valid"]["cross_entropy"] is not None)
    return [seed for _, _, seed in ranked[:restarts]]


def group_key(config: dict | RunConfig) -> str:
    """Everything but freeze mode and seed: runs with equal keys can share one batched model
    (:attr:`marnn.config.RunConfig.group_key`)."""
    return RunConfig.from_dict(config).group_key


def group_configs(configs: Iterable[dict], max_replicas: int | None = None) -> list[list[dict]]:
    """Batchable groups (order kept), each cut into pieces of at most ``max_replicas``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in configs:
        groups[group_key(c)].append(c)
    out: list[list[dict]] = []
    for members in groups.values():
        step = max_replicas or len(members)
        out.extend(members[i:i + step] for i in range(0, len(members), step))
    return out


def run_group(configs: list[dict], root: str | None = None, *, torch_threads: int | None = None,
              progress: bool = False, train_kwargs: dict | None = None) -> list[str]:
    """Train the members of one group that have no record yet and store them; returns the keys written.

    The load-or-train path of every trainer (:func:`marnn.train.run.train_missing`):
    each member is claimed first (:func:`marnn.store.hold`): members another
    live process is training are left to it, so two grids (or two workers
    given the same group again after a lost worker) never train one run
    twice; resumable after every epoch; falls back to halves (down to one run
    at a time) when the batched model does not fit in memory. Formal runs keep
    their selected weights beside their records.
    """
    from .train import set_threads
    from .train.run import train_missing

    # torch's threads and NumPy's BLAS threads both (the fused kernels multiply with NumPy): a
    # worker that pinned only torch's left OpenBLAS one thread per core, spinning against the
    # other workers: a PTB jm-hidden-247 chunk took ~3.7x the CPU time beside a second trainer
    set_threads(torch_threads)

    keep = all(RunConfig.from_dict(c).is_formal for c in configs)  # formal runs keep their selected weights
    return train_missing(configs, root, keep_weights=keep, progress=progress, **(train_kwargs or {}))


def _cost(group: list[dict]) -> float:
    return registry.cost(group[0]["model"]) * len(group)


def _priority(group: list[dict], root: str) -> tuple[bool, float]:
    """The order groups start in: those with a saved state first (half-trained: their
    records land soonest, their state files leave the folder), then the costliest."""
    from .train import resume

    return resume.state_path(group, resume.state_dir(root)).exists(), _cost(group)


def _dask_priority(key: tuple[bool, float]) -> int:
    """:func:`_priority` as dask's integer priority (larger runs first)."""
    started, cost = key
    return int(cost) + (1 << 30 if started else 0)


def local_cluster(workers: int | None = None, threads_per_worker: int = 1):
    """A LocalCluster of worker processes on loopback (one per core by default).

    The worker processes ignore SIGINT (they are stopped by closing the
    cluster), so Ctrl-C reaches only the command that started them, which
    then closes the cluster quietly: they are forked by a multiprocessing
    fork server started with SIGINT ignored (a disposition its children
    inherit), for which this sets dask's ``multiprocessing-method`` to
    ``forkserver`` (POSIX; elsewhere dask's default is kept)."""
    import logging
    import multiprocessing
    import signal

    import dask
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    # one malloc arena per worker process: the task thread then allocates from the main heap,
    # whose large freed blocks the trainers keep for reuse (marnn.train.large_blocks_kept); a
    # thread's own arena maps every block over 64 MB afresh (an R = 8 PTB chunk's
    # 80 MB gradients: 44,000 page faults and 0.07 s of system time per chunk, against
    # 6,700 and 0.02 s; the packed triangles of a windowed RNS chunk, 100-250 MB: ~50,000
    # page faults a second). Forked workers inherit the fork server's malloc, which reads
    # the variable when it starts (the nanny's pre-spawn environment comes too late for it)
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1})
    if "forkserver" in multiprocessing.get_all_start_methods() \
            and threading.current_thread() is threading.main_thread():
        from multiprocessing import forkserver

        from distributed.utils import get_mp_context

        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
        get_mp_context()  # registers dask's preload modules with the fork server
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        warnoptions = list(sys.warnoptions)  # passed on to the resource tracker this starts:
        sys.warnoptions.append("ignore:resource_tracker:UserWarning")  # no "leaked semaphore" after Ctrl-C
        arenas = os.environ.get("MALLOC_ARENA_MAX")
        os.environ["MALLOC_ARENA_MAX"] = "1"
        try:
            forkserver.ensure_running()
        finally:
            sys.warnoptions[:] = warnoptions
            signal.signal(signal.SIGINT, old)
            if arenas is None:
                os.environ.pop("MALLOC_ARENA_MAX", None)
            else:
                os.environ["MALLOC_ARENA_MAX"] = arenas
    # memory_limit=0: no per-worker cap. Dask's default cap (RAM / workers) kills a
    # worker training a windowed RNS/VRNS PTB group of 4 replicas (~10 GB of
    # autograd tape on 32 x 35 chunks); the OS is the better judge here.
    return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0", scheduler_port=0, memory_limit=0,
                        silence_logs=logging.CRITICAL)  # failures reach the grid through its futures


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C while a cluster or client is being built (an interrupted
    constructor leaves a half-built cluster that dask then fails to close, loudly);
    a Ctrl-C that came meanwhile is raised at the end of the block."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hits:
        signal.raise_signal(signal.SIGINT)  # the handler in force now decides (KeyboardInterrupt by default)


@contextlib.contextmanager
def _quiet_dask():
    """Silence distributed's shutdown chatter ("Worker process still alive after
    4.0 seconds, killing", lost-connection warnings) while a cluster closes."""
    import logging

    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def check_scheduler(address: str, timeout: float = 3.0) -> str:
    """A dask scheduler address ``[tcp://|tls://]HOST:PORT`` that accepts a TCP
    connection within ``timeout`` seconds (returned as given), else ValueError
    naming the problem and the accepted form."""
    import socket
    from urllib.parse import urlsplit

    form = "accepted: 'sync', or a dask scheduler address tcp://HOST:PORT (or tls://HOST:PORT)"
    raw = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(raw)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise ValueError(f"--scheduler {address!r} is not an address ({err}); {form}") from None
    if parts.scheme not in ("tcp", "tls") or not host or port is None or parts.path not in ("", "/"):
        raise ValueError(f"--scheduler {address!r} is not an address; {form}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ValueError(f"--scheduler {address!r}: no dask scheduler reachable at {host}:{port} within "
                         f"{timeout:g} s ({reason}); start one (dask scheduler) or use 'sync'") from None
    return address


def run_grid(configs: list[dict], root: str | None = None, *, scheduler: str | None = None, workers: int | None = None,
             client=None, progress: bool = True, max_replicas: int | None = None,
             on_group: Callable[[list[dict], list[str]], None] | None = None, torch_threads: int = 1,
             train_kwargs: dict | None = None, poll_s: float = 1.0) -> dict:
    """Run every missing config of ``configs`` in batched groups; returns a summary.

    ``progress``: a bar over the runs, and one line per finished epoch of each
    group on stderr (:mod:`marnn.train.epochlog`; from dask workers too).
    ``client``: an existing ``distributed.Client``; else ``scheduler``: an
    address (``tcp://...``), ``"sync"`` (in this process, no dask) or None (a
    fresh LocalCluster with ``workers`` processes). Failed groups are reported
    in the summary (``failed``) rather than stopping the others.

    Groups start half-trained first (those with a saved state), then the
    costliest. Runs that another live process has claimed (a second grid on the same
    store) are not trained here: the grid waits for them and counts them in
    ``elsewhere``; if their owner dies, the next round trains them.
    """
    from tqdm.auto import tqdm

    root = str(store.results_dir(root))
    t0 = time.perf_counter()
    store.clean_stale(root)
    todo = store.missing(configs, root)
    summary = {"planned": len(configs), "existing": len(configs) - len(todo), "groups": 0,
               "written": 0, "elsewhere": 0, "failed": [], "root": root}
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=progress_disabled(progress))
    # each group writes one line per finished epoch to stderr while the bar is on (marnn.train.epochlog)
    train_kwargs = {"epoch_lines": not progress_disabled(progress), **(train_kwargs or {})}
    lines = bool(train_kwargs["epoch_lines"])
    kwargs = {"torch_threads": torch_threads, "train_kwargs": train_kwargs}
    failed_keys: set[str] = set()

    def done(group, keys):
        summary["written"] += len(keys)
        if on_group:
            on_group(group, keys)

    def round_groups(todo):
        todo = [c for c in todo if store.config_key(c) not in failed_keys]
        groups = sorted(group_configs(todo, max_replicas), key=lambda g: _priority(g, root), reverse=True)
        summary["groups"] += len(groups)
        return groups

    def fail(g, err):
        summary["failed"].append(_failure(g, err))
        failed_keys.update(store.config_key(c) for c in g)

    def rounds(run_round):
        """Train what is missing; wait for runs other processes hold; again for runs
        whose holder died, until nothing is missing (or nothing moves)."""
        nonlocal todo
        while todo:
            groups = round_groups(todo)
            if not groups:
                break
            written = summary["written"]
            run_round(groups)
            todo = [c for c in store.missing(todo, root) if store.config_key(c) not in failed_keys]
            busy = [c for c in todo if store.claimed_elsewhere(c, root)]
            if not busy and summary["written"] == written:
                break  # no progress: what is left failed (reported) or cannot be written
            while busy:
                time.sleep(poll_s)
                busy = [c for c in busy if store.claimed_elsewhere(c, root)]
            left = store.missing(todo, root)
            summary["elsewhere"] += len(todo) - len(left)
            bar.update(len(todo) - len(left))
            todo = left

    if not todo:
        pass
    elif scheduler == "sync" and client is None:
        def run_sync(groups):
            for g in groups:
                try:
                    done(g, run_group(g, root, progress=False, **kwargs))
                except Exception as err:  # keep going; report at the end
                    fail(g, err)
                bar.update(len(g))

        rounds(run_sync)
    else:
        own_cluster = own_client = None
        try:
            if client is None:
                from distributed import Client

                with _deferred_interrupt():
                    if scheduler:
                        own_client = client = Client(scheduler, timeout="10s")
                    else:
                        own_cluster = local_cluster(workers)
                        own_client = client = Client(own_cluster)
            from distributed import as_completed

            if lines:  # the workers' epoch lines, written here above the bar
                client.subscribe_topic(epochlog.TOPIC, _write_line)

            def run_dask(groups):
                futures = {}
                for g in groups:
                    fut = client.submit(run_group, g, root, pure=False, **kwargs,
                                        priority=_dask_priority(_priority(g, root)),
                                        key=f"group-{RunConfig.from_dict(g[0]).corpus}-{g[0]['model']}-{store.config_key(g[0])}"
                                            f"-{secrets.token_hex(3)}")
                    futures[fut] = g
                for fut in as_completed(futures):
                    g = futures[fut]
                    try:
                        done(g, fut.result())
                    except Exception as err:
                        fail(g, err)
                    bar.update(len(g))

            rounds(run_dask)
        finally:
            if own_client is not None or own_cluster is not None:
                with _quiet_dask():
                    if client is not None and lines:
                        with contextlib.suppress(Exception):  # not subscribed, or the client is gone
                            client.unsubscribe_topic(epochlog.TOPIC)
                    if own_client is not None:
                        own_client.close()
                    if own_cluster is not None:
                        own_cluster.close()
    bar.close()
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    return summary


def _write_line(event: tuple) -> None:
    """A dask event ``(timestamp, line)`` of :data:`marnn.train.epochlog.TOPIC`: one epoch line."""
    epochlog.write(str(event[1]))


def _failure(group: list[dict], err: BaseException) -> dict:
    return {"task": RunConfig.from_dict(group[0]).corpus, "model": group[0]["model"], "runs": len(group),
            "error": f"{type(err).__name__}: {err}".splitlines()[0][:300],
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))[-2000:]}
