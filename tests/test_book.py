"""The book's machinery: list parameters, the scale note, the executed copy's edits, incremental
execution, the repository setting, Binder's pins, figure text sizes (no kernel is started)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")

from marnn import book, plotting, registry, report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ---- papermill list parameters ------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("count-3,marked-copy", ["count-3", "marked-copy"]),
    (" count-3 , marked-copy ", ["count-3", "marked-copy"]),
    ("count-3", ["count-3"]),
    ('["count-3", "marked-copy"]', ["count-3", "marked-copy"]),
    (["lstm"], ["lstm"]),
    (None, None),
])
def test_list_parameters_accept_commas_and_json(given, expected):
    assert book.as_list(given) == expected


@pytest.mark.parametrize("bad, message", [('["count-3",', "not valid JSON"), ("a,,b", "empty name"),
                                          ('["a", 1]', "JSON list of names"), (3, "list or a string")])
def test_bad_list_parameter_says_what_is_accepted(bad, message):
    with pytest.raises(ValueError, match=message):
        book.as_list(bad)


def test_setup_turns_the_notebooks_string_parameters_into_lists():
    ns: dict = {}
    exec("from marnn.book import setup\ntasks = 'count-3,marked-copy'\nmodels = '[\"lstm\"]'\n"
         "task = 'count-3'\nsetup(1)", ns)
    assert ns["tasks"] == ["count-3", "marked-copy"] and ns["models"] == ["lstm"]
    assert ns["task"] == "count-3"  # not a list parameter
    # and the package then accepts the list
    assert report._names("language", ns["tasks"], report.task_names()) == ["count-3", "marked-copy"]


def test_table_numbers_have_two_decimals():
    assert [book.number(x) for x in (0.9123, 120.456, 0.0, 3e-7, float("nan"))] == \
        ["0.91", "120.46", "0.00", "3e-07", "–"]


def test_frames_show_dashes_yes_no_and_no_row_numbers():
    import pandas as pd

    html = book.frame_html(pd.DataFrame({"acc": [0.91234, float("nan")], "ok": [True, False]}))
    assert "0.91" in html and "–" in html and ">yes<" in html and ">no<" in html
    assert "NaN" not in html and "True" not in html and "0.91234" not in html
    assert "<th>0</th>" not in html  # no row-number column
    named = book.frame_html(pd.DataFrame({"acc": [0.5]}, index=pd.Index(["lstm"], name="model")))
    assert "lstm" in named and "model" in named


# ---- the scale note -------------------------------------------------------------------------
def test_scale_admonition_names_the_scale_and_the_paper_values():
    quick = book.scale_admonition("quick", "both")
    assert quick.startswith(":::{admonition} Built at the `quick` scale") and quick.endswith(":::")
    assert "10-20 (paper: 40-80)" in quick and "(paper: 40-100, 101-200, 201-400)" in quick
    assert "3 restarts (paper: 10)" in quick and "Penn Treebank" in quick
    assert "Penn Treebank" not in book.scale_admonition("quick", "formal")
    assert "Formal languages" not in book.scale_admonition("quick", "ptb")
    assert "mean nothing" in book.scale_admonition("smoke")
    assert "paper's scale" in book.scale_admonition("paper")
    with pytest.raises(ValueError, match="valid: formal, ptb, both"):
        book.scale_admonition("quick", "chapter")


def _executed(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "table1.ipynb"
    src.write_text(json.dumps({"cells": [], "metadata": {"kernelspec": {"name": "python3"}}}))
    caveat = report.scale_caveat("smoke")
    nb = {"metadata": {"kernelspec": {"name": "marnn"}}, "nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Title"},
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "scale = 'quick'", "outputs": []},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "scale = 'smoke'",
         "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": "setup(threads)\nprint(scale)", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "smoke\n"}]},
        {"cell_type": "code", "metadata": {"tags": ["remove-input"]}, "source": "x", "outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": caveat + " A finding."}},
            {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": caveat}}]},
    ]}
    dst = tmp_path / "out.ipynb"
    dst.write_text(json.dumps(nb))
    return src, dst


def test_tidy_folds_code_removes_parameters_and_moves_the_scale_to_the_top(tmp_path):
    src, dst = _executed(tmp_path)
    book._tidy(src, dst, "smoke")
    cells = json.loads(dst.read_text())["cells"]
    assert cells[0]["source"] == "# Title"
    assert "marnn-scale" in cells[1]["metadata"]["tags"] and "`smoke` scale" in cells[1]["source"]
    tags = [c["metadata"].get("tags", []) for c in cells[2:]]
    assert "remove-cell" in tags[0] and "remove-cell" in tags[1]  # both parameters cells
    assert tags[2] == ["hide-input", "remove-output"] and tags[3] == ["remove-input"]
    assert cells[4]["outputs"]  # the notebook keeps the printed lines (nbval compares them)
    outputs = cells[5]["outputs"]
    assert [o["data"]["text/markdown"] for o in outputs] == ["A finding.", ""]  # the bottom note is gone
    assert json.loads(dst.read_text())["metadata"]["kernelspec"]["name"] == "python3"
    book._tidy(src, dst, "smoke")  # idempotent: one note
    assert sum("marnn-scale" in c["metadata"].get("tags", []) for c in json.loads(dst.read_text())["cells"]) == 1


# ---- incremental execution ---------------------------------------------------------------------
def test_fingerprint_follows_notebook_records_and_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("MARNN_RESULTS", str(tmp_path / "store"))
    params = {"scale": "smoke", "threads": 1}
    first = book.fingerprint("table1", "smoke", params)
    assert book.fingerprint("table1", "smoke", params) == first
    assert book.fingerprint("table1", "smoke", {**params, "threads": 2})["parameters"] != first["parameters"]
    assert book.fingerprint("table2", "smoke", params)["notebook"] != first["notebook"]
    record = tmp_path / "store" / "formal" / "smoke" / "count-3" / "lstm" / "none-s0-x.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    second = book.fingerprint("table1", "smoke", params)
    assert second["records"] != first["records"] and second["package"] == first["package"]
    record.write_text('{"changed": 1}')
    assert book.fingerprint("table1", "smoke", params)["records"] != second["records"]
    other = tmp_path / "store" / "formal" / "quick" / "count-3" / "x.json"  # another scale: not an input
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    assert book.fingerprint("table1", "smoke", params)["records"] == book.fingerprint("table1", "smoke", params)[
        "records"]


def test_fingerprint_of_a_page_that_reads_ptb_follows_the_ptb_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MARNN_RESULTS", str(tmp_path / "store"))
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.test.txt.gz").write_bytes(b"some words")
    (ptb / "SHA256SUMS.txt").write_text("0" * 64 + "  ptb.test.txt\n")
    monkeypatch.setattr(book, "PTB_DATA", ptb)
    params = {"scale": "smoke", "threads": 1}
    readers = sorted(book.PTB_PAGES | book.MIXED_PAGES)
    before = {name: book.fingerprint(name, "smoke", params) for name in readers + ["table1"]}
    assert "ptb" not in before["table1"]  # a page on the formal languages does not read the corpus
    (ptb / "SHA256SUMS.txt").write_text("1" * 64 + "  ptb.test.txt\n")  # a checksum changes
    after = {name: book.fingerprint(name, "smoke", params) for name in readers + ["table1"]}
    for name in readers:
        assert after[name]["ptb"] != before[name]["ptb"], name
        assert {k: v for k, v in after[name].items() if k != "ptb"} == \
               {k: v for k, v in before[name].items() if k != "ptb"}
    assert after["table1"] == before["table1"]
    (ptb / "ptb.test.txt.gz").write_bytes(b"other words")  # a data file changes
    assert book.fingerprint("table3", "smoke", params)["ptb"] != after["table3"]["ptb"]
    stamp = tmp_path / "out"
    stamp.mkdir()
    (stamp / "table3.ipynb").write_text("{}")
    (stamp / "table3.inputs.json").write_text(json.dumps(after["table3"]))
    assert not book.up_to_date("table3", stamp, book.fingerprint("table3", "smoke", params))


def test_execute_keeps_a_page_whose_inputs_did_not_change(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MARNN_RESULTS", str(tmp_path / "store"))
    params = {"scale": "smoke", "threads": 1}
    (tmp_path / "table1.ipynb").write_text("{}")
    (tmp_path / "table1.inputs.json").write_text(json.dumps(book.fingerprint("table1", "smoke", params)))
    assert book.up_to_date("table1", tmp_path, book.fingerprint("table1", "smoke", params))
    monkeypatch.setattr(book, "kernel_name", lambda: pytest.fail("a kernel was started"))
    assert book.execute("smoke", tmp_path, only=["table1"]) == []
    assert "inputs unchanged" in capsys.readouterr().out
    assert not book.up_to_date("table1", tmp_path, book.fingerprint("table1", "smoke", {**params, "threads": 2}))


# ---- what a reader sees: table headers, figure numbers -----------------------------------------------
def _css_rules(text: str) -> dict[str, dict[str, str]]:
    """{selector: {property: value}} of a flat stylesheet (comments dropped; later rules add to earlier)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    rules: dict[str, dict[str, str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", text):
        props = dict(tuple(x.strip() for x in p.split(":", 1)) for p in body.split(";") if ":" in p)
        for sel in selectors.split(","):
            rules.setdefault(" ".join(sel.split()), {}).update(props)
    return rules


def test_table_headers_never_break_inside_a_word():
    rules = _css_rules((ROOT / "book" / "_static" / "marnn.css").read_text())
    for sel in (".cell_output table thead th", "table.marnn-findings th"):
        assert rules[sel].get("word-break") == "keep-all" and rules[sel].get("overflow-wrap") == "normal", sel
    assert not [s for s, p in rules.items() if s.split()[-1] == "th" and "anywhere" in p.get("overflow-wrap", "")]
    import pandas as pd

    html = book.frame_html(pd.DataFrame({"model (none)": ["jm-10"], "none": [0.5], "accuracy_first": [0.9],
                                         "last/first": [1.0], "x_y": ["a_b"]}))
    head, body = html.split("</thead>")
    assert "<th>none</th>" in head and "<th>model (none)</th>" in head  # whole words, nothing inserted
    assert "<th>accuracy_<wbr>first</th>" in head and "<th>last/<wbr>first</th>" in head  # places to wrap
    assert "<wbr>" not in body and "a_b" in body  # cells are left alone


def test_figure_captions_carry_the_papers_numbers_and_the_book_numbers_none():
    cfg = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert cfg["sphinx"]["config"]["numfig"] is False  # Sphinx would number across the book: "Fig. 9"
    captions = {}
    for name in book.NOTEBOOKS:
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        captions[name] = [c["metadata"]["mystnb"]["figure"]["caption"] for c in nb["cells"]
                          if "figure" in c.get("metadata", {}).get("mystnb", {})]
    for n in (1, 2, 3):
        assert captions[f"fig{n}"] and all(c.startswith(f"Figure {n} ") for c in captions[f"fig{n}"]), n
    others = [c for name, cs in captions.items() if not re.fullmatch(r"fig\d", name) for c in cs]
    assert others and not [c for c in others if re.match(r"(Fig\.|Figure) ?\d", c)]


# ---- the repository address, Binder ---------------------------------------------------------------
def test_every_colab_cell_uses_the_one_repository_setting():
    url = book.repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url)
    for name in book.NOTEBOOKS:
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        cells = ["".join(c["source"]) for c in nb["cells"] if "google.colab" in "".join(c["source"])]
        assert cells == [book.colab_cell(url)], f"{name}: run `python -m marnn.book set-repository {url}`"
    with pytest.raises(SystemExit, match="is not https://HOST/OWNER/NAME"):
        book.set_repository("github.com/x")


def test_environment_yml_pins_what_requirements_lock_pins():
    lock = sorted(line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = sorted(p for p in pip if "==" in p)
    assert pins == lock
    assert "-e .[book,test]" in pip


# ---- figures -----------------------------------------------------------------------------------
def test_wide_figures_are_shrunk_to_the_column_and_keep_9pt_text():
    import matplotlib.pyplot as plt
    import pandas as pd

    plotting.use_style()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="a line")
        ax.set_xlabel("string length")
        ax.legend(fontsize="small")
    assert min(plotting.text_sizes_at_page(fig)) < plotting.MIN_TEXT_PT  # 14 in at 100 dpi > 772 px
    plotting.fit_to_column(fig)
    assert fig.get_tightbbox().width * plotting.DPI <= plotting.COLUMN_PX
    assert min(plotting.text_sizes_at_page(fig)) >= plotting.MIN_TEXT_PT
    plt.close(fig)
    best = pd.DataFrame({"task": ["count-3"] * 2, "freeze": ["none", "m"], "split": ["bin2"] * 2,
                         "model": ["lstm"] * 2, "value": [0.5, 0.9]})
    refs = pd.DataFrame({"task": ["count-3"] * 2, "split": ["bin2"] * 2, "reference": ["ceiling", "chance"],
                         "accuracy": [1.0, 0.3]})
    fig = plotting.findings_figure(best, refs, "bin2", "paper", best, refs, "bin2", "ours", ["count-3"])
    plotting.fit_to_column(fig)
    assert min(plotting.text_sizes_at_page(fig)) >= plotting.MIN_TEXT_PT
    plt.close(fig)


def test_palette_is_colour_blind_safe_and_unique_per_family():
    okabe = set(plotting.OKABE_ITO.values())
    models = registry.FORMAL_MODELS + registry.PTB_MODELS
    assert {plotting.color(m) for m in models} <= okabe and set(plotting.MODE_COLORS.values()) <= okabe
    for family in (registry.FORMAL_MODELS, registry.PTB_MODELS):
        assert len({plotting.color(m) for m in family}) == len(family)
    assert plotting.color("lstm-256") == plotting.color("lstm")


def test_paired_bars_draw_dots_on_a_log_axis():
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame({"none": [120.0, 150.0], "m": [118.0, 160.0]}, index=["lstm-256", "rns-4-5"])
    fig, ax = plt.subplots()
    dots = plotting.paired_bars(ax, table, kind="dot")
    ax.set_yscale("log")
    assert len(dots) == 2 and not ax.patches  # markers, no bars
    assert [d.get_marker() for d in dots] == [plotting.MODE_STYLE["none"]["marker"], plotting.MODE_STYLE["m"]["marker"]]
    assert list(dots[1].get_ydata()) == [118.0, 160.0]
    with pytest.raises(ValueError, match="valid: bar, dot"):
        plotting.paired_bars(ax, table, kind="pie")
    plt.close(fig)


@pytest.mark.parametrize("args, message", [
    (["--scale", "papr"], "argument --scale: unknown scale 'papr'; valid scales: smoke, quick, paper-2core, paper"),
    (["--scale", "smoke", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
])
def test_execute_refuses_a_wrong_value_in_one_line_before_any_work(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        book.main(["execute", "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"python -m marnn.book: error: {message}")
    assert not (tmp_path / "out").exists()
