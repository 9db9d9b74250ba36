"""Learning curves and stopping epochs for the pages (marnn.curves) and their figures."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from marnn import curves, grid, plotting, report, store  # noqa: E402
from marnn.scales import SCALES, SMOKE  # noqa: E402


class _Corpus:  # a tiny random PTB stand-in (vocabulary of 11)
    vocab_size = 11

    def __init__(self, n=600):
        g = np.random.default_rng(0)
        self.train, self.valid, self.test = (torch.from_numpy(g.integers(0, 11, size=k)) for k in (n, n // 3, n // 3))


def _small(name, **kw):
    from marnn.models import build
    return build(name, hidden_size=16, **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A store with a PTB group (lstm-256, two modes x two restarts, 3 epochs at most) and a formal group."""
    from marnn.train.ptb import train_ptb

    path = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setitem(SCALES, "smoke", SMOKE.with_(ptb_max_epochs=3, ptb_early_stop=1))
    try:
        configs = report.ptb_configs("smoke", models=["lstm-256"], modes=["none", "m"], restarts=2)
        for rec in train_ptb(configs, corpus=_Corpus(), build=_small):
            store.save_record(rec, path)
        formal = grid.formal_grid("smoke", tasks=["count-3"], models=["lstm"], modes=["none"], restarts=2)
        grid.run_grid(formal, path, scheduler="sync", progress=False)
        yield path
    finally:
        mp.undo()


def _records(path, kind):
    return [rec for _, rec in store.iter_records(path) if rec["config"]["kind"] == kind]


def test_ptb_curves_are_the_records_curves(root):
    recs = _records(root, "ptb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SCALES, "smoke", SMOKE.with_(ptb_max_epochs=3, ptb_early_stop=1))
        frame = curves.ptb_curves("smoke", models=["lstm-256"], restarts=2, root=root)
    assert list(frame.columns) == curves.CURVE_COLUMNS
    assert len(frame) == sum(len(r["curve"]) for r in recs) and frame["key"].nunique() == len(recs) == 4
    for rec in recs:
        mine = frame[frame["key"] == rec["key"]]
        assert mine["epoch"].tolist() == [row["epoch"] for row in rec["curve"]]
        assert mine["valid_perplexity"].tolist() == [row["valid_perplexity"] for row in rec["curve"]]
        assert mine.loc[mine["selected"], "epoch"].tolist() == [rec["best_epoch"]]
    best = frame.drop_duplicates("key").groupby(["model", "freeze"])["best"].sum()
    assert (best == 1).all()  # one best restart per mode (modes none and m here)
    chosen = store.best_records(recs, ("model", "freeze", "embedding_group"))
    assert set(frame.loc[frame["best"], "key"]) == {r["key"] for r in chosen.values()}
    assert curves.ptb_curves("quick", models=["lstm-256"], root=root).empty  # nothing stored: nothing drawn


def test_stop_epochs_say_where_every_run_ended(root):
    stops = curves.stop_epochs(root)
    assert list(stops.columns) == curves.STOP_COLUMNS and len(stops) == 4 + 2
    assert stops["kind"].tolist() == ["formal"] * 2 + ["ptb"] * 4  # formal languages first
    assert stops["phase"].tolist() == ["formal languages"] * 2 + ["Penn Treebank"] * 4
    for rec in _records(root, "ptb") + _records(root, "formal"):
        row = stops[(stops["kind"] == rec["config"]["kind"]) & (stops["freeze"] == rec["config"]["freeze"])
                    & (stops["seed"] == rec["config"]["seed"])].iloc[0]
        assert (row["status"], row["epochs"]) == (rec["status"], rec["epochs"])
        assert row["cap"] == (3 if rec["config"]["kind"] == "ptb" else SMOKE.max_epochs)
    summary = curves.stop_summary(stops)
    assert (summary[list(curves.STATUSES)].sum(axis=1) == summary["runs"]).all()
    assert summary["phase"].tolist() == ["formal languages", "Penn Treebank"]
    assert curves.panels(stops) == [("smoke", "formal languages"), ("smoke", "Penn Treebank")]
    assert curves.stop_epochs(root / "empty").empty and curves.stop_summary(curves.stop_epochs(root / "empty")).empty


def test_the_figures_fit_the_column_with_9pt_text(root):
    import matplotlib.pyplot as plt

    plotting.use_style()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SCALES, "smoke", SMOKE.with_(ptb_max_epochs=3, ptb_early_stop=1))
        frame = curves.ptb_curves("smoke", models=["lstm-256"], restarts=2, root=root)
    stops = curves.stop_epochs(root)
    for fig in (plotting.ptb_curve_grid(frame), plotting.stop_epoch_grid(stops, curves.panels(stops))):
        plotting.fit_to_column(fig)
        assert fig.get_tightbbox().width * plotting.DPI <= plotting.COLUMN_PX
        assert min(plotting.text_sizes_at_page(fig)) >= plotting.MIN_TEXT_PT
        plt.close(fig)


def test_a_campaign_scale_is_shown_per_phase(root, monkeypatch):
    # the store's smoke runs stand in for a campaign: PTB as its phase 1, formal languages as its phase 2
    import marnn.campaign

    keys = {rec["key"]: 1 if rec["config"]["kind"] == "ptb" else 2 for _, rec in store.iter_records(root)}
    monkeypatch.setattr(marnn.campaign, "SCALE", "smoke")
    monkeypatch.setattr(curves, "_phases", lambda root: keys)
    stops = curves.stop_epochs(root)
    assert stops["phase"].tolist() == ["phase 1 (Penn Treebank)"] * 4 + ["phase 2 (formal languages)"] * 2
    assert [p for _, p in curves.panels(stops)] == ["phase 1 (Penn Treebank)", "phase 2 (formal languages)"]
