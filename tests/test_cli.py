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
    (["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke", "--train-lengths", "4", "5"],
     ["no valid length"]),
    (["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke", "--train-lengths", "9", "3"], ["[9, 3]"]),
    (["train", "--task", "count-3", "--model", "lstm", "--seed", "abc"], ["invalid value 'abc'", "an integer"]),
    (["train", "--model", "lstm"], ["--task"]),
    (["grid", "--scale", "smoke", "--tasks", "count-3", "bogus"], ["marked-copy"]),
    (["grid", "--scale", "smoke", "--models", "rns-9"], ["jm-hidden"]),
    (["grid", "--scale", "smoke", "--modes", "all"], ["none", "m", "c", "cm"]),
    (["grid", "--scale", "smoke", "--restarts", "0"], ["restarts"]),
    (["grid", "--scale", "smoke", "--ptb", "--models", "lstm"], ["lstm-256", "vrns-3-3-5"]),
    (["ptb", "--model", "jm-10", "--scale", "smoke"], ["lstm-256", "rns-4-5"]),
    (["ptb", "--model", "lstm-256", "--embedding-group", "x", "--scale", "smoke"], ["controller", "memory", "trained"]),
    (["train", "--task", "count-3", "--model", "lstm", "--seed", "-1"], ["--seed", "-1", "[0, 4294967295]"]),
    (["train", "--task", "count-3", "--model", "lstm", "--seed", str(2**32)], ["--seed", "[0, 4294967295]"]),
    (["train", "--task", "count-3", "--model", "lstm", "--data-seed", "-1"], ["--data-seed", "[0, 4294967295]"]),
    (["train", "--task", "count-3", "--model", "lstm", "--threads", "0"], ["--threads", "0", ">= 1"]),
    (["train", "--task", "count-3", "--model", "lstm", "--max-epochs", "0"], ["--max-epochs", ">= 1"]),
    (["train", "--task", "count-3", "--model", "lstm", "--train-lengths", "0", "3"], ["--train-lengths", ">= 1"]),
    (["train", "--task", "count-3", "--model", "lstm", "--device", "nope"], ["'nope'", "not a torch device", "cpu"]),
    (["train", "--task", "count-3", "--model", "lstm", "--device", "meta"], ["'meta'", "not available", "cpu"]),
    (["ptb", "--model", "lstm-256", "--seed", "-5"], ["--seed", "[0, 4294967295]"]),
    (["ptb", "--model", "lstm-256", "--threads", "-1"], ["--threads", ">= 1"]),
    (["grid", "--scale", "smoke", "--max-replicas", "-1"], ["--max-replicas", ">= 1"]),
    (["grid", "--scale", "smoke", "--max-replicas", "0"], ["--max-replicas", ">= 1"]),
    (["grid", "--scale", "smoke", "--threads", "0"], ["--threads", ">= 1"]),
    (["grid", "--scale", "smoke", "--workers", "0"], ["--workers", ">= 1"]),
    (["grid", "--scale", "smoke", "--restarts", "-2"], ["--restarts", "[1, 4294967296]"]),
    (["grid", "--scale", "smoke", "--device", "nope"], ["'nope'", "not a torch device", "cpu"]),
    (["grid", "--scale", "smoke", "--scheduler", "foo"], ["'foo'", "tcp://HOST:PORT", "sync"]),
    (["grid", "--scale", "smoke", "--scheduler", "tcp://127.0.0.1"], ["tcp://HOST:PORT"]),
    (["grid", "--scale", "smoke", "--scheduler", "http://127.0.0.1:8786"], ["tcp://HOST:PORT"]),
    (["grid", "--scale", "smoke", "--scheduler", "tcp://127.0.0.1:99999"], ["tcp://HOST:PORT"]),
    (["grid", "--scale", "smoke", "--scheduler", "tcp://127.0.0.1:1"], ["127.0.0.1:1", "within 3 s", "sync"]),
    (["grid", "--scale", "smoke", "--embedding-group", "memory"], ["--embedding-group", "--ptb"]),
    (["grid", "--scale", "smoke", "--workers", "2", "--scheduler", "sync"], ["--workers", "--scheduler"]),
    (["bench", "--threads", "0"], ["--threads", ">= 1"]),
    (["bench", "--threads=-1"], ["--threads", ">= 1"]),
    (["bench", "--threads", "x"], ["--threads", "'x'"]),
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


