"""The analyses' models are the grid's own runs: trained through the one load-or-train path,
kept beside their records, loaded again without training, checked against their records."""
from __future__ import annotations

import pytest
import torch

from marnn import store
from marnn.analysis import weights
from marnn.train import formal, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    group = weights.trained_group("count-3", "lstm", "smoke", modes=["none", "m"], restarts=1, root=root)
    return root, group


def test_trained_group_stores_records_and_weights_of_every_run(trained):
    root, group = trained
    assert [c["freeze"] for c in group.configs] == ["none", "m"]
    for config, rec in zip(group.configs, group.records, strict=True):
        assert store.load_record(config, root) == rec  # the records the tables read
        assert store.weights_path(config, root).exists()
    assert group.path == store.weights_path(group.configs[0], root)
    assert not group.model.training


def test_a_stored_group_loads_without_training(trained, monkeypatch):
    root, group = trained

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")
    monkeypatch.setattr(formal, "train_formal", no_training)
    again = weights.trained_group("count-3", "lstm", "smoke", modes=["none", "m"], restarts=1, root=root)
    assert again.records == group.records
    for (n, p), (_, q) in zip(group.model.named_parameters(), again.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_kept_weights_reproduce_their_records_validation_score(trained):
    root, group = trained
    rows = weights.revalidate(group)
    assert weights.reproduced(rows) == (2, 2)
    assert [r["freeze"] for r in rows] == ["none", "m"]


def test_revalidate_notices_weights_that_are_not_the_records_run(trained):
    root, group = trained
    model = weights.stored_group(group.configs, root).model
    with torch.no_grad():
        for p in model.parameters():
            p[1].mul_(0.5)  # replica 1 (mode m) damaged; replica 0 untouched
    rows = weights.revalidate(weights.Group(model, group.configs, group.records, group.path))
    assert weights.reproduced(rows[:1]) == (1, 1) and weights.reproduced(rows[1:]) == (0, 1)


def test_a_record_without_weights_is_not_retrained_silently(trained, tmp_path):
    root, group = trained
    config = group.configs[0]
    store.save_record(group.records[0], tmp_path)  # the record alone, as runs stored before weights were kept
    with pytest.raises(weights.NotStored, match="no kept weights .* delete those records"):
        weights.trained_group("count-3", "lstm", "smoke", modes=["none"], restarts=1, root=tmp_path)
    assert store.load_record(config, tmp_path) == group.records[0]


def test_nothing_trains_where_the_pages_may_not(tmp_path, monkeypatch):
    monkeypatch.setenv(store.NO_TRAIN_ENV, "1")
    monkeypatch.setattr(run, "train_and_store", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(weights.NotStored, match=store.NO_TRAIN_ENV):
        weights.trained_group("count-3", "lstm", "smoke", modes=["none"], restarts=1, root=tmp_path)
