"""The benchmark's plan, table, limits and cost model (the timings themselves are never asserted)."""
from __future__ import annotations

import json

import pytest

from marnn import bench, models, registry, scales


def test_plan_has_rows_per_thread_count(monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    specs = bench.plan(["lstm", "rns-3-3"], ["lstm-256"], quick=True)
    reps = [(s["model"], s["threads"], s["R"]) for s in specs if s["kind"] == "replicas"]
    assert reps == [("lstm", 1, 1), ("lstm", 1, 40), ("lstm", 2, 1), ("lstm", 2, 40)]  # no RNS replica rows
    twins = [(s["model"], s["threads"]) for s in specs if s["kind"] == "torch"]
    assert twins == [("torch-lstm", 1), ("torch-lstm-256", 1), ("torch-lstm", 2), ("torch-lstm-256", 2)]
    assert {s["threads"] for s in specs if s["kind"] == "train"} == {1, 2}
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 1)
    assert {s["threads"] for s in bench.plan(["lstm"], [], quick=True)} == {1}


def test_limit_fields():
    cfg = models.make_config("lstm-256", vocab_size=10001)
    gflop = bench.step_gflop("ptb", cfg, 32, 35)
    assert gflop == pytest.approx(20.728, abs=1e-3)  # 3 x (classifier + embedding + recurrent products)
    assert bench.step_gflop("torch", cfg, 32, 35) == gflop  # nn.LSTM twin: the same step
    row = bench.add_limit(dict(kind="ptb", model="lstm-256", n=35, R=1, threads=2, ms=800.0, cpu_ms=1200.0,
                               gflop=gflop), 100.0)
    assert row["bound_ms"] == pytest.approx(207.28, abs=0.01)
    assert row["x_limit"] == pytest.approx(800.0 / 207.28, rel=1e-4)
    assert row["x_limit_cpu"] == pytest.approx(1200.0 / (2 * 207.28), rel=1e-4)
    assert row["binds"] == "flop" and row["mem_ms"] is None
    assert bench.add_limit(dict(row), None)["x_limit"] is None
    # the memory bound: bytes / triad bandwidth, the larger bound is the limit
    gbyte = bench.step_gbyte("ptb", cfg, 32, 35)
    assert gbyte > 0.1  # logits 32 x 35 x 10001 floats, 4 passes, alone are 0.18 GB
    both = bench.add_limit(dict(row, gbyte=gbyte), 100.0, 10.0)
    assert both["mem_ms"] == pytest.approx(100 * gbyte) and both["flop_ms"] == pytest.approx(207.28, abs=0.01)
    assert both["binds"] == ("memory" if both["mem_ms"] > both["flop_ms"] else "flop")
    assert both["bound_ms"] == max(both["mem_ms"], both["flop_ms"])
    slow_mem = bench.add_limit(dict(row, gbyte=gbyte), 100.0, 0.01)
    assert slow_mem["binds"] == "memory" and slow_mem["x_limit"] == pytest.approx(800.0 / slow_mem["mem_ms"])
    only_mem = bench.add_limit(dict(row, gbyte=gbyte), None, 10.0)
    assert only_mem["binds"] == "memory" and only_mem["x_limit"] is not None
    formal = models.make_config("jm-10", task="marked-copy")
    assert bench.step_gflop("replicas", formal, 10, 60, R=40) == pytest.approx(40 * bench.step_gflop(
        "train", formal, 10, 60))


def test_table_reports_ratios_twins_and_targets():
    rows = [dict(kind="replicas", model="jm-10", n=60, R=R, threads=t, ms=ms, cpu_ms=ms)
            for (t, R, ms) in [(1, 1, 10.0), (1, 40, 80.0), (2, 1, 10.0), (2, 40, 40.0)]]
    rows.append(dict(kind="train", model="rns-3-3", n=60, R=1, threads=1, ms=None, note="ValueError: boom"))
    rows.append(dict(kind="train", model="lstm", n=60, R=1, threads=1, ms=3.0, cpu_ms=3.0))
    rows.append(dict(kind="torch", model="torch-lstm", n=60, R=1, threads=1, ms=4.0, cpu_ms=4.0))
    rows.append(dict(kind="ptb", model="rns-4-5", n=35, R=1, threads=2, ms=900.0, cpu_ms=1000.0, gflop=30.0))
    for r in rows:
        bench.add_limit(r, 100.0 if r.get("gflop") else None)
    text = bench.table(rows)
    assert "jm-10, 1 thread: R=40 costs 8.0x R=1" in text
    assert "jm-10, 2 threads: R=40 costs 4.0x R=1" in text
    assert "per replica 10.0x faster than one at a time" in text  # 40 x 10 ms / 40 ms
    assert "ValueError: boom" in text
    assert "lstm vs nn.LSTM, 1 thread, n=60: 3.0 ms vs 4.0 ms wall (0.75x" in text
    assert "ptb rns-4-5 n=35 R=1, 2 threads: 3.0x its limit (flop bound; cpu 1.7x; target <= 3x: met)" in text
    assert "| 2.0 ms |" in text  # per replica: 80 ms / 40


