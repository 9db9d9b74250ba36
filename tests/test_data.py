"""Penn Treebank loader and the vendored paper numbers."""
from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from marnn import paper, ptb


@pytest.fixture(scope="module")
def corpus():
    return ptb.load_corpus()


def test_token_counts_match_the_published_ones(corpus):
    assert len(corpus.train) == 929_589
    assert len(corpus.valid) == 73_760
    assert len(corpus.test) == 82_430
    assert {s: len(getattr(corpus, s)) for s in ptb.SPLITS} == ptb.EXPECTED_TOKENS


def test_vocabulary(corpus):
    assert corpus.vocab_size == 10_001
    assert corpus.vocab[-2:] == ["<eos>", "<bos>"]
    assert "<unk>" in corpus.vocab
    assert len(set(corpus.vocab)) == corpus.vocab_size
    assert int(corpus.train.max()) < corpus.vocab_size - 1  # <bos> is never fed


def test_every_line_ends_with_eos(corpus):
    eos = corpus.vocab.index("<eos>")
    assert int(corpus.test[-1]) == eos
    assert corpus.decode(corpus.valid[:5]) == ptb.read_split("valid")[:5]


def test_corrupted_or_missing_file_names_file_and_checksum(tmp_path):
    for f in ptb.ROOT.iterdir():
        shutil.copy(f, tmp_path / f.name)
    raw = gzip.decompress((tmp_path / "ptb.valid.txt.gz").read_bytes())
    (tmp_path / "ptb.valid.txt.gz").write_bytes(gzip.compress(raw.replace(b" the ", b" teh ", 1)))
    expected = "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"
    with pytest.raises(ptb.ChecksumError, match=f"ptb.valid.txt.*expected {expected}"):
        ptb.read_split("valid", tmp_path)
    (tmp_path / "ptb.test.txt.gz").unlink()
    with pytest.raises(ptb.ChecksumError, match="ptb.test.txt.gz is missing"):
        ptb.read_split("test", tmp_path)
    (tmp_path / "ptb.train.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(ptb.ChecksumError, match="not a readable gzip"):
        ptb.read_split("train", tmp_path)


def test_unknown_split():
    with pytest.raises(ValueError, match="valid splits: train, valid, test"):
        ptb.read_split("dev")


def test_batchify_and_chunks_cover_the_stream_in_order():
    tokens = torch.arange(103)
    data = ptb.batchify(tokens, 4)
    assert data.shape == (4, 25)
    assert data[1, 0] == 25  # stream b starts at b * L
    pieces = list(ptb.chunks(data, 7))
    assert len(pieces) == ptb.num_chunks(data, 7) == 4
    xs = torch.cat([x for x, _ in pieces], dim=1)
    ys = torch.cat([y for _, y in pieces], dim=1)
    assert torch.equal(xs, data[:, :-1]) and torch.equal(ys, data[:, 1:])


def test_paper_results_loader():
    df = paper.load()
    assert list(df.columns) == paper.COLUMNS
    assert set(df["freeze"]) == {"none", "m", "c", "cm"}
    ptb_rows = paper.lookup(df, dataset="ptb", freeze="m", model="rns-4-5")
    assert ptb_rows["value"].tolist() == [120.5]
    assert len(paper.lookup(df, source="Table 4")) == 245


# ---- test sets sized for a standard error (marnn.tasks.data) ---------------------
def test_test_strings_bound_every_bin_and_test_take_is_a_subset():
    import math

    from marnn import tasks
    from marnn.scales import get_scale
    from marnn.tasks.data import test_batches

    base = get_scale("smoke").with_(test_bins=((8, 16), (17, 40)))
    task = tasks.get("count-3")
    full = test_batches(task, base.with_(test_strings=25, eval_batch_size=7))
    some = test_batches(task, base.with_(test_strings=25, test_take=2, eval_batch_size=7))
    for name, (lo, hi) in zip(base.bin_names, base.test_bins, strict=True):
        lengths = task.valid_lengths(lo, hi)
        per = math.ceil(25 / len(lengths))
        strings = sum(b.size for b in full[name])
        assert strings == per * len(lengths) >= 25 and math.sqrt(0.25 / strings) <= math.sqrt(0.25 / 25)
        by_len: dict[int, list] = {}
        for b in full[name]:
            by_len.setdefault(b.length, []).extend(b.targets.tolist())
        for b in some[name]:  # the first 2 strings of every length of the same set
            assert b.targets.tolist() == by_len[b.length][:2]
        assert sorted(b.length for b in some[name]) == sorted(lengths)


def test_paper_2core_scale_keys_and_overrides():
    from marnn.scales import get_scale
    from marnn.train import formal_config, ptb_config, scale_from_config

    sc = get_scale("paper-2core")
    lstm = formal_config("marked-copy", "lstm", "none", 0, sc)
    rns = formal_config("marked-copy", "rns-3-3", "none", 0, sc)
    assert lstm["scale_fields"]["train_size"] == 10_000 and rns["scale_fields"]["train_size"] == 5_000
    assert "models" not in rns["scale_fields"] and rns["scale_fields"]["test_take"] == 2
    assert "test_take" not in lstm["scale_fields"]  # unset optional fields stay out of the key
    assert scale_from_config(rns).max_epochs == 8 and scale_from_config(lstm).max_epochs == 60  # the cut
    assert scale_from_config(formal_config("marked-copy", "lstm", "none", 0, get_scale("paper"))).max_epochs == 200
    assert scale_from_config(ptb_config("rns-4-5", "m", 0, sc)).ptb_max_epochs == 3
    assert scale_from_config(ptb_config("lstm-256", "m", 0, sc)).ptb_max_epochs == 100  # the paper's: no cut
    assert scale_from_config(ptb_config("jm-hidden-247", "m", 0, sc)).ptb_max_epochs == 6
    ptb = ptb_config("lstm-256", "none", 0, sc)["scale_fields"]
    assert (ptb["ptb_draws"], ptb["ptb_halving"]) == (8, (1, 2, 4)) and "ptb_draws" not in lstm["scale_fields"]
    # a committed quick record's config (results/) keeps its key
    quick = formal_config("marked-copy", "lstm", "none", 0, "quick")
    assert "test_strings" not in quick["scale_fields"] and "models" not in quick["scale_fields"]
    assert not {"independent_draws", "ptb_draws", "ptb_halving"} & set(ptb_config("lstm-256", "m", 0, "quick")
                                                                        ["scale_fields"])


def test_campaign_plan_on_an_empty_store(tmp_path):
    from marnn import campaign

    rows = campaign.plan(tmp_path)
    assert [r["phase"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["runs"] == 8 and rows[0]["waits_for_search"] and rows[3]["runs"] == 0
    assert rows[1]["runs"] == 7 * 4 * 4 * 5 and rows[2]["runs"] == 7 * 4 * 3
    assert all(r["stored"] == r["spent_cpu_h"] == 0 for r in rows)
    # the search: 8 draws for epoch 1, 4 for epoch 2, 2 for epochs 3-4, then one on to epoch 15
    assert campaign.search_hours(tmp_path) == pytest.approx((8 + 4 + 2 * 2 + 11) * 7.6 / 60)
    assert "PTB draw: not chosen yet" in campaign.plan_text(tmp_path)
    assert all(r["in_progress"] == [] for r in rows) and "in progress" not in campaign.plan_text(tmp_path)
    said = campaign.progress_text({"group": "count-3/jm-10 x20", "epoch": 47, "chunk": None, "running": 14,
                                   "cpu_s": 2760.0, "wall_s": 8000.0, "saved": 0.0})
    assert said == "count-3/jm-10 x20 after epoch 47, 14 running, 0.77 CPU-h so far"
    assert "in epoch 1 at chunk 459" in campaign.progress_text({"group": "PTB lstm-256 x8", "epoch": 0, "chunk": 459,
                                                                "running": 8, "cpu_s": 1.0, "wall_s": 1.0, "saved": 0})
    frame = campaign.plan_frame(tmp_path)
    assert list(frame.index.str[0]) == ["1", "2", "3", "4"]
    assert frame.loc[frame.index[1], "runs stored / known"] == "0 / 560"


def test_the_ptb_gate_reads_the_search_survivor(tmp_path, monkeypatch):
    from marnn import campaign

    assert campaign.gate(tmp_path) is None  # the search is not stored
    assert campaign.gate_text(None) == "gate: not decided yet (the search is not stored)"
    survivor = {}
    monkeypatch.setattr(campaign.grid, "ptb_seeds", lambda scale, restarts, root=None: [5])
    monkeypatch.setattr(campaign.store, "load_record",
                        lambda config, root=None: survivor if config["seed"] == 5 and config["freeze"] == "none"
                        else None)
    survivor.update(status="early-stop", test={"perplexity": 121.37})
    g = campaign.gate(tmp_path)
    assert g == {"seed": 5, "perplexity": 121.37, "status": "early-stop", "passed": True}
    assert campaign.gate_text(g) == ("gate: passed: lstm-256 / none at draw 5 (early-stop), test perplexity "
                                     "121.4 <= 140")
    survivor.update(test={"perplexity": 140.5})
    assert not campaign.gate(tmp_path)["passed"] and "above 140" in campaign.gate_text(campaign.gate(tmp_path))
    survivor.update(test={"perplexity": None})  # diverged on test: not passed
    assert not campaign.gate(tmp_path)["passed"]
    monkeypatch.setattr(campaign.grid, "ptb_seeds", lambda scale, restarts, root=None: [])
    assert campaign.gate_text(campaign.gate(tmp_path)) == "gate: failed (every draw of the search diverged)"


def test_paper_2core_stops_the_ptb_cells_at_a_closed_gate(tmp_path, monkeypatch, capsys):
    import importlib.util

    from marnn import campaign, paths

    spec = importlib.util.spec_from_file_location("paper_2core", paths.REPO / "scripts" / "paper_2core.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    closed = {"seed": 2, "perplexity": 180.0, "status": "early-stop", "passed": False}
    monkeypatch.setattr(campaign, "gate", lambda root=None: closed)
    monkeypatch.setattr(campaign, "waiting", lambda n, root=None: False)
    monkeypatch.setattr(script.cli, "check_ptb_files", lambda: None)
    trained = []
    monkeypatch.setattr(script.grid, "run_grid", lambda runs, *a, **k: trained.append(runs) or
                        {"written": 0, "failed": [], "wall_time_s": 0.0})
    assert script.main(["1", "--results", str(tmp_path)]) == 1
    assert trained == [] and "find out why" in capsys.readouterr().err
    assert script.main(["1", "--results", str(tmp_path), "--past-gate"]) == 0 and len(trained) == 1
