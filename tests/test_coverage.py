"""The book at a scale it does not train (paper-2core): each page counts its cells, shows the missing
ones as not trained yet, and trains nothing. Counting and marking are tested directly; executing every
notebook takes minutes, so three representative pages run (Table 3, Table 4, the memory chapter)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from marnn import book, coverage, grid, pages, registry, report, store, verdicts
from marnn.train import formal_config, ptb_config

from test_report import fake_formal, fake_ptb

SCALE = "paper-2core"


@pytest.fixture()
def read_only(monkeypatch):
    monkeypatch.setenv(store.NO_TRAIN_ENV, "1")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _save(record: dict, root: Path) -> None:
    record["group"]["cpu_time_s"] = 3.0  # what the campaign's records hold (its plan sums them)
    store.save_record(record, root)


def _partial_store(root: Path) -> None:
    """count-3 / lstm in every mode and restart, the PTB search (its best draw is lstm-256 / none /
    controller) and lstm-256 in mode cm: a few records of the campaign."""
    for mode in registry.MODES:
        for seed in range(5):
            _save(fake_formal(formal_config("count-3", "lstm", mode, seed, SCALE), 0.5 + seed / 10, (0.9, 0.8, 0.7)),
                  root)
    for i, config in enumerate(grid.ptb_search(SCALE)):
        _save(fake_ptb(config, 200.0 + i, 190.0 + i), root)
    best = grid.ptb_seeds(SCALE, 1, root)[0]
    _save(fake_ptb(ptb_config("lstm-256", "cm", best, SCALE), 400.0, 390.0), root)


def test_an_empty_store_has_none_of_each_pages_cells(tmp_path):
    expected = {"table4": 35, "table1": 140, "fig2": 70, "fig3": 56, "memory": 32, "precision": 8,
                "table3": 23, "fig1": 23}  # table3: 5 models x 4 modes + vrns-3-3-5 none + the ablation's m, c
    for name, m in expected.items():
        assert coverage.counts(coverage.page_cells(name, SCALE, tmp_path)) == (0, m), name
    assert "No trained run needed" in coverage.page_note("languages", SCALE, tmp_path)
    note = coverage.page_note("table4", SCALE, tmp_path)
    assert note.startswith(":::{admonition} 0 of 35 cells stored") and coverage.NOT_TRAINED in note
    ptb = coverage.page_cells("table3", SCALE, tmp_path)
    assert "vrns-3-3-5-published" in set(ptb["model"])  # the campaign's Table 3 model
    assert set(ptb.loc[ptb["embedding_group"] == "memory", "freeze"]) == {"m", "c"}


def test_stored_cells_are_counted_and_shown(tmp_path, read_only):
    _partial_store(tmp_path)
    assert coverage.counts(coverage.page_cells("table4", SCALE, tmp_path)) == (1, 35)
    assert coverage.counts(coverage.page_cells("table1", SCALE, tmp_path)) == (4, 140)
    assert coverage.counts(coverage.page_cells("table3", SCALE, tmp_path)) == (2, 23)  # none and cm
    assert coverage.counts(coverage.page_cells("memory", SCALE, tmp_path)) == (0, 32)  # no weights kept
    cells = coverage.formal_cells(SCALE, ["count-3"], ["lstm", "jm-10"], ["none"], root=tmp_path)
    shown = coverage.missing_table(cells, "task", ["model"])
    assert shown.loc["count-3", "lstm"] == "stored" and shown.loc["count-3", "jm-10"] == coverage.NOT_TRAINED
    assert coverage.missing_sentence(cells).endswith("count-3 jm-10 none.")

    df = report.ptb_results(SCALE, root=tmp_path)
    marked = coverage.mark_ptb(report.ptb_table(df, "test"), coverage.page_cells("table3", SCALE, tmp_path), str)
    assert marked.loc["lstm-256", "none"] == "190.0" and marked.loc["lstm-256", "m"] == coverage.NOT_TRAINED
    assert marked.loc["vrns-3-3-5", "m"] == "–"  # never trained at this scale: not "not trained yet"
    assert "NaN" not in marked.to_string() and "nan" not in marked.to_string()
    table = verdicts.ptb_mode_verdicts(df, pd.Series({"unigram": 700.0}), "m")
    assert set(table["verdict"]) == {verdicts.NOT_TRAINED} and "vrns-3-3-5-published" in set(table["model"])


def test_the_ablation_takes_modes_none_and_cm_from_the_controller_group(tmp_path, read_only):
    _partial_store(tmp_path)
    ablation = coverage.ablation_results(SCALE, root=tmp_path)
    assert "changes nothing" in ablation.attrs["shared"] and "controller-group runs" in ablation.attrs["shared"]
    mem = ablation[(ablation["embedding_group"] == "memory") & (ablation["split"] == "test")
                   & (ablation["metric"] == "perplexity")].set_index("freeze")["value"]
    assert mem.to_dict() == pytest.approx({"none": 190.0, "cm": 390.0})
    shown = pages.ablation_table(ablation, SCALE)
    assert shown.loc[("lstm-256", "none"), "memory"] == "190" and shown.loc[("lstm-256", "none"), "controller"] == "190"
    assert shown.loc[("lstm-256", "m"), "memory"] == coverage.NOT_TRAINED
    assert list(shown.index.get_level_values("freeze")) == ["none", "m", "c", "cm"]
    # at a scale that trains every group nothing is shared
    assert coverage.ablation_results("smoke", root=tmp_path, on_failure="warn").attrs["shared"] == ""


def test_a_page_that_needs_what_is_not_stored_stops_and_says_so(tmp_path, read_only, monkeypatch):
    import IPython.display

    shown: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(o.data for o in objs))
    cells = coverage.formal_cells(SCALE, ["count-3"], ["lstm"], root=tmp_path)
    assert coverage.require(cells, "This chapter") is False
    assert "of its 4 cells at this scale and the store holds 0" in shown[0] and verdicts.NOT_TRAINED in shown[0]
    _partial_store(tmp_path)
    cells = coverage.formal_cells(SCALE, ["count-3"], ["lstm"], root=tmp_path)
    assert coverage.require(cells, "This chapter") is True
    monkeypatch.setenv(store.NO_TRAIN_ENV, "")
    assert coverage.require(coverage.formal_cells(SCALE, ["count-3"], ["jm-10"], root=tmp_path), "x") is True


def test_prose_citing_a_value_the_page_did_not_glue_is_dropped():
    nb = {"cells": [
        {"cell_type": "markdown", "source": "Ours: {glue:text}`ours:.2f`."},
        {"cell_type": "markdown", "source": "Paper: {glue:text}`paper`, {glue}`paper`."},
        {"cell_type": "code", "source": "", "outputs": [{"metadata": {"scrapbook": {"name": "paper"}}}]},
        {"cell_type": "code", "source": "require", "outputs": [{"metadata": {coverage.STOP: True}}]},
        {"cell_type": "markdown", "source": "A caption of a figure that was not drawn."}]}
    book._drop_unglued(nb)
    assert [c["source"] for c in nb["cells"] if c["cell_type"] == "markdown"] == [
        "Paper: {glue:text}`paper`, {glue}`paper`."]
    assert nb["cells"][-1]["source"] == "require"  # nothing after the stop


# ---- executed pages ---------------------------------------------------------------------------------------
def _text(path: Path) -> str:
    nb = json.loads(path.read_text())
    parts = []
    for c in nb["cells"]:
        parts.append("".join(c["source"]) if c["cell_type"] == "markdown" else "")
        for o in c.get("outputs", []):
            assert o["output_type"] != "error", "".join(o.get("traceback", []))[-2000:]
            for v in o.get("data", {}).values():
                parts.append("".join(v) if isinstance(v, list) else str(v))
            parts.append("".join(o.get("text", "")))
    return "\n".join(parts)


def _execute(tmp_path, monkeypatch, store_dir: Path, names: list[str]) -> dict[str, str]:
    monkeypatch.setenv(store.ENV_VAR, str(store_dir))
    monkeypatch.setenv(store.NO_TRAIN_ENV, "")  # execute sets it for paper-2core; restored afterwards
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "out"
    assert book.execute(SCALE, out, only=names, force=True) == []
    return {n: _text(out / f"{n}.ipynb") for n in names}


def test_pages_execute_against_an_empty_store_and_train_nothing(tmp_path, monkeypatch):
    empty = tmp_path / "store"
    empty.mkdir()
    pages = _execute(tmp_path, monkeypatch, empty, ["table3", "table4", "memory"])
    assert _files(empty) == []  # nothing trained, no checkpoint written
    assert "0 of 23 cells stored" in pages["table3"] and "0 of 35 cells stored" in pages["table4"]
    assert "0 of 32 cells stored" in pages["memory"]
    for text in pages.values():
        assert coverage.NOT_TRAINED in text and "Traceback" not in text
    assert verdicts.NOT_TRAINED in pages["table3"] and "controller-group runs" in pages["table3"]


def test_pages_show_the_stored_cells(tmp_path, monkeypatch):
    root = tmp_path / "store"
    _partial_store(root)
    before = sorted(_files(root))
    pages = _execute(tmp_path, monkeypatch, root, ["table3", "table4"])
    assert sorted(_files(root)) == before
    assert "2 of 23 cells stored" in pages["table3"] and "1 of 35 cells stored" in pages["table4"]
    assert "190" in pages["table3"]  # lstm-256 / none, the search's best draw
    assert "0.70 ±" in pages["table4"]  # count-3 / lstm on the last bin, over its five restarts
    assert "count-3 jm-10 none" in pages["table4"]  # named as not trained yet
