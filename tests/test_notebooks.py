"""Fast checks of the book's plumbing (no kernel is started).

Executing the notebooks is `make test`'s job: `python -m marnn.book execute
--scale smoke` followed by `pytest --nbval` on the executed copies.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")

from marnn import book, paper, plotting, registry, tasks  # noqa: E402
from marnn.scales import PAPER  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _notebook(name: str) -> dict:
    return json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())


def _toc_files(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["file"]] if "file" in node else []
        return found + [f for v in node.values() for f in _toc_files(v)]
    if isinstance(node, list):
        return [f for v in node for f in _toc_files(v)]
    return []


def test_every_notebook_is_listed_and_in_the_toc():
    on_disk = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(book.NOTEBOOKS) == on_disk
    toc_yml = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    assert toc_yml["root"] == "generated/findings"  # the landing page: the claims and verdicts
    toc = [toc_yml["root"]] + _toc_files(toc_yml)
    assert [f"generated/{n}" for n in book.NOTEBOOKS] == [f for f in toc if f.startswith("generated/")]


@pytest.mark.parametrize("name", book.NOTEBOOKS)
def test_notebook_source_is_clean_and_parametrised(name):
    nb = _notebook(name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        "commit notebooks without outputs"
    params = code[0]
    assert "parameters" in params.get("metadata", {}).get("tags", []), "first code cell must be tagged parameters"
    src = "".join(params["source"])
    assert "scale = " in src and "threads = " in src
    assert any("setup(threads)" in "".join(c["source"]) for c in code[1:3])
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_execute_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit, match="unknown notebook"):
        book.execute("smoke", tmp_path, only=["no-such-notebook"])
    with pytest.raises(ValueError, match="valid scales"):
        book.execute("no-such-scale", tmp_path)


def test_palette_covers_every_model_and_mode_of_the_paper():
    df = paper.load()
    assert set(df["model"]) <= {m for m, row in registry.MODELS.items() if row.colour}
    assert set(df["freeze"]) <= set(registry.MODES)
    for family in (registry.FORMAL_MODELS, registry.PTB_MODELS):  # one figure never mixes the two
        assert len({plotting.color(m) for m in family}) == len(family)
    assert len({s["marker"] for s in plotting.MODE_STYLE.values()}) == len(registry.MODES)
    with pytest.raises(ValueError, match="valid models"):
        plotting.color("gpt")


def test_reference_frame_and_lines():
    import matplotlib.pyplot as plt

    refs = plotting.reference_frame(tasks.names(), PAPER.test_bins, PAPER.bin_names)
    assert len(refs) == len(tasks.names()) * len(PAPER.test_bins) * len(plotting.REFERENCES)
    ceiling = refs[refs["reference"] == "ceiling"].set_index(["task", "split"])["accuracy"]
    for ref in ("chance", "most-frequent", "repeat-previous"):
        base = refs[refs["reference"] == ref].set_index(["task", "split"])["accuracy"]
        assert (base <= ceiling + 1e-12).all(), ref
    fig, ax = plt.subplots()
    plotting.reference_lines(ax, "count-3", PAPER.test_bins)
    frame = paper.lookup(paper.load(), task="count-3", metric="accuracy").assign(length=1.0)
    plotting.accuracy_vs_length(ax, frame[frame["split"] == "bin0"], y="value", dodge=0.04)
    assert len(ax.lines) == frame[frame["split"] == "bin0"].groupby(["model", "freeze"]).ngroups
    plt.close(fig)


@pytest.mark.parametrize("scale", ["smoke", "quick"])
def test_figure_2_draws_the_references_the_tables_print(scale):
    """One source per reference number: Figure 2's steps (pages.length_figure) and Tables 4-7
    (report.reference_table) both read the references stored in the records, and those equal the
    task's own computation (tasks/base.py, through plotting.reference_frame) on the scale's bins."""
    import matplotlib.pyplot as plt
    import numpy as np

    from marnn import report
    from marnn.scales import get_scale

    sc = get_scale(scale)
    df = report.formal_results(scale, compute=False, lengths=False)  # the committed store
    stored = report.references_long(df)
    computed = plotting.reference_frame(tasks.names(), sc.test_bins, sc.bin_names)
    both = stored.merge(computed, on=["task", "split", "reference"], how="outer", suffixes=("", "_computed"),
                        indicator=True)
    assert len(both) == len(tasks.names()) * len(sc.test_bins) * len(plotting.REFERENCES)
    assert (both["_merge"] == "both").all()
    assert np.abs(both["accuracy"] - both["accuracy_computed"]).max() < 1e-12
    assert (both["exact"] == both["exact_computed"]).all()
    # the steps drawn are the stored values: move one and the figure follows
    task = tasks.names()[0]
    moved = stored.assign(accuracy=stored["accuracy"].where(
        (stored["task"] != task) | (stored["reference"] != "ceiling"), 0.123))
    fig, ax = plt.subplots()
    drawn = plotting.reference_lines(ax, task, sc.test_bins, refs=moved, names=sc.bin_names)
    ceiling = drawn[drawn["reference"] == "ceiling"]
    assert list(ceiling["accuracy"]) == [0.123] * len(sc.test_bins)
    assert [(lo, hi) for lo, hi in zip(ceiling["lo"], ceiling["hi"], strict=True)] == list(sc.test_bins)
    ys = {round(float(seg[0][1]), 6) for coll in ax.collections for seg in coll.get_segments()}
    assert 0.123 in ys
    plt.close(fig)


def test_kernel_managers_name_their_sockets_apart(tmp_path, monkeypatch):
    """Two processes executing pages at once in one directory must not share kernel sockets
    (jupyter_client's default IPC name is ``kernel-ipc-<n>`` in the working directory)."""
    monkeypatch.chdir(tmp_path)
    manager = book._ipc_kernel_manager()
    a, b = manager(kernel_name="python3"), manager(kernel_name="python3")
    assert a.transport == b.transport == "ipc"
    assert a.ip != b.ip and Path(a.ip).is_absolute() and Path(a.ip).parent != tmp_path
