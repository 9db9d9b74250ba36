"""One load-or-train path (:func:`marnn.train.run.train_missing`): the grid's groups and the
command line's single runs both go through it, claims, resume state and kept weights included."""
from __future__ import annotations

import pytest

from marnn import grid, store
from marnn.cli import main
from marnn.train import resume, run


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = run.train_missing

    def spy(configs, root=None, **kw):
        seen.append(([store.config_key(c) for c in configs], kw))
        return real(configs, root, **kw)

    monkeypatch.setattr(run, "train_missing", spy)
    return seen


def test_the_grid_trains_through_the_one_path(tmp_path, calls):
    cfgs = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm"], modes=["none", "m"], restarts=1)
    summary = grid.run_grid(cfgs, str(tmp_path), scheduler="sync", progress=False)
    assert summary["written"] == 2 and summary["failed"] == []
    assert [(keys, kw["keep_weights"]) for keys, kw in calls] == [([store.config_key(c) for c in cfgs], True)]
    for c in cfgs:  # the records, the weights kept beside them, no state file left
        assert store.load_record(c, tmp_path) is not None and store.load_weights(c, tmp_path) is not None
    assert not list(resume.state_dir(tmp_path).glob("*.pt"))
    assert grid.run_group(cfgs, str(tmp_path)) == []  # stored: nothing to train


def test_the_command_line_trains_through_the_one_path(tmp_path, calls, capsys):
    argv = ["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke", "--results", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    assert "trained and stored:" in capsys.readouterr().out
    ((keys, kw),) = calls
    assert kw["wait"] is True and kw.get("keep_weights", False) is False and len(keys) == 1
    assert main(argv) == 0  # the second time it is loaded, not trained
    assert "already computed" in capsys.readouterr().out and len(calls) == 1
    assert not list(resume.state_dir(tmp_path).glob("*.pt"))


def test_run_or_load_returns_the_stored_record(tmp_path, calls):
    cfg = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm"], modes=["c"], restarts=1)[0]
    first = run.run_or_load(cfg, tmp_path)
    assert first == store.load_record(cfg, tmp_path) and len(calls) == 1
    assert run.run_or_load(cfg, tmp_path) == first and len(calls) == 1
