"""A real dask cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1 (separate OS
processes), a smoke grid sent to it with --scheduler, one worker SIGKILLed while it trains."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from marnn import store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import faults  # noqa: E402

pytestmark = pytest.mark.slow


def test_grid_on_a_real_cluster_survives_a_killed_worker(tmp_path):
    root = tmp_path / "store"
    res = faults.worker_kill(root, tmp_path / "dask")
    assert res["rc"] == 0, res["out"][-1000:] + res["err"][-3000:]
    assert res["killed"] is not None, "no worker was seen holding a claim"
    assert res["workers_alive"] == 1  # the victim is gone, the grid finished on the other one
    assert "Traceback" not in res["err"]
    configs = faults.planned()
    assert store.missing(configs, root) == []  # complete
    assert faults.invalid_files(root) == []  # every record valid
    records = [rec for _, rec in store.iter_records(root)]
    assert len(records) == len(configs) == len({r["key"] for r in records})
    by_victim = sum(r["env"]["pid"] == res["killed"] for r in records)
    # none duplicated: each run stored once, trained by exactly one live worker
    assert faults.written(res["out"]) + by_victim == len(configs)
    assert not list(root.rglob(".*.lock")) and not list(root.rglob(".*.tmp"))
