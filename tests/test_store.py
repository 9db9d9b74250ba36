"""Result store: keys, atomic records, run_or_load, the tidy frame."""
from __future__ import annotations

import json
import os

import pytest

from marnn import store
from marnn.scales import get_scale
from marnn.train import formal_config
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
    assert store.config_key(a) != store.config_key(formal_config("marked-copy", "lstm", "m", 0, SMOKE.with_(max_epochs=3)))
    # PTB-only scale fields do not touch formal configs
    assert store.config_key(a) == store.config_key(formal_config("marked-copy", "lstm", "m", 0, SMOKE.with_(ptb_bptt=7)))
    # a JSON round trip keeps the key
    assert store.config_key(json.loads(json.dumps(a))) == store.config_key(a)
    p = store.record_path(a, "/r")
    assert str(p).startswith("/r/formal/smoke/marked-copy/lstm/m-s0-") and p.suffix == ".json"


def test_results_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(store.ENV_VAR, raising=False)
    assert store.results_dir() == store.REPO / "results"
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


def test_partial_and_temp_files_count_as_missing(tmp_path, records):
    cfg = records[0]["config"]
    path = store.record_path(cfg, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(records[0])[:200])  # a torn write (what os.replace prevents)
    tmp = path.parent / f".{path.stem}.abc.tmp"
    tmp.write_text("{")
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.missing([cfg], tmp_path) == [cfg]
    with pytest.warns(UserWarning, match="unreadable"):
        assert list(store.iter_records(tmp_path)) == []
    assert store.clean_temp(tmp_path) == 1 and not tmp.exists()


def test_run_or_load_trains_once(tmp_path, monkeypatch):
    cfg = formal_config("count-3", "lstm", "c", 0, SMOKE)
    first = store.run_or_load(cfg, tmp_path, build=toy_builder())
    mtime = store.record_path(cfg, tmp_path).stat().st_mtime_ns

    import marnn.train

    def boom(*a, **k):
        raise AssertionError("should not retrain")

    monkeypatch.setattr(marnn.train, "train", boom)
    second = store.run_or_load(cfg, tmp_path)
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
    assert none_valid  # noqa: used above
    assert len(store.load_frame(tmp_path, lengths=False)) < len(df)
    assert store.load_frame(tmp_path / "empty").empty


def test_records_are_human_readable(tmp_path, records):
    path = store.save_record(records[0], tmp_path)
    text = path.read_text()
    assert text.count("\n") < 150 and '"curve": [' in text and os.path.getsize(path) < 20_000