def test_cuda_on_a_cpu_only_torch_is_one_line(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["train", "--task", "count-3", "--model", "lstm"], ["grid", "--scale", "smoke"]):
        assert main([*argv, "--device", "cuda", "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA device" in err and "accepted: cpu" in err, err


@pytest.mark.parametrize("where", ["file", "proc", "unwritable", "env-file"])
def test_results_must_be_a_writable_folder_before_any_work(where, tmp_path, capsys, monkeypatch):
    import marnn.train.run

    monkeypatch.setattr(marnn.train.run, "train", lambda *a, **k: pytest.fail("trained before checking the store"))
    target = tmp_path / "store"
    argv = ["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke"]
    if where == "file":
        target.write_text("not a folder")
        argv += ["--results", str(target)]
    elif where == "proc":
        argv += ["--results", "/proc/x"]
    elif where == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        target.mkdir(mode=0o500)
        argv += ["--results", str(target / "sub")]
    else:
        target.write_text("not a folder")
        monkeypatch.setenv("MARNN_RESULTS", str(target))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "accepted: a folder this user can write" in err, err
    assert ("MARNN_RESULTS" in err) == (where == "env-file")


def _fake_ptb(tmp_path, sums: str):
    import gzip
    import shutil

    from marnn import ptb

    for split in ptb.SPLITS:
        shutil.copy(ptb.ROOT / f"ptb.{split}.txt.gz", tmp_path / f"ptb.{split}.txt.gz")
    (tmp_path / "SHA256SUMS.txt").write_text(sums)
    return gzip


@pytest.mark.parametrize("case,words", [
    ("malformed", ["line 1 is malformed", "64 hex digits"]),
    ("short", ["line 2 is malformed"]),
    ("wrong", ["SHA-256 of ptb.train.txt is", "expected 0000"]),
    ("no-entry", ["no entry for ptb.valid.txt"]),
    ("corrupt-gzip", ["not a readable gzip file"]),
])
def test_ptb_checksum_problems_are_one_line(case, words, tmp_path, capsys, monkeypatch):
    from marnn import ptb

    good = (ptb.ROOT / "SHA256SUMS.txt").read_text().splitlines()
    data = tmp_path / "ptb"
    data.mkdir()
    sums = {"malformed": "this is not a checksum file\n",
            "short": good[0] + "\nabc\n",
            "wrong": "\n".join(("0" * 64 + "  ptb.train.txt") if "train" in line else line for line in good),
            "no-entry": "\n".join(line for line in good if "valid" not in line),
            "corrupt-gzip": "\n".join(good)}[case]
    _fake_ptb(data, sums)
    if case == "corrupt-gzip":
        (data / "ptb.test.txt.gz").write_bytes(b"\x1f\x8b garbage")
    monkeypatch.setattr(ptb, "ROOT", data)
    for argv in (["ptb", "--model", "lstm-256", "--scale", "smoke"],
                 ["grid", "--ptb", "--models", "lstm-256", "--scale", "smoke", "--scheduler", "sync"]):
        assert main([*argv, "--results", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        for w in words:
            assert w in err, (w, err)
    assert not list((tmp_path / "r").rglob("*.json"))


def test_reachable_scheduler_passes_the_check():
    import socket

    from marnn.grid import check_scheduler

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert check_scheduler(f"tcp://127.0.0.1:{port}") == f"tcp://127.0.0.1:{port}"
        assert check_scheduler(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"


def test_notebook_threads_parameter_is_checked():
    from marnn.book import setup

    for bad in (0, -1, "2", 1.5, True, None):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            setup(bad)


@pytest.mark.parametrize("delay", [0.5, 1.5, 4.0])  # from 0.5 s: before that Python itself is starting
def test_ctrl_c_at_start_up_is_one_line_and_status_130(delay, tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "marnn.cli", "grid", "--scale", "smoke", "--tasks", "count-3",
                             "--models", "lstm", "--restarts", "1", "--workers", "1", "--results", str(tmp_path)],
                            cwd=REPO, env=dict(os.environ, TQDM_DISABLE="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == "marnn: interrupted\n", (proc.returncode, err[-2000:])
