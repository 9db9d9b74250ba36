"""Result store: keys, atomic records, run_or_load, the tidy frame."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marnn import paths, store
from marnn.scales import get_scale
from marnn.train import formal_config, run
from marnn.train.formal import train_formal

from test_train import toy_builder

SMOKE = get_scale("smoke")


@pytest.fixture(scope="module")
def records():
    cfgs = [formal_config("marked-copy", "lstm", f, s, SMOKE) for f in ("none", "m") for s in (0, 1)]
    return train_formal(cfgs, build=toy_builder())


def test_keys_are_stable_and_config_sensitive():
    a = formal_config("marked-copy", "lstm", "m", 0, SMOKE)
    b = formal_config("marked-copy", "lstm", "m", 0, SMOKE)
    assert store.config_key(a) == store.config_key(b) and len(store.config_key(a)) == 16
    assert store.config_key(a) != store.config_key(formal_config("marked-copy", "lstm", "m", 1, SMOKE))
    assert store.config_key(a) != store.config_key(
        formal_config("marked-copy", "lstm", "m", 0, SMOKE.with_(max_epochs=3)))
    # PTB-only scale fields do not touch formal configs
    assert store.config_key(a) == store.config_key(
        formal_config("marked-copy", "lstm", "m", 0, SMOKE.with_(ptb_bptt=7)))
    # a JSON round trip keeps the key
    assert store.config_key(json.loads(json.dumps(a))) == store.config_key(a)
    p = store.record_path(a, "/r")
    assert str(p).startswith("/r/formal/smoke/marked-copy/lstm/m-s0-") and p.suffix == ".json"


def test_results_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(store.ENV_VAR, raising=False)
    assert store.results_dir() == paths.REPO / "results"
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path))
    assert store.results_dir() == tmp_path
    assert store.results_dir(tmp_path / "x") == tmp_path / "x"


def test_save_is_atomic_and_round_trips(tmp_path, records):
    rec = records[0]
    path = store.save_record(rec, tmp_path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    back = store.load_record(rec["config"], tmp_path)
    assert back["key"] == store.config_key(rec["config"])
    assert back["bins"] == json.loads(json.dumps(rec["bins"]))
    assert store.is_complete(back, rec["config"])
    assert json.loads(path.read_text())["curve"][0]["epoch"] == 1


def test_torn_records_are_moved_aside_and_stale_temp_files_cleaned(tmp_path, records, capfd):
    cfg = records[0]["config"]
    path = store.record_path(cfg, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(records[0])[:200])  # a torn write (what os.replace prevents)
    dead = _dead_pid()
    tmp = path.parent / f".{path.stem}~{store._HOST}~{dead}~abcd.tmp"  # its writer is gone
    tmp.write_text("{")
    live = path.parent / f".{path.stem}~{store._HOST}~{os.getpid()}~abcd.tmp"  # being written right now
    live.write_text("{")
    other = path.parent / f".{path.stem}~another-host~{os.getpid()}~abcd.tmp"  # fresh, from another machine
    other.write_text("{")
    assert store.missing([cfg], tmp_path) == [cfg]
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err and "moved aside" in err, err
    assert not path.exists()
    moved = tmp_path / "invalid" / path.relative_to(tmp_path)
    assert moved.exists() and "not valid JSON" in moved.with_name(moved.name + ".reason.txt").read_text()
    assert list(store.iter_records(tmp_path)) == []  # invalid/ is never read as records
    assert store.clean_stale(tmp_path) == 1 and not tmp.exists() and live.exists() and other.exists()
    old = time.time() - store.LEASE_STALE_S - 10
    os.utime(other, (old, old))
    assert store.clean_stale(tmp_path) == 1 and not other.exists() and live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


CORRUPTIONS = {
    "accuracy 7.5": (lambda r: r["bins"]["bin0"].update(accuracy=7.5), "probability in [0, 1]"),
    "negative cross-entropy": (lambda r: r["valid"].update(cross_entropy=-5.0), "cross-entropy >= 0"),
    "string number": (lambda r: r["bins"]["bin1"].update(accuracy="0.9"), "finite number or null"),
    "boolean number": (lambda r: r["valid"].update(accuracy=True), "finite number or null"),
    "perplexity below 1": (lambda r: r["bins"]["bin2"].update(perplexity=0.5), "perplexity >= 1"),
    "missing bins": (lambda r: r.pop("bins"), "missing field 'bins'"),
    "missing valid": (lambda r: r.pop("valid"), "missing field 'valid'"),
    "missing a bin": (lambda r: r["bins"].pop("bin2"), "the scale has 3"),
    "empty bins": (lambda r: r.update(bins={}), "non-empty"),
    "bad status": (lambda r: r.update(status="great"), "status must be one of"),
    "status and diverged disagree": (lambda r: r.update(status="diverged"), "does not agree"),
    "wrong key": (lambda r: r.update(key="0" * 16), "not the hash of its config"),
    "edited config": (lambda r: r["config"].update(seed=7), "not the hash"),
    "negative count": (lambda r: r["bins"]["bin0"].update(symbols=-1), "integer >= 0"),
    "curve accuracy": (lambda r: r["curve"][0].update(valid_accuracy=2.0), "curve[0]"),
    "length accuracy": (lambda r: r["lengths"][0].update(accuracy=-0.1), "lengths[0]"),
    "untrained accuracy": (lambda r: r["untrained_lengths"][0].update(accuracy=1.5), "untrained_lengths[0]"),
    "untrained not a list": (lambda r: r.update(untrained_lengths={"bin0": []}), "untrained_lengths must be a list"),
    "not an object": (lambda r: r.clear(), "config missing"),
    "flag not boolean": (lambda r: r["bins"]["bin0"].update(ceiling_exact="yes"), "true or false"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_schema_rejects_and_moves_aside_every_corruption(name, tmp_path, records, capfd):
    edit, words = CORRUPTIONS[name]
    rec = json.loads(json.dumps(dict(records[0], key=store.config_key(records[0]["config"]))))
    assert store.problems(rec) is None
    path = store.save_record(rec, tmp_path)
    capfd.readouterr()
    bad = json.loads(json.dumps(rec))
    edit(bad)
    assert words in (store.problems(bad) or ""), store.problems(bad)
    path.write_text(json.dumps(bad))
    assert store.load_record(rec["config"], tmp_path) is None
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and words in err and "moved aside" in err, err
    assert not path.exists() and (tmp_path / "invalid" / path.relative_to(tmp_path)).exists()
    assert store.load_frame(tmp_path).empty  # no page ever sees it


def test_non_finite_numbers_in_json_are_invalid(tmp_path, records, capfd):
    rec = dict(records[0], key=store.config_key(records[0]["config"]))
    path = store.save_record(rec, tmp_path)
    path.write_text(path.read_text().replace('"accuracy": ', '"accuracy": NaN, "x": ', 1))
    assert store.read_record(path) is None
    assert "NaN" in capfd.readouterr().err


def test_file_under_another_name_is_invalid(tmp_path, records, capfd):
    rec = dict(records[0], key=store.config_key(records[0]["config"]))
    path = store.save_record(rec, tmp_path)
    other = store.record_path(records[1]["config"], tmp_path)
    os.replace(path, other)
    assert store.load_record(records[1]["config"], tmp_path) is None
    assert "file name does not match" in capfd.readouterr().err


def test_every_committed_record_passes_the_schema():
    files = [p for kind in ("formal", "ptb") for p in (paths.REPO / "results" / kind).rglob("*.json")]
    assert files
    bad = {str(p): store.problems(json.loads(p.read_text()), p) for p in files}
    assert {p: why for p, why in bad.items() if why} == {}


def test_boolean_fields_survive_the_store_and_reach_the_frame(tmp_path, records):
    rec = json.loads(json.dumps(records[0]))
    rec["bins"]["bin0"]["exact"] = False
    rec["bins"]["bin1"]["ceiling_exact"] = False
    store.save_record(rec, tmp_path)
    back = store.load_record(rec["config"], tmp_path)
    assert back["bins"]["bin0"]["exact"] is False and back["bins"]["bin1"]["ceiling_exact"] is False
    assert back["bins"]["bin2"]["ceiling_exact"] is True
    df = store.load_frame(tmp_path, lengths=False)
    flag = df[(df["metric"] == "ceiling_exact")].set_index("split")["value"]
    assert flag["bin1"] == 0.0 and flag["bin2"] == 1.0
    assert df[(df["metric"] == "exact")]["value"].tolist() == [0.0]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_respect_the_umask(umask, mode, tmp_path, records):
    old = os.umask(umask)
    try:
        path = store.save_record(records[0], tmp_path)
        lease = store.claim(records[1]["config"], tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(lease.path.stat().st_mode) == mode
    lease.release()


def test_claims_are_exclusive_and_released(tmp_path, records):
    cfg = records[0]["config"]
    lease = store.claim(cfg, tmp_path)
    assert lease is not None and lease.path.name.startswith(".") and lease.path.suffix == ".lock"
    info = json.loads(lease.path.read_text())
    assert info["host"] == store._HOST and info["pid"] == os.getpid()
    assert store.claim(cfg, tmp_path) is None  # not twice, not even by its holder
    assert not store.claimed_elsewhere(cfg, tmp_path)
    with store.hold([cfg, records[1]["config"]], tmp_path) as got:
        assert got == [records[1]["config"]]
    lease.release()
    assert not lease.path.exists()
    assert store.claim(cfg, tmp_path) is not None


def _plant_lock(cfg, root, **info) -> Path:
    lock = store._lock_path(store.record_path(cfg, root))
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps(info))
    return lock


def test_lock_staleness(tmp_path, records):
    cfg = records[0]["config"]
    # same host, the owner is gone: stale, taken over
    _plant_lock(cfg, tmp_path, host=store._HOST, pid=_dead_pid(), start=None)
    lease = store.claim(cfg, tmp_path)
    assert lease is not None and json.loads(lease.path.read_text())["pid"] == os.getpid()
    lease.release()
    # same host, a live owner (our parent): held
    parent = os.getppid()
    lock = _plant_lock(cfg, tmp_path, host=store._HOST, pid=parent, start=store._start_time(parent))
    assert store.claim(cfg, tmp_path) is None and store.claimed_elsewhere(cfg, tmp_path)
    # a killed process its parent has not reaped yet (a zombie) is gone too
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while (store._proc_stat(zombie.pid) or ["Z"])[0] != "Z" and time.time() < deadline:
        time.sleep(0.05)
    assert not store.owner_alive(store._HOST, zombie.pid, store._start_time(zombie.pid))
    zombie.wait()
    # ... unless that pid now belongs to a process started at another time (pid reuse)
    _plant_lock(cfg, tmp_path, host=store._HOST, pid=parent, start="1")
    assert store.lock_holder(lock) is None
    # another host: held while refreshed, stale once untouched for LEASE_STALE_S
    _plant_lock(cfg, tmp_path, host="elsewhere", pid=1, start=None)
    assert store.claim(cfg, tmp_path) is None
    old = time.time() - store.LEASE_STALE_S - 5
    os.utime(lock, (old, old))
    lease = store.claim(cfg, tmp_path)
    assert lease is not None
    lease.release()
    # a torn lock file (its writer died between create and write) is stale after a few seconds
    lock.write_text("{")
    assert store.claim(cfg, tmp_path) is None
    os.utime(lock, (old, old))
    assert store.claim(cfg, tmp_path) is not None


def test_held_leases_are_refreshed(tmp_path, records, monkeypatch):
    lease = store.claim(records[0]["config"], tmp_path)
    old = time.time() - 1000
    os.utime(lease.path, (old, old))
    lease.refresh()
    assert time.time() - lease.path.stat().st_mtime < 60
    lease.release()


_RACE = """
import json, os, sys, time
from marnn import store
cfg = json.loads(sys.argv[1])
while time.time() < float(sys.argv[3]):
    pass
