"""One line per finished epoch (marnn.train.epochlog), --quiet, and single runs that resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from marnn import grid, store
from marnn.cli import main
from marnn.scales import SCALES, SMOKE
from marnn.train import epochlog, formal_config, ptb_config, resume


class _Corpus:  # a tiny random PTB stand-in (vocabulary of 11)
    vocab_size = 11

    def __init__(self, n=600):
        g = np.random.default_rng(0)
        self.train, self.valid, self.test = (torch.from_numpy(g.integers(0, 11, size=k)) for k in (n, n // 3, n // 3))


def _small(name, **kw):  # the real model, 16 units (fast)
    from marnn.models import build
    return build(name, hidden_size=16, **kw)


def _lines(err: str) -> list[dict]:
    """The epoch / resume lines of ``err``, parsed; any other text is skipped."""
    return [p for p in map(epochlog.parse, err.splitlines()) if p is not None]


def _strip(rec):  # timings aside
    return {k: v for k, v in rec.items() if k not in ("env", "created", "wall_time_s", "group")} | {
        "curve": [{k: v for k, v in row.items() if k != "seconds"} for row in rec["curve"]]}


@pytest.fixture
def talk(monkeypatch):
    """Lines on: TQDM_DISABLE unset (the suite sets it for every test)."""
    monkeypatch.delenv("TQDM_DISABLE")


# ---- the line format ----------------------------------------------------------------------------
def test_ptb_lines_say_each_run_s_epoch(talk, capsys):
    from marnn.train.ptb import train_ptb

    scale = SMOKE.with_(ptb_max_epochs=3)
    cfgs = [ptb_config("lstm-256", m, s, scale) for m in ("none", "cm") for s in (0, 1)]
    recs = train_ptb(cfgs, corpus=_Corpus(), build=_small, epoch_lines=True)
    err = capsys.readouterr().err
    lines = _lines(err)
    assert len(lines) == len(err.strip().splitlines())  # nothing else written
    inside = [p for p in lines if p["kind"] == "chunk"]  # no bar here: the group says how far each epoch is
    lines = [p for p in lines if p["kind"] != "chunk"]
    assert len(lines) == sum(r["epochs"] for r in recs)
    n = inside[0]["chunks"]
    for e in range(1, max(r["epochs"] for r in recs) + 1):
        mine = [p for p in inside if p["epoch"] == e]
        assert [p["chunk"] for p in mine] == list(range(max(n // 10, 1), n, max(n // 10, 1)))
        assert {(p["group"], p["max_epochs"], p["chunks"]) for p in mine} == {("ptb lstm-256 x4", 3, n)}
        assert all(p["minutes"] >= 0 for p in mine)
    for cfg, rec in zip(cfgs, recs, strict=True):
        mine = [p for p in lines if (p["mode"], p["seed"]) == (cfg["freeze"], cfg["seed"])]
        assert [p["epoch"] for p in mine] == [row["epoch"] for row in rec["curve"]]
        for p, row in zip(mine, rec["curve"], strict=True):
            assert p["kind"] == "ptb" and p["model"] == "lstm-256" and p["max_epochs"] == 3
            assert p["embedding_group"] is None  # the default group is not named
            assert p["valid_perplexity"] == pytest.approx(row["valid_perplexity"], abs=0.006)
            assert p["train_perplexity"] == pytest.approx(row["train_perplexity"], abs=0.006)
            assert p["lr"] == pytest.approx(row["lr"], rel=1e-3)
        assert [p["epoch"] for p in mine if p["note"] == "best"][-1] == rec["best_epoch"]
        if rec["status"] == "early-stop":
            assert mine[-1]["note"] == "early-stop"


def test_formal_lines_summarise_the_group(talk, capsys):
    from marnn.train.formal import train_formal

    scale = SMOKE.with_(max_epochs=5, early_stop=1, lr_patience=1)
    cfgs = [formal_config("marked-copy", "lstm", m, s, scale) for m in ("none", "c") for s in (0, 1, 2)]
    recs = train_formal(cfgs, epoch_lines=True)
    lines = _lines(capsys.readouterr().err)
    last = max(r["epochs"] for r in recs)
    assert [p["epoch"] for p in lines] == list(range(1, last + 1))
    for p in lines:
        e = p["epoch"]
        assert p["kind"] == "formal" and (p["task"], p["model"], p["mode"]) == ("marked-copy", "lstm", None)
        assert (p["max_epochs"], p["replicas"]) == (5, 6)
        # still training after epoch e: those that trained on, and at the cap those that reached it
        assert p["running"] == sum(r["epochs"] > e or (r["epochs"] == e and r["status"] == "max-epochs")
                                   for r in recs)
        accs = sorted(row["valid_accuracy"] for r in recs for row in r["curve"] if row["epoch"] == e)
        assert p["best_accuracy"] == pytest.approx(accs[-1], abs=6e-5)
        assert p["median_accuracy"] == pytest.approx(float(np.median(accs)), abs=6e-5)


def test_a_line_is_one_short_line_and_parses_back():
    cfg = ptb_config("lstm-256", "m", 7, "smoke", embedding_group="memory")
    line = epochlog.ptb_line(cfg, 2, 6, {"train_perplexity": 245.3149, "valid_perplexity": None, "lr": 12.5,
                                         "seconds": 41.25}, "diverged")
    assert "\n" not in line and len(line) < 120
    assert epochlog.parse(line) == {
        "kind": "ptb", "model": "lstm-256", "mode": "m", "embedding_group": "memory", "seed": 7, "epoch": 2,
        "max_epochs": 6, "train_perplexity": 245.31, "valid_perplexity": None, "lr": 12.5, "seconds": 41.2,
        "note": "diverged"}
    one = [formal_config("count-3", "jm-10", "cm", 3, "smoke")]
    p = epochlog.parse(epochlog.formal_line(one, 1, 2, 1, [0.5, None], 0.04))
    assert (p["mode"], p["seed"], p["running"], p["replicas"], p["best_accuracy"]) == ("cm", 3, 1, 1, 0.5)
    assert epochlog.parse(epochlog.resumed_line(one, 4)) == {"kind": "resumed", "group": "count-3 jm-10 cm seed 3",
                                                             "epoch": 4}
    pair = [ptb_config("rns-4-5", m, 4, "smoke") for m in ("none", "m")]
    line = epochlog.chunk_line(pair, 2, 3, 249, 830, 913.0)
    assert line == "ptb rns-4-5 x2 | epoch 2/3 | chunk 249/830 | 15.2 min"
    assert epochlog.parse(line) == {"kind": "chunk", "group": "ptb rns-4-5 x2", "epoch": 2, "max_epochs": 3,
                                    "chunk": 249, "chunks": 830, "minutes": 15.2}
    assert epochlog.parse("runs:  50%|#####     | 4/8") is None


# ---- silence ------------------------------------------------------------------------------------------
_TRAIN = ["train", "--task", "marked-copy", "--model", "lstm", "--scale", "smoke", "--max-epochs", "3"]


def test_the_commands_write_lines_unless_quiet_or_tqdm_disable(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("TQDM_DISABLE")
    assert main([*_TRAIN, "--quiet", "--results", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main([*_TRAIN, "--results", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("TQDM_DISABLE")
    assert main([*_TRAIN, "--results", str(tmp_path / "c")]) == 0
    lines = _lines(capsys.readouterr().err)
    (path,) = (tmp_path / "c").rglob("*.json")
    assert [p["epoch"] for p in lines] == list(range(1, store.read_record(path)["epochs"] + 1))
    assert main(["grid", "--scale", "smoke", "--tasks", "count-3", "--models", "lstm", "--modes", "none",
                 "--restarts", "1", "--scheduler", "sync", "--quiet", "--results", str(tmp_path / "g")]) == 0
    assert capsys.readouterr().err == ""
    cfgs = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm"], modes=["none", "m"], restarts=1)
    grid.run_grid(cfgs, tmp_path / "d", scheduler="sync", progress=False)
    assert _lines(capsys.readouterr().err) == []
    grid.run_grid(cfgs, tmp_path / "e", scheduler="sync")
    assert {(p["task"], p["replicas"]) for p in _lines(capsys.readouterr().err)} == {("count-3", 2)}


@pytest.mark.slow
def test_lines_of_dask_workers_reach_the_grid_process(tmp_path):
    # a real `marnn grid` on a LocalCluster: the workers' lines end up on the command's stderr
    import os
    import subprocess
    import sys

    from marnn.paths import REPO

    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "marnn.cli", "grid", "--scale", "smoke", "--tasks", "count-3",
                          "--models", "lstm", "--modes", "none", "m", "--restarts", "1", "--workers", "1",
                          "--results", str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = _lines(out.stderr)
    assert [(p["task"], p["epoch"], p["replicas"]) for p in lines] == [("count-3", 1, 2), ("count-3", 2, 2)]


# ---- single runs resume --------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _wrap(module, name: str, monkeypatch, **extra) -> dict:
    """Make the commands call ``module.name`` (the trainer) with ``extra`` and an ``after_epoch``
    hook that raises _Stop after epoch ``stop["at"]`` (None: never) of the returned dict."""
    real, stop = getattr(module, name), {"at": None}

    def hook(epoch):
        if epoch == stop["at"]:
            raise _Stop(epoch)

    monkeypatch.setattr(module, name, lambda configs, **kw: real(configs, **kw, **extra, after_epoch=hook))
    return stop


def _interrupted_then_resumed(argv, module, name, monkeypatch, capsys, tmp_path, k, **extra):
    """Run the command, stopped after epoch ``k``; run it again (it resumes); compare its record with
    that of a run straight through, in another store."""
    a, b = tmp_path / "a", tmp_path / "b"
    stop = _wrap(module, name, monkeypatch, **extra)
    stop["at"] = k
    with pytest.raises(_Stop):
        main([*argv, "--results", str(a)])
    assert len(list(resume.state_dir(a).glob("*.pt"))) == 1 and not list(a.rglob("*.json"))
    capsys.readouterr()
    stop["at"] = None
    assert main([*argv, "--results", str(a)]) == 0
    lines = _lines(capsys.readouterr().err)
    assert lines[0]["kind"] == "resumed" and lines[0]["epoch"] == k and lines[1]["epoch"] == k + 1
    assert not list(resume.state_dir(a).glob("*.pt"))  # removed once the record is written
    assert main([*argv, "--results", str(b)]) == 0
    (ra,), (rb,) = a.rglob("*.json"), b.rglob("*.json")
    ra, rb = store.read_record(ra), store.read_record(rb)
    assert json.dumps(_strip(ra)) == json.dumps(_strip(rb))  # bitwise, timings aside
    return ra


def test_marnn_ptb_continues_after_an_interruption(talk, monkeypatch, capsys, tmp_path):
    import marnn.train.ptb as ptb

    monkeypatch.setitem(SCALES, "smoke", SMOKE.with_(ptb_max_epochs=3, ptb_early_stop=3))
    rec = _interrupted_then_resumed(["ptb", "--model", "lstm-256", "--scale", "smoke", "--threads", "1"], ptb,
                                    "train_ptb", monkeypatch, capsys, tmp_path, 1, corpus=_Corpus(), build=_small)
    assert len(rec["curve"]) == rec["epochs"] == 3


def test_marnn_train_continues_after_an_interruption(talk, monkeypatch, capsys, tmp_path):
    import marnn.train.formal as formal

    argv = [*_TRAIN[:-1], "5"]
    rec = _interrupted_then_resumed(argv, formal, "train_formal", monkeypatch, capsys, tmp_path, 2)
    assert len(rec["curve"]) == rec["epochs"] > 2


def test_a_learning_rate_search_marks_its_pruned_draws(talk, capsys):
    from marnn.train.ptb import train_ptb

    scale = SMOKE.with_(ptb_max_epochs=2, ptb_early_stop=2, ptb_halving=(1,))
    cfgs = [ptb_config("lstm-256", "none", s, scale) for s in range(4)]
    recs = train_ptb(cfgs, corpus=_Corpus(), build=_small, epoch_lines=True)
    lines = [p for p in _lines(capsys.readouterr().err) if p["kind"] == "ptb"]
    pruned = {p["seed"] for p in lines if p["note"] == "pruned"}
    assert pruned == {r["seed"] for r in recs if r["status"] == "pruned"} and len(pruned) == 2
    assert all(p["epoch"] == 1 for p in lines if p["seed"] in pruned)  # no line after a draw is pruned
