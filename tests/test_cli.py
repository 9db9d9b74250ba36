"""The `marnn` command line: one-line errors, train / ptb end to end, bench routing."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from marnn import store
from marnn.cli import main

REPO = Path(__file__).resolve().parent.parent

BAD = [
    (["train", "--task", "nope", "--model", "lstm", "--scale", "smoke"], ["marked-copy", "count-3"]),
    (["train", "--task", "count-3", "--model", "nope", "--scale", "smoke"], ["lstm", "jm-10", "rns-3-3"]),
    (["train", "--task", "count-3", "--model", "lstm-256", "--scale", "smoke"], ["jm-3.3.3"]),
    (["train", "--task", "count-3", "--model", "lstm", "--freeze", "x", "--scale", "smoke"], ["none", "cm"]),
    (["train", "--task", "count-3", "--model", "lstm", "--scale", "huge"], ["smoke", "quick", "paper"]),
    (["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke", "--train-lengths", "4", "5"], ["no valid length"]),
    (["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke", "--train-lengths", "9", "3"], ["[9, 3]"]),
    (["train", "--task", "count-3", "--model", "lstm", "--seed", "abc"], ["invalid int"]),
    (["train", "--model", "lstm"], ["--task"]),
    (["grid", "--scale", "smoke", "--tasks", "count-3", "bogus"], ["marked-copy"]),
    (["grid", "--scale", "smoke", "--models", "rns-9"], ["jm-hidden"]),
    (["grid", "--scale", "smoke", "--modes", "all"], ["none", "m", "c", "cm"]),
    (["grid", "--scale", "smoke", "--restarts", "0"], ["restarts"]),
    (["grid", "--scale", "smoke", "--ptb", "--models", "lstm"], ["lstm-256", "vrns-3-3-5"]),
    (["ptb", "--model", "jm-10", "--scale", "smoke"], ["lstm-256", "rns-4-5"]),
    (["ptb", "--model", "lstm-256", "--embedding-group", "x", "--scale", "smoke"], ["controller", "memory", "trained"]),
    (["frobnicate"], ["train", "grid", "ptb"]),
    ([], ["train", "grid", "ptb", "bench"]),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) or "empty" for a, _ in BAD])
def test_bad_arguments_exit_with_one_line(argv, words, capsys, tmp_path):
    rc = main([*argv, *(["--results", str(tmp_path)] if argv and argv[0] in ("train", "grid", "ptb") else [])])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert not list(tmp_path.rglob("*.json"))


def test_entry_point_errors_in_a_real_process():
    exe = [sys.executable, "-m", "marnn.cli"]
    out = subprocess.run([*exe, "train", "--task", "nope", "--model", "lstm"], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, TQDM_DISABLE="1"), timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "valid tasks" in out.stderr


def test_train_end_to_end_then_loaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    argv = ["train", "--task", "marked-copy", "--model", "jm-10", "--freeze", "m", "--seed", "0",
            "--scale", "smoke", "--results", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained and stored" in out and "bin2" in out and "marked-copy / jm-10 / freeze m" in out
    (path,) = tmp_path.rglob("*.json")
    rec = store.read_record(path)
    assert rec["config"]["freeze"] == "m" and rec["status"] in ("max-epochs", "early-stop")
    mtime = path.stat().st_mtime_ns
    assert main(argv) == 0
    assert "loaded from the store" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == mtime


def test_results_env_var(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MARNN_RESULTS", str(tmp_path))
    assert main(["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke"]) == 0
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_ptb_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(["ptb", "--model", "lstm-256", "--freeze", "m", "--scale", "smoke", "--threads", "1",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test perplexity" in out
    (path,) = tmp_path.rglob("*.json")
    rec = store.read_record(path)
    assert rec["config"]["embedding_group"] == "controller"
    # e^(cross-entropy), reported in the output, and below the uniform guess over the 10,001 words
    assert rec["test"]["perplexity"] == pytest.approx(math.exp(rec["test"]["cross_entropy"]))
    assert f"test perplexity {rec['test']['perplexity']:.2f}" in out
    assert rec["test"]["perplexity"] < 10_001


def test_grid_dry_run(tmp_path, capsys):
    assert main(["grid", "--scale", "smoke", "--tasks", "count-3", "--models", "lstm", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    assert "8 runs planned, 0 stored, 8 missing in 1 groups" in capsys.readouterr().out


def test_bench_is_routed(monkeypatch):
    seen = []
    fake = types.ModuleType("marnn.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "marnn.bench", fake)
    assert main(["bench", "--model", "rns-3-3", "-n", "2"]) == 0
    assert seen == [["--model", "rns-3-3", "-n", "2"]]
