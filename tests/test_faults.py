"""Fault injection (short version; MARNN_FAULTS=N runs the full one with N kills and N Ctrl-Cs, the real
dask cluster and every bad input as a separate process): kill -9 at random moments, two grids on one
store at once, every record corruption, Ctrl-C, an exploding replica, a planted weights file.
The same harness prints the figures: ``python benchmarks/faults.py``."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

import pytest

from marnn import paths, store
from marnn.scales import get_scale
from marnn.train import formal_config
from marnn.train.formal import train_formal
from marnn.train.loop import EXPLODE_EPOCHS, EXPLODE_FACTOR, Tracker
from marnn.train.optim import BatchedAdam

from test_train import toy_builder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import faults  # noqa: E402

SMOKE = get_scale("smoke")


@pytest.mark.slow
def test_store_survives_every_fault(tmp_path):
    n = int(os.environ.get("MARNN_FAULTS", "0"))
    full = n > 0
    summary = faults.run(kills=n or 2, ctrl_c=n or 1, seed=int(os.environ.get("MARNN_FAULTS_SEED", "0")),
                         dask=full, inputs=full, workdir=tmp_path, log=lambda *a: print(*a, file=sys.stderr))
    fig = summary["figures"]
    assert summary["problems"] == [], summary["problems"]
    assert fig["faults survived"] == fig["faults injected"] > 0
    assert (fig["records lost"], fig["records corrupted"], fig["duplicate trainings"]) == (0, 0, 0)
    assert fig["final store complete, valid, equal to a clean run"] is True
    assert (fig["silently accepted"], fig["tracebacks"]) == (0, 0)
    assert fig["clean one-line errors"] == fig["bad inputs tried"]


def test_exploding_replica_is_diverged_and_the_rest_train_on():
    sc = SMOKE.with_(lr_range=(1e-3, 1e4), max_epochs=3)
    pair = [formal_config("count-3", "lstm", "none", s, sc) for s in (8, 4)]  # lr 0.015 and 7223
    both = train_formal(pair)  # no OverflowError, no exception
    alone = train_formal(pair[:1])[0]
    assert both[1]["status"] == "diverged" and both[1]["diverged"]["where"] in ("train-explode", "train-loss",
                                                                               "train-grad", "valid")
    assert both[0]["status"] != "diverged" and both[0]["diverged"] is None
    assert faults.comparable(both[0]) == faults.comparable(alone)  # as if it had trained alone
    for rec in both:  # both records are valid (and would be stored)
        assert store.problems(dict(rec, key=store.config_key(rec["config"]))) is None


def test_explosion_rule():
    model = toy_builder()("lstm", task="count-3", replicas=3, seeds=[0, 1, 2])
    opt = BatchedAdam(model.named_parameters(), lr=[0.1] * 3, clip=1.0)
    t = Tracker(model, opt, early_stop=5, patience=2, factor=0.5)
    limit = EXPLODE_FACTOR * math.log(4)
    assert EXPLODE_EPOCHS == 2
    t.check_explosion(1, 10, {0: 1.0, 1: limit + 1, 2: None}, 4)  # non-finite: at once
    assert t.status == ["training", "training", "diverged"]
    assert t.diverged[2]["where"] == "train-explode" and t.diverged[2]["value"] == "inf"
    t.check_explosion(2, 20, {0: limit + 1, 1: limit * 3}, 4)  # the second epoch in a row above
    assert t.status[:2] == ["training", "diverged"]
    assert t.diverged[1] == {"epoch": 2, "step": 20, "where": "train-explode", "value": repr(limit * 3)}
    assert opt.active.tolist() == [True, False, False]
    t.check_explosion(3, 30, {0: limit - 0.1}, 4)  # back below: the count restarts
    t.check_explosion(4, 40, {0: limit + 1}, 4)
    assert t.status[0] == "training"


def test_invalid_record_warning_reaches_the_terminal_even_from_a_page(tmp_path, capfd):
    from marnn import report

    cfg = formal_config("count-3", "lstm", "none", 0, SMOKE)
    rec = train_formal([cfg], build=toy_builder())[0]
    path = store.save_record(rec, tmp_path)
    bad = json.loads(path.read_text())
    bad["bins"]["bin0"]["accuracy"] = 7.5
    path.write_text(json.dumps(bad))
    capfd.readouterr()
    with contextlib.redirect_stderr(io.StringIO()) as hidden:  # what a page does around training
        df = report.results_frame([cfg], str(tmp_path), compute=False)
    assert df.empty  # no page shows it
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "accuracy must be a probability" in err and "moved aside" in err
    assert hidden.getvalue() == ""


def test_malicious_weights_file_is_refused(tmp_path):
    import pickle

    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    config = formal_config("count-3", "lstm", "none", 0, "smoke")
    path = store.weights_path(config, tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"key": store.config_key(config), "state": Evil()}, path, pickle_module=pickle)
    assert store.load_weights(config, tmp_path) is None
    assert not marker.exists() and not path.exists()
    moved = tmp_path / "invalid" / path.relative_to(tmp_path)
    assert moved.exists() and "not a weights file" in moved.with_name(moved.name + ".reason.txt").read_text()


@pytest.mark.slow
def test_invalid_record_warning_reaches_the_terminal_of_a_papermill_run(tmp_path):
    """The kernel's stderr is the terminal of whoever ran papermill: the line must get there."""
    import subprocess

    import nbformat

    from marnn.book import kernel_name

    cfg = formal_config("count-3", "lstm", "none", 0, SMOKE)
    rec = train_formal([cfg], build=toy_builder())[0]
    path = store.save_record(rec, tmp_path)
    bad = json.loads(path.read_text())
    bad["valid"]["accuracy"] = 7.5
    path.write_text(json.dumps(bad))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import contextlib, io\n"
        "from marnn import report\n"
        "from marnn.train import formal_config\n"
        "cfg = formal_config('count-3', 'lstm', 'none', 0, 'smoke')\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        f"    df = report.results_frame([cfg], {str(tmp_path)!r}, compute=False)\n"
        "assert df.empty\n")]
    src, dst = tmp_path / "page.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    env = dict(os.environ, TQDM_DISABLE="1",
               PYTHONPATH=str(paths.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "papermill", str(src), str(dst), "-k", kernel_name(),
                          "--no-progress-bar", "--cwd", str(paths.REPO)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if "marnn: warning" in ln]
    assert len(lines) == 1 and "accuracy must be a probability" in lines[0] and "moved aside" in lines[0], \
        out.stderr[-3000:]