lease = store.claim(cfg, sys.argv[2])
print("won" if lease is not None else "lost", flush=True)
time.sleep(1.5)
"""


@pytest.mark.parametrize("stale", [False, True])
def test_racing_processes_claim_once(stale, tmp_path, records):
    cfg = records[0]["config"]
    if stale:  # all of them find a dead owner's lock and try to take it over at once
        _plant_lock(cfg, tmp_path, host=store._HOST, pid=_dead_pid(), start=None)
    go = str(time.time() + 4)
    env = dict(os.environ, PYTHONPATH=str(paths.REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, json.dumps(cfg), str(tmp_path), go],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["lost"] * 5 + ["won"], outs


def test_run_or_load_trains_once(tmp_path, monkeypatch):
    cfg = formal_config("count-3", "lstm", "c", 0, SMOKE)
    first = run.run_or_load(cfg, tmp_path, build=toy_builder())
    mtime = store.record_path(cfg, tmp_path).stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("should not retrain")

    monkeypatch.setattr(run, "train", boom)
    second = run.run_or_load(cfg, tmp_path)
    assert second == first
    assert store.record_path(cfg, tmp_path).stat().st_mtime_ns == mtime


def test_load_frame_is_tidy_and_marks_the_best_restart(tmp_path, records):
    recs = [dict(r) for r in records]
    recs[1] = dict(recs[1], status="diverged", diverged={"epoch": 1, "step": 3, "where": "train-loss", "value": "nan"},
                   valid=dict(recs[1]["valid"], cross_entropy=0.0))  # would be best, but diverged
    for r in recs:
        store.save_record(r, tmp_path)
    df = store.load_frame(tmp_path)
    assert set(df["key"]) == {store.config_key(r["config"]) for r in recs}
    assert not df.duplicated(["key", "split", "length", "metric"]).any()
    bins = df[df["split"].isin(["bin0", "bin1", "bin2"]) & df["length"].isna()]
    assert set(bins["metric"]) >= {"accuracy", "perplexity", "cross_entropy", "ce_diff", "lower_bound",
                                   "ceiling_accuracy", "chance_accuracy", "repeat-previous_accuracy"}
    per_len = df[df["length"].notna()]
    assert set(per_len["metric"]) >= {"accuracy", "cross_entropy", "ce_diff"}
    best = df[df["best"]][["freeze", "seed"]].drop_duplicates()
    assert len(best) == 2 and set(best["freeze"]) == {"none", "m"}
    none_valid = {r["config"]["seed"]: r["valid"]["cross_entropy"] for r in recs if r["config"]["freeze"] == "none"}
    assert best[best["freeze"] == "none"]["seed"].item() != 1  # the diverged one is excluded
    m_valid = {r["config"]["seed"]: r["valid"]["cross_entropy"] for r in recs if r["config"]["freeze"] == "m"}
    assert best[best["freeze"] == "m"]["seed"].item() == min(m_valid, key=m_valid.get)
    assert none_valid  # used above
    assert len(store.load_frame(tmp_path, lengths=False)) < len(df)
    assert store.load_frame(tmp_path / "empty").empty


def test_records_are_human_readable(tmp_path, records):
    path = store.save_record(records[0], tmp_path)
    text = path.read_text()
    assert text.count("\n") < 150 and '"curve": [' in text and os.path.getsize(path) < 20_000
