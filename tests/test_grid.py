"""Grids: planning, grouping, dask LocalCluster, and kill-and-resume of `marnn grid`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marnn import grid, store
from marnn.scales import get_scale
from marnn.train import run

REPO = Path(__file__).resolve().parent.parent
SMOKE = get_scale("smoke")


def _env(**extra):
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def test_plan_and_groups():
    cfgs = grid.formal_grid("smoke", tasks=["count-3", "marked-copy"], models=["lstm", "jm-10"], restarts=3)
    assert len(cfgs) == 2 * 2 * 4 * 3
    groups = grid.group_configs(cfgs)
    assert len(groups) == 4 and all(len(g) == 12 for g in groups)
    assert all(len({(c["task"], c["model"]) for c in g}) == 1 for g in groups)
    assert {(c["freeze"], c["seed"]) for c in groups[0]} == {(f, s) for f in ("none", "m", "c", "cm") for s in range(3)}
    cut = grid.group_configs(cfgs, max_replicas=5)
    assert sorted(len(g) for g in cut)[:4] == [2, 2, 2, 2] and max(len(g) for g in cut) == 5
    assert len(grid.formal_grid("smoke")) == 7 * 5 * 4 * SMOKE.restarts
    assert len(grid.ptb_grid("smoke", models=["lstm-256"])) == 4 * SMOKE.ptb_restarts
    with pytest.raises(ValueError):
        grid.formal_grid("smoke", restarts=0)


def test_sync_grid_runs_only_what_is_missing(tmp_path):
    cfgs = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm"], modes=["none", "c"], restarts=2)
    run.run_or_load(cfgs[0], tmp_path)  # one already there
    before = store.record_path(cfgs[0], tmp_path).stat().st_mtime_ns
    s = grid.run_grid(cfgs, tmp_path, scheduler="sync", progress=False)
    assert (s["planned"], s["existing"], s["written"], s["failed"]) == (4, 1, 3, [])
    assert store.record_path(cfgs[0], tmp_path).stat().st_mtime_ns == before
    assert store.missing(cfgs, tmp_path) == []
    rec = store.load_record(cfgs[1], tmp_path)
    assert rec["group"]["replicas"] == 3  # the three missing runs trained as one batched model
    again = grid.run_grid(cfgs, tmp_path, scheduler="sync", progress=False)
    assert again["written"] == 0 and again["existing"] == 4


def test_groups_with_a_saved_state_start_first(tmp_path, monkeypatch):
    from marnn.train import resume

    cfgs = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm", "jm-10", "rns-3-3"], modes=["none"],
                            restarts=1)
    groups = grid.group_configs(cfgs)
    order: list[str] = []
    monkeypatch.setattr(grid, "run_group", lambda g, *a, **k: order.append(g[0]["model"]) or [])
    grid.run_grid(cfgs, tmp_path, scheduler="sync", progress=False)
    assert order == ["rns-3-3", "jm-10", "lstm"]  # the costliest first
    half = next(g for g in groups if g[0]["model"] == "lstm")
    folder = resume.state_dir(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    resume.state_path(half, folder).write_bytes(b"")  # a half-trained group (only its file's presence counts)
    order.clear()
    grid.run_grid(cfgs, tmp_path, scheduler="sync", progress=False)
    assert order == ["lstm", "rns-3-3", "jm-10"]
    assert grid._dask_priority(grid._priority(half, str(tmp_path))) > grid._dask_priority((False, 1e6))


def test_formal_runs_keep_their_selected_weights_beside_the_record(tmp_path):
    from marnn.analysis.weights import stored_group
    from marnn.tasks import get as get_task
    from marnn.tasks.data import make_task_data
    from marnn.train import scale_from_config
    from marnn.train.evaluate import evaluate_bins

    cfgs = grid.formal_grid("smoke", tasks=["marked-copy"], models=["jm-10"], modes=["none", "m"], restarts=2)
    assert stored_group(cfgs, tmp_path) is None
    grid.run_grid(cfgs, tmp_path, scheduler="sync", progress=False)
    group = stored_group(cfgs, tmp_path)
    assert group is not None and group.records == [store.load_record(c, tmp_path) for c in cfgs]
    # the kept weights are the selected ones: evaluated again, they give every bin of the records
    task, sc = get_task("marked-copy"), scale_from_config(cfgs[0])
    data = make_task_data(task, sc, 0)
    again = evaluate_bins(group.model, task, data.test, dict(zip(sc.bin_names, sc.test_bins, strict=True)))
    for rec, res in zip(group.records, again, strict=True):
        for b in sc.bin_names:
            assert res["bins"][b]["accuracy"] == pytest.approx(rec["bins"][b]["accuracy"], abs=1e-12)
    # each run keeps its own replica (same init and lr for none and m of one restart, other weights)
    w_none, w_m = (store.load_weights(c, tmp_path) for c in cfgs[:3:2])
    assert w_none.keys() == w_m.keys() and any(not (w_none[n] == w_m[n]).all() for n in w_none)
    # a weights file of another run is refused and moved aside, never used
    path = store.weights_path(cfgs[0], tmp_path)
    path.write_bytes(store.weights_path(cfgs[1], tmp_path).read_bytes())
    assert store.load_weights(cfgs[0], tmp_path) is None and not path.exists()
    assert stored_group(cfgs, tmp_path) is None
    assert list((tmp_path / "invalid").rglob("*.pt"))


def test_ptb_cells_wait_for_the_search_and_then_use_its_draw(tmp_path):
    sc = SMOKE.with_(ptb_draws=2, ptb_halving=(1,), ptb_max_epochs=2, ptb_early_stop=2)
    assert grid.ptb_grid(SMOKE, ["lstm-256"], ["none"], root=tmp_path)[0]["seed"] == 0  # no search: seeds 0..N-1
    search = grid.ptb_search(sc)
    assert [c["seed"] for c in search] == [0, 1] and grid.ptb_search(SMOKE) == []
    assert grid.ptb_seeds(sc, 1, tmp_path) is None and grid.ptb_grid(sc, root=tmp_path) == []
    with pytest.raises(ValueError, match="at most the 2 draws"):
        grid.ptb_seeds(sc, 3, tmp_path)
    grid.run_grid(search, tmp_path, scheduler="sync", progress=False)
    recs = [store.load_record(c, tmp_path) for c in search]
    assert sorted(r["status"] == "pruned" for r in recs) == [False, True]
    assert sorted(len(r["curve"]) for r in recs) == [1, 2]
    best = min(recs, key=lambda r: r["valid"]["cross_entropy"])
    assert best["status"] != "pruned" and grid.ptb_seeds(sc, 1, tmp_path) == [best["seed"]]
    cells = grid.ptb_grid(sc, ["lstm-256", "jm-learned-22"], ["none", "m"], root=tmp_path)
    assert {c["seed"] for c in cells} == {best["seed"]} and len(cells) == 4
    # the search's survivor is the lstm-256 / none cell itself: found, not trained again
    assert store.load_record(cells[0], tmp_path) == best
    assert len(store.missing(cells, tmp_path)) == 3


def test_pages_read_only_train_nothing_and_list_the_missing_cells(tmp_path, monkeypatch):
    from marnn import book, report

    monkeypatch.setenv(store.NO_TRAIN_ENV, "1")
    df = report.formal_results("smoke", tasks=["count-3"], models=["lstm"], modes=["none"], root=tmp_path)
    assert df.empty and not list(tmp_path.rglob("*.json"))
    cells = report.missing_cells(report.formal_configs("smoke", ["count-3"], ["lstm"], ["none"]), tmp_path)
    assert cells["runs"].sum() == SMOKE.restarts
    assert "paper-2core" not in book.TRAINING_SCALES and "quick" in book.TRAINING_SCALES
    monkeypatch.setenv(store.NO_TRAIN_ENV, "")
    assert not report.formal_results("smoke", tasks=["count-3"], models=["lstm"], modes=["none"],
                                     root=tmp_path).empty


def test_local_cluster_with_two_worker_processes(tmp_path):
    from distributed import Client, LocalCluster

    cfgs = grid.formal_grid("smoke", tasks=["count-3", "marked-copy"], models=["lstm"], modes=["none", "cm"],
                            restarts=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", scheduler_port=0) as cluster, Client(cluster) as client:
        s = grid.run_grid(cfgs, tmp_path, client=client, progress=False)
        pids = {r["env"]["pid"] for _, r in store.iter_records(tmp_path)}
    assert s["failed"] == [] and s["written"] == 4 and s["groups"] == 2
    assert os.getpid() not in pids  # computed in the worker processes
    df = store.load_frame(tmp_path)
    assert set(df["task"]) == {"count-3", "marked-copy"} and df["best"].any()


def test_local_cluster_workers_use_one_malloc_arena():
    """A worker's task thread allocates from the main heap, whose freed blocks the trainers keep
    (marnn.train.large_blocks_kept). glibc reads MALLOC_ARENA_MAX when a process starts: for a
    forked worker, when the fork server started (the worker's os.environ gets it too late)."""
    from distributed import Client

    with grid.local_cluster(1) as cluster, Client(cluster) as client:
        env = list(client.run(lambda: (os.environ.get("OPENBLAS_NUM_THREADS"),
                                       b"MALLOC_ARENA_MAX=1" in Path("/proc/self/environ").read_bytes().split(b"\0")))
                   .values())
    assert env == [("1", True)]


def _records(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*.json") if not p.name.startswith(".")}


def test_killed_grid_resumes_without_recomputing(tmp_path):
    root = tmp_path / "results"
    args = ["grid", "--scale", "smoke", "--tasks", "count-3", "marked-copy", "unmarked-copy",
            "--models", "lstm", "jm-10", "--modes", "none", "m", "--restarts", "1", "--results", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "marnn.cli", *args, "--workers", "1"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not _records(root):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "no record appeared"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its scheduler and its worker processes
        proc.wait()
    time.sleep(0.5)
    survived = _records(root)
    planned = grid.formal_grid("smoke", tasks=["count-3", "marked-copy", "unmarked-copy"], models=["lstm", "jm-10"],
                               modes=["none", "m"], restarts=1)
    assert 0 < len(survived) < len(planned)
    for path in survived:
        assert store.read_record(path) is not None  # complete, never torn

    out = subprocess.run([sys.executable, "-m", "marnn.cli", *args, "--scheduler", "sync"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(survived)} already stored" in out.stdout
    after = _records(root)
    assert len(after) == len(planned) and store.missing(planned, root) == []
    for path, stamp in survived.items():
        assert after[path] == stamp  # not recomputed, not rewritten
    assert not list(root.rglob(".*.tmp"))


def test_out_of_memory_falls_back_to_smaller_batches(tmp_path):
    from test_train import toy_builder

    toy = toy_builder()
    sizes = []

    def picky_build(name, *, replicas=1, **kw):
        sizes.append(replicas)
        if replicas > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return toy(name, replicas=replicas, **kw)

    cfgs = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm"], modes=["none", "m"], restarts=2)
    keys = grid.run_group(cfgs, str(tmp_path), train_kwargs={"build": picky_build})
    assert len(keys) == 4 and store.missing(cfgs, tmp_path) == []
    assert sizes[0] == 4 and sizes.count(1) >= 4
    assert all(r["group"]["replicas"] == 1 for _, r in store.iter_records(tmp_path))

    def broken(name, **kw):
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="real bug"):  # other errors are not swallowed
        grid.run_group(grid.formal_grid("smoke", tasks=["marked-copy"], models=["lstm"], restarts=1), str(tmp_path),
                       train_kwargs={"build": broken})


def test_a_normal_grid_exit_prints_nothing_on_stderr(tmp_path):
    args = ["grid", "--scale", "smoke", "--tasks", "count-3", "--models", "lstm", "--modes", "none", "m",
            "--restarts", "1", "--results", str(tmp_path), "--workers", "2"]
    out = subprocess.run([sys.executable, "-m", "marnn.cli", *args], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "2 written" in out.stdout, out.stderr[-2000:]
    assert out.stderr == ""  # no "Worker process still alive", no lost-connection warnings
    assert not list(tmp_path.rglob(".*.lock")) and not list(tmp_path.rglob(".*.tmp"))


def test_a_grid_worker_pins_numpy_blas_as_well_as_torch():
    """run_group (what each grid worker runs) pins NumPy's BLAS to the worker's threads, not only
    torch's: left at one thread per core, OpenBLAS spun against the other workers."""
    from conftest import run_at_two_threads

    out = run_at_two_threads(
        "import torch\n"
        "from marnn import grid\n"
        "import marnn.train.run as run\n"
        "seen = []\n"
        "run.train_missing = lambda configs, root, **kw: seen.append((blas(), torch.get_num_threads())) or []\n"
        "grid.run_group([], None, torch_threads=1)\n"
        "print(before, *seen)\n")
    assert out == ["[2]", "([1],", "1)"], out