def test_backend_option_reaches_the_child_processes(monkeypatch):
    """--backend sets $MARNN_FUSED_BACKEND, which the spawned measuring process reads."""
    monkeypatch.delenv("MARNN_FUSED_BACKEND", raising=False)
    spec = dict(kind="eval", model="lstm", n=5, R=1, batch=1, repeats=1)
    rows = bench.run([spec], backend="numpy", peak=False)
    assert [r["backend"] for r in rows] == ["numpy"]
    assert rows[0]["gflop"] > 0 and rows[0]["x_limit"] is None
    assert [r["backend"] for r in bench.run([spec], backend="auto", peak=False)] == ["auto"]


def fake_units(scale):
    """Units with made-up times: 1 ms per replica and step (train), 0.5 ms forward."""
    units = bench.unit_specs(scale)
    for u in units:
        u.update(train_s=1e-3 * u["R"], fwd_s=0.5e-3 * u["R"])
    return units


@pytest.mark.parametrize("name", list(scales.SCALES))
def test_plan_covers_every_scale(name):
    sc = scales.get_scale(name)
    proj = bench.project(name, fake_units(name))
    assert len(proj["groups"]) == 7 * len(registry.FORMAL_MODELS)
    assert [c["model"] for c in proj["ptb"]] == list(registry.PTB_MODELS)
    g = proj["groups"][0]
    G = 4 * sc.restarts
    steps = sc.train_size // sc.batch_size
    assert g["train_s"] == pytest.approx(sc.max_epochs * steps * G * 1e-3)
    assert g["valid_s"] == pytest.approx(sc.max_epochs * (sc.valid_size // sc.batch_size) * G * 0.5e-3)
    assert proj["total_cpu_s"] == pytest.approx(proj["formal_cpu_s"] + proj["ptb_cpu_s"])
    assert "Total: formal" in bench.plan_text(proj)


def test_check_uses_the_records_epochs(tmp_path):
    # one formal group of 2 stored records: one trained 3 epochs, the other 1 epoch
    from marnn import store
    from marnn.train import formal_config
    from marnn.train.formal import train_formal

    from test_train import toy_builder

    sc = scales.get_scale("smoke")
    cfgs = [formal_config("marked-copy", "lstm", "none", s, sc.with_(max_epochs=3, early_stop=9)) for s in (0, 1)]
    recs = train_formal(cfgs, build=toy_builder())
    recs[1]["curve"] = recs[1]["curve"][:1]
    for r in recs:
        r["group"]["cpu_time_s"] = 10.0
        store.save_record(r, tmp_path)
    # a file that fails the store's schema is refused (moved aside), as everywhere else
    stray = tmp_path / "formal" / "smoke" / "marked-copy" / "lstm" / "stray.json"
    stray.write_text(json.dumps(dict(config=dict(kind="formal", task="marked-copy", model="lstm", scale="smoke"),
                                     curve=[{"epoch": 1}], group=dict(cpu_time_s=5.0, replicas=1))))
    units = fake_units("smoke")
    [c] = bench.check_records("smoke", units, root=tmp_path)
    assert not stray.exists() and list((tmp_path / store.INVALID_DIR).rglob("stray.json"))
    steps = sc.train_size // sc.batch_size
    assert c["epochs"] == 3 and c["replicas"] == 2
    expect = bench._formal_group(sc, __import__("marnn").tasks.get("marked-copy"), "lstm", units, [2, 1, 1])
    assert c["predicted_cpu_s"] == pytest.approx(expect["cpu_s"])
    assert expect["train_s"] == pytest.approx(steps * 4 * 1e-3)  # 2 + 1 + 1 live replica-epochs
    assert c["ratio"] == pytest.approx(expect["cpu_s"] / 10.0)


def test_plan_option_errors(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--plan", "huge"])
    assert "huge" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--check"])
    assert "--from-json and --check go with --plan SCALE" in capsys.readouterr().err


def test_plan_from_json(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"units": fake_units("smoke")}))
    assert bench.main(["--plan", "smoke", "--from-json", str(path)]) == 0
    assert "Projected cost of the smoke grid" in capsys.readouterr().out
    path.write_text("{}")
    with pytest.raises(SystemExit):
        bench.main(["--plan", "smoke", "--from-json", str(path)])
    assert "not the JSON of `marnn bench --plan SCALE --json`" in capsys.readouterr().err


def test_unit_specs_follow_the_scale():
    quick, paper = bench.unit_specs("quick"), bench.unit_specs("paper")
    formal = [(u["model"], u["n"], u["R"]) for u in quick if u["setting"] == "formal"]
    assert ("rns-3-3", 10, 12) in formal and ("rns-3-3", 15, 12) in formal and ("rns-3-3", 20, 12) in formal
    assert {u["R"] for u in paper if u["setting"] == "formal"} == {bench.UNIT_REPLICAS}  # 40 capped at 12
    assert {(u["n"], u["R"], u["batch"]) for u in paper if u["setting"] == "ptb"} == {(35, 4, 32)}
