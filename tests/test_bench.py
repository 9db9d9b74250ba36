"""The benchmark's plan and table (the timings themselves are never asserted)."""
from __future__ import annotations

from marnn import bench


def test_plan_has_replica_rows_per_thread_count(monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    specs = bench.plan(["lstm", "rns-3-3"], [], quick=True)
    reps = [(s["model"], s["threads"], s["R"]) for s in specs if s["kind"] == "replicas"]
    assert reps == [("lstm", 1, 1), ("lstm", 1, 40), ("lstm", 2, 1), ("lstm", 2, 40)]  # no RNS replica rows
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 1)
    assert {s["threads"] for s in bench.plan(["lstm"], [], quick=True) if s["kind"] == "replicas"} == {1}


def test_table_reports_the_replica_ratio_per_thread_count():
    rows = [dict(kind="replicas", model="jm-10", n=60, R=R, threads=t, ms=ms, cpu_ms=ms)
            for (t, R, ms) in [(1, 1, 10.0), (1, 40, 80.0), (2, 1, 10.0), (2, 40, 40.0)]]
    rows.append(dict(kind="train", model="rns-3-3", n=60, R=1, threads=1, ms=None, note="ValueError: boom"))
    text = bench.table(rows)
    assert "jm-10, 1 thread: R=40 costs 8.0x R=1" in text
    assert "jm-10, 2 threads: R=40 costs 4.0x R=1" in text
    assert "per replica 10.0x faster than one at a time" in text  # 40 x 10 ms / 40 ms
    assert "ValueError: boom" in text



def test_backend_option_reaches_the_child_processes(monkeypatch):
    """--backend sets $MARNN_FUSED_BACKEND, which the spawned measuring process reads."""
    monkeypatch.delenv("MARNN_FUSED_BACKEND", raising=False)
    spec = dict(kind="eval", model="lstm", n=5, R=1, batch=1, repeats=1)
    assert [r["backend"] for r in bench.run([spec], backend="numpy")] == ["numpy"]
    assert [r["backend"] for r in bench.run([spec], backend="auto")] == ["auto"]
