"""Grids of runs: plan the cells, find the missing ones, train them in batched groups via dask.

A grid is a list of run configs (:func:`formal_grid`, :func:`ptb_grid`).
:func:`run_grid` drops every config that already has a record, groups the rest
by everything except freeze mode and seed (:func:`group_configs`: the restarts
x modes of one (task, model) become ONE replica-batched model), and runs each
group as one task on a dask.distributed cluster; each worker writes its records
straight into the shared store (atomically), so killing a grid at any moment
and running it again computes only what is missing.

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

import os
import time
import traceback
from collections import defaultdict
from typing import Callable, Iterable

from . import store
from .scales import Scale, get_scale
from .train import formal_config, formal_models, freeze_modes, progress_disabled, ptb_config, ptb_models

# relative cost per replica (measured at quick scale on a 2-core CPU), used only
# to start the expensive groups first so that they do not finish last
COST = {"rns-3-3": 15.0, "jm-10": 1.8, "jm-3.3.3": 1.8, "jm-hidden": 1.8, "lstm": 1.0,
        "rns-4-5": 100.0, "vrns-3-3-5": 150.0, "vrns-3-3-5-published": 150.0, "jm-hidden-247": 2.0,
        "jm-learned-22": 2.0, "lstm-256": 1.0}


def formal_grid(scale: str | Scale, tasks: Iterable[str] | None = None, models: Iterable[str] | None = None,
                modes: Iterable[str] | None = None, restarts: int | None = None, data_seed: int = 0) -> list[dict]:
    """Configs of the formal-language grid: tasks x models x modes x restarts (seeds 0..N-1)."""
    from . import tasks as task_registry

    sc = get_scale(scale)
    if restarts is not None and int(restarts) < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    return [formal_config(t, m, f, s, sc, data_seed)
            for t in (tasks or task_registry.names())
            for m in (models or formal_models())
            for f in (modes or freeze_modes())
            for s in range(sc.for_model(m).restarts if restarts is None else int(restarts))]


def ptb_grid(scale: str | Scale, models: Iterable[str] | None = None, modes: Iterable[str] | None = None,
             restarts: int | None = None, embedding_group: str | None = None) -> list[dict]:
    """Configs of the PTB grid: models x modes x restarts."""
    sc = get_scale(scale)
    restarts = sc.ptb_restarts if restarts is None else int(restarts)
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    return [ptb_config(m, f, s, sc, embedding_group)
            for m in (models or ptb_models()) for f in (modes or freeze_modes()) for s in range(restarts)]


def group_key(config: dict) -> str:
    """Everything but freeze mode and seed: runs with equal keys can share one batched model."""
    rest = {k: v for k, v in config.items() if k not in ("freeze", "seed")}
    return store.canonical(rest)


def group_configs(configs: Iterable[dict], max_replicas: int | None = None) -> list[list[dict]]:
    """Batchable groups (order kept), each cut into pieces of at most ``max_replicas``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in configs:
        groups[group_key(c)].append(c)
    out = []
    for members in groups.values():
        step = max_replicas or len(members)
        out.extend(members[i:i + step] for i in range(0, len(members), step))
    return out


def _is_memory_error(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def run_group(configs: list[dict], root: str | None = None, *, torch_threads: int | None = None,
              progress: bool = False, train_kwargs: dict | None = None) -> list[str]:
    """Train the members of one group that have no record yet and store them; returns the keys written.

    Falls back to halves (down to one run at a time) when the batched model
    does not fit in memory.
    """
    from .train import resume, train

    if torch_threads:
        import torch
        torch.set_num_threads(int(torch_threads))
    todo = store.missing(configs, root)
    if not todo:
        return []
    train_kwargs = {"state_dir": resume.state_dir(root), **(train_kwargs or {})}  # resumable after every epoch
    try:
        records = train(todo, progress=progress, **train_kwargs)
    except (RuntimeError, MemoryError) as err:
        if len(todo) == 1 or not _is_memory_error(err):
            raise
        half = len(todo) // 2
        return (run_group(todo[:half], root, progress=progress, train_kwargs=train_kwargs)
                + run_group(todo[half:], root, progress=progress, train_kwargs=train_kwargs))
    written = []
    for rec in records:
        if store.load_record(rec["config"], root) is None:  # another worker may have been faster
            store.save_record(rec, root)
            written.append(store.config_key(rec["config"]))
    resume.remove(todo, train_kwargs["state_dir"])
    return written


def _cost(group: list[dict]) -> float:
    return COST.get(group[0]["model"], 1.0) * len(group)


def local_cluster(workers: int | None = None, threads_per_worker: int = 1):
    """A LocalCluster of worker processes on loopback (one per core by default)."""
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    # memory_limit=0: no per-worker cap. Dask's default cap (RAM / workers) kills a
    # worker training a windowed RNS/VRNS PTB group of 4 replicas (~10 GB of
    # autograd tape on 32 x 35 chunks); the OS is the better judge here.
    return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0", scheduler_port=0, memory_limit=0)


def run_grid(configs: list[dict], root: str | None = None, *, scheduler: str | None = None, workers: int | None = None,
             client=None, progress: bool = True, max_replicas: int | None = None,
             on_group: Callable[[list[dict], list[str]], None] | None = None) -> dict:
    """Run every missing config of ``configs`` in batched groups; returns a summary.

    ``client``: an existing ``distributed.Client``; else ``scheduler``: an
    address (``tcp://...``), ``"sync"`` (in this process, no dask) or None (a
    fresh LocalCluster with ``workers`` processes). Failed groups are reported
    in the summary (``failed``) rather than stopping the others.
    """
    from tqdm.auto import tqdm

    root = str(store.results_dir(root))
    t0 = time.perf_counter()
    store.clean_temp(root)
    todo = store.missing(configs, root)
    groups = sorted(group_configs(todo, max_replicas), key=_cost, reverse=True)
    summary = {"planned": len(configs), "existing": len(configs) - len(todo), "groups": len(groups),
               "written": 0, "failed": [], "root": root}
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=progress_disabled(progress))

    def done(group, keys):
        summary["written"] += len(keys)
        bar.update(len(group))
        if on_group:
            on_group(group, keys)

    if not groups:
        pass
    elif scheduler == "sync" and client is None:
        for g in groups:
            try:
                done(g, run_group(g, root, torch_threads=1, progress=False))
            except Exception as err:  # keep going; report at the end
                summary["failed"].append(_failure(g, err))
    else:
        own_cluster = own_client = None
        try:
            if client is None:
                from distributed import Client

                if scheduler:
                    own_client = client = Client(scheduler)
                else:
                    own_cluster = local_cluster(workers)
                    own_client = client = Client(own_cluster)
            from distributed import as_completed

            futures = {}
            for g in groups:
                fut = client.submit(run_group, g, root, torch_threads=1, pure=False, priority=int(_cost(g)),
                                    key=f"group-{g[0].get('task', 'ptb')}-{g[0]['model']}-{store.config_key(g[0])}")
                futures[fut] = g
            for fut in as_completed(futures):
                g = futures[fut]
                try:
                    done(g, fut.result())
                except Exception as err:
                    summary["failed"].append(_failure(g, err))
        finally:
            if own_client is not None:
                own_client.close()
            if own_cluster is not None:
                own_cluster.close()
    bar.close()
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    return summary


def _failure(group: list[dict], err: BaseException) -> dict:
    return {"task": group[0].get("task", "ptb"), "model": group[0]["model"], "runs": len(group),
            "error": f"{type(err).__name__}: {err}".splitlines()[0][:300],
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))[-2000:]}
