"""Stored results stay readable across changes of the code.

* every committed record (``results/formal``, ``results/ptb``; every scale) is
  found by :func:`marnn.store.load_record` from its own config, at its own
  path, with its key unchanged, and today's config builders give the same key
  (so a grid finds it instead of training it again);
* every committed weights file (``<record>.pt`` beside its record) belongs to
  its record's run and loads into today's model, and the kept weights of a
  whole group reproduce the validation scores their records selected them by;
* the ``paper-2core`` campaign, which trains for days in the background, keeps
  its keys (pinned) and the names of its resumable state files.

The store is a copy of the committed files, so no test here can move a
committed record aside.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from marnn import grid, paths, store
from marnn.analysis import weights
from marnn.train import formal_config, ptb_config, resume

KINDS = ("formal", "ptb")


def _committed() -> list[str]:
    """The files git tracks under results/ (relative to results/)."""
    try:
        out = subprocess.run(["git", "-C", str(paths.REPO), "ls-files", "-z", "--", *(f"results/{k}" for k in KINDS)],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed records cannot be listed")
    files = [f.removeprefix("results/") for f in out.split("\0") if f]
    if not files:
        pytest.skip("this checkout has no committed records")
    return files


@pytest.fixture(scope="module")
def committed() -> list[str]:
    return _committed()


@pytest.fixture(scope="module")
def copy(committed, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for rel in committed:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.RESULTS / rel, root / rel)
    return root


def _records(committed) -> list[str]:
    return [f for f in committed if f.endswith(".json") and f.split("/")[0] in ("formal", "ptb")]


def test_the_committed_store_covers_every_kind_and_scale(committed):
    seen = {tuple(f.split("/")[:2]) for f in committed}
    for kind in KINDS:
        for scale in ("smoke", "quick"):
            assert (kind, scale) in seen, f"no committed {kind} records at {scale}"


def test_every_committed_record_is_found_from_its_config(committed, copy):
    records = _records(committed)
    assert len(records) >= 700
    wrong = {}
    for rel in records:
        rec = json.loads((copy / rel).read_text())
        config = rec["config"]
        key = re.fullmatch(r".*-([0-9a-f]{16})\.json", rel)
        problems = [what for what, bad in (
            ("file name", key is None or key.group(1) != rec["key"]),
            ("config_key", store.config_key(config) != rec["key"]),
            ("record_path", store.record_path(config, copy) != copy / rel),
            ("load_record", store.load_record(config, copy) != rec),
        ) if bad]
        if problems:
            wrong[rel] = problems
    assert wrong == {}
    assert not (copy / store.INVALID_DIR).exists()


def test_todays_configs_have_the_committed_keys(committed, copy):
    """The configs a grid builds today are the committed records' configs, byte for byte."""
    wrong = []
    for rel in _records(committed):
        c = json.loads((copy / rel).read_text())["config"]
        if c["kind"] == "formal":
            today = formal_config(c["task"], c["model"], c["freeze"], c["seed"], c["scale"], c["data_seed"])
        else:
            today = ptb_config(c["model"], c["freeze"], c["seed"], c["scale"], c["embedding_group"], c["data_seed"])
        if store.canonical(today) != store.canonical(c):
            wrong.append(rel)
    assert wrong == []


def test_every_committed_weights_file_belongs_to_its_record(committed, copy):
    files = [f for f in committed if f.endswith(".pt")]
    assert files
    for rel in files:
        rec = json.loads((copy / rel).with_suffix(".json").read_text())  # never a weights file without its record
        assert store.weights_path(rec["config"], copy) == copy / rel
        assert store.load_weights(rec["config"], copy) is not None  # its key; plain tensors only


@pytest.mark.parametrize("model", ["lstm", "jm-10", "jm-3.3.3", "jm-hidden"])
def test_committed_weights_are_their_records_runs(copy, model):
    """The analyses' groups (smoke) load from the kept weights and, evaluated again on their
    validation split, give every run the score its record selected those weights by."""
    group = weights.stored_group(weights.group_configs("marked-copy", model, "smoke"), copy)
    assert group is not None
    assert weights.reproduced(weights.revalidate(group)) == (len(group.configs), len(group.configs))


def test_the_campaign_keeps_its_keys():
    """Runs the paper-2core campaign has claimed or stored keep today's keys (pinned: the first
    draws of its PTB search and the first runs of its formal phase, as the trainer names them)."""
    search = [store.config_key(c) for c in grid.ptb_search("paper-2core")]
    assert search[:2] == ["093adcf5f0cf0754", "cb2e3a44772fec54"]
    assert store.config_key(formal_config("count-3", "jm-10", "c", 0, "paper-2core")) == "2f3adddd5a8b89e2"


def test_state_files_keep_their_names():
    """A killed group resumes from ``<store>/.state/<kind>-<hash>.pt``: the names must not change mid-campaign."""
    folder = Path("F")
    search = grid.group_configs(grid.ptb_search("paper-2core"))
    assert [resume.state_path(g, folder).name for g in search] == ["ptb-90f847a9895b9322.pt"]
    formal = grid.group_configs(grid.formal_grid("paper-2core", tasks=["count-3"], models=["jm-10"]))
    assert [resume.state_path(g, folder).name for g in formal] == ["formal-993f66753362f485.pt"]
    assert resume.state_path([{"kind": "formal", "seed": 0}], folder) == folder / "formal-c966e91aacacb29f.pt"
