"""Training engine: batched optimisers, freeze masks, determinism, batching, divergence, evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marnn.models.base import Output
from marnn.registry import FREEZE_MODES
from marnn.scales import get_scale
from marnn.train import epoch_order, formal_config, hyperparameters, ptb_config
from marnn.train.evaluate import bin_references, length_lower_bound
from marnn.train.formal import train_formal
from marnn.train.loop import Tracker
from marnn.train.optim import BatchedAdam, BatchedSGD

torch.set_num_threads(1)


# ---- a tiny model that follows marnn.models.base's contract --------------------
class Toy(nn.Module):
    """h_t = tanh(E[x_t] + (W h_{t-1}) * sigmoid(g)); groups: E, W controller, g memory, out classifier.

    ``poison = {replica: k}`` makes that replica's logits NaN from its k-th
    training forward call on (to test divergence handling).
    """

    GROUP = {"emb": "controller", "rec": "controller", "gate": "memory", "out": "classifier", "out_b": "classifier"}

    def __init__(self, v_in, v_out, replicas, seeds, include_initial=True, hidden=6, poison=None):
        super().__init__()
        R, H = replicas, hidden
        self.include_initial, self.v_in, self.poison, self.calls = include_initial, v_in, poison or {}, 0
        self.emb = nn.Parameter(torch.empty(R, v_in, H))
        self.rec = nn.Parameter(torch.empty(R, H, H))
        self.gate = nn.Parameter(torch.empty(R, H))
        self.out = nn.Parameter(torch.empty(R, v_out, H))
        self.out_b = nn.Parameter(torch.empty(R, v_out))
        with torch.no_grad():
            for r, s in enumerate(seeds):
                gen = torch.Generator().manual_seed(int(s))
                for _, p in self.named_parameters():
                    p[r].copy_(torch.empty(p.shape[1:]).uniform_(-0.5, 0.5, generator=gen))

    def group_of(self, name):
        return self.GROUP[name]

    def freeze_masks(self, modes):
        return {n: torch.tensor([self.GROUP[n] not in FREEZE_MODES[m] for m in modes])
                for n, _ in self.named_parameters()}

    def forward(self, x, state=None):
        R, H = self.emb.shape[0], self.emb.shape[2]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(R, *x.shape)
        _, B, T = x.shape
        offset = torch.arange(R).view(R, 1, 1) * self.v_in
        e = F.embedding(x + offset, self.emb.reshape(R * self.v_in, H))  # (R, B, T, H)
        h = torch.zeros(R, B, H) if state is None else state
        hs = [h] if self.include_initial else []
        g = torch.sigmoid(self.gate).unsqueeze(1)  # (R, 1, H)
        for t in range(T):
            h = torch.tanh(e[:, :, t] + torch.bmm(h, self.rec) * g)
            hs.append(h)
        hid = torch.stack(hs, 2)  # (R, B, T', H)
        logits = torch.einsum("rbth,rvh->rbtv", hid, self.out) + self.out_b[:, None, None]
        if self.training and self.poison:
            bad = torch.tensor([self.calls >= self.poison.get(r, math.inf) for r in range(R)]).view(R, 1, 1, 1)
            logits = torch.where(bad, torch.full_like(logits, math.nan), logits)
        if self.training:
            self.calls += 1
        return Output(logits, h)


def toy_builder(made: list | None = None, **extra):
    """A ``build`` for the trainers that records the models it makes."""

    def build(name, *, task=None, vocab_size=None, replicas=1, seeds=None, device=None, embedding_group=None):
        from marnn import tasks

        if task is not None:
            t = tasks.get(task)
            m = Toy(len(t.alphabet), len(t.alphabet) + 1, replicas, seeds, **extra)
        else:
            m = Toy(vocab_size, vocab_size, replicas, seeds, include_initial=False, **extra)
        if made is not None:
            made.append((m, {n: p.detach().clone() for n, p in m.named_parameters()}))
        return m

    return build


SMOKE = get_scale("smoke")


def _cfgs(modes=("none", "m", "c", "cm"), seeds=(0, 1), task="marked-copy", model="lstm", scale=SMOKE):
    return [formal_config(task, model, f, s, scale) for f in modes for s in seeds]


def test_records_keep_their_untrained_reference():
    """Every record carries its model's test rows at its initial weights (the stability chapter's reference
    for Thm 3.4): the freeze modes of one restart share them, and they are what the chapter computes itself."""
    from marnn.analysis import stability as st

    cfgs = _cfgs(modes=("none", "m"), seeds=(0, 1), task="count-3")
    recs = {(r["config"]["freeze"], r["config"]["seed"]): r for r in train_formal(cfgs)}
    rows = {s: recs[("none", s)]["untrained_lengths"] for s in (0, 1)}
    assert rows[0] == recs[("m", 0)]["untrained_lengths"] and rows[0] != rows[1]
    assert [r["length"] for r in rows[0]] == [r["length"] for r in recs[("none", 0)]["lengths"]]
    assert rows[0] != recs[("none", 0)]["lengths"]  # trained and untrained differ
    assert st.untrained_lengths("count-3", "lstm", "smoke", [0, 1]) == [rows[0], rows[1]]
    assert st.untrained_losses(list(recs.values()))[("count-3", "lstm", 1)] == rows[1]  # read, not recomputed


def _strip(rec):
    return {k: v for k, v in rec.items() if k not in ("env", "created", "wall_time_s", "group")} | {
        "curve": [{k: v for k, v in row.items() if k != "seconds"} for row in rec["curve"]]}


# ---- optimisers -------------------------------------------------------------
def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 3


@pytest.fixture(params=["batched", "per-slice"])
def path(request, monkeypatch):
    """Run an optimiser test on both update paths (small tensors / large tensors)."""
    import marnn.train.optim as optim

    if request.param == "per-slice":
        monkeypatch.setattr(optim, "SMALL", 0)
    return request.param


def test_batched_adam_matches_torch_adam_per_replica(path):
    R, lrs, clip = 3, [1e-3, 5e-3, 2e-2], 1.5
    init = [torch.randn(R, 4, 5, generator=torch.Generator().manual_seed(1)),
            torch.randn(R, 7, generator=torch.Generator().manual_seed(2))]
    batched = [nn.Parameter(t.clone()) for t in init]
    opt = BatchedAdam([(f"p{i}", p) for i, p in enumerate(batched)], lr=lrs, clip=clip)
    singles = [[nn.Parameter(t[r].clone()) for t in init] for r in range(R)]
    topts = [torch.optim.Adam(ps, lr=lr) for ps, lr in zip(singles, lrs, strict=True)]
    for step in range(5):
        _grads(batched, step)
        for r in range(R):
            for p, b in zip(singles[r], batched, strict=True):
                p.grad = b.grad[r].clone()
            torch.nn.utils.clip_grad_norm_(singles[r], clip)
            topts[r].step()
        opt.mask_and_clip()
        opt.step()
    for r in range(R):
        for p, b in zip(singles[r], batched, strict=True):
            torch.testing.assert_close(b[r], p, rtol=1e-5, atol=1e-6)


def test_masked_slices_are_bitwise_unchanged_even_with_nan_grads(path):
    R = 4
    p = nn.Parameter(torch.randn(R, 3, 3))
    q = nn.Parameter(torch.randn(R, 2))
    before = p.detach().clone(), q.detach().clone()
    masks = {"p": torch.tensor([True, False, True, False]), "q": torch.tensor([True, True, False, False])}
    for opt in (BatchedAdam([("p", p), ("q", q)], lr=1e-2, clip=5.0, masks=masks),
                BatchedSGD([("p", p), ("q", q)], lr=1.0, clip=0.5, masks=masks)):
        opt.active[3] = False  # stopped replica
        for step in range(3):
            _grads([p, q], step)
            p.grad[1] = math.nan  # frozen slice with a NaN gradient
            opt.mask_and_clip()
            opt.step()
    assert torch.equal(p[1], before[0][1]) and torch.equal(p[3], before[0][3])
    assert torch.equal(q[2], before[1][2]) and torch.equal(q[3], before[1][3])
    assert not torch.equal(p[0], before[0][0]) and not torch.equal(q[1], before[1][1])


def test_per_replica_clipping_uses_each_replicas_own_norm():
    p = nn.Parameter(torch.zeros(2, 3))
    opt = BatchedSGD([("p", p)], lr=1.0, clip=[1.0, 100.0])
    p.grad = torch.tensor([[3.0, 4.0, 0.0], [3.0, 4.0, 0.0]])
    norms = opt.mask_and_clip()
    assert norms.tolist() == [5.0, 5.0]
    torch.testing.assert_close(p.grad[0].norm(), torch.tensor(1.0), rtol=1e-5, atol=0)
    torch.testing.assert_close(p.grad[1], torch.tensor([3.0, 4.0, 0.0]))


# ---- hyperparameters and schedule --------------------------------------------
def test_hyperparameters_are_a_function_of_the_seed_and_in_range():
    lrs = [hyperparameters(s, (5e-4, 1e-2))["lr"] for s in range(50)]
    assert all(5e-4 <= x <= 1e-2 for x in lrs) and len(set(lrs)) == 50
    assert hyperparameters(7, (5e-4, 1e-2)) == hyperparameters(7, (5e-4, 1e-2))
    hp = hyperparameters(3, (1.0, 100.0), (0.0112, 1.12))
    assert 1 <= hp["lr"] <= 100 and 0.0112 <= hp["clip"] <= 1.12
    assert epoch_order(0, 1, 10) == epoch_order(0, 1, 10) != epoch_order(0, 2, 10)
    assert sorted(epoch_order(0, 1, 10)) == list(range(10))


def test_independent_draws_differ_across_tasks_and_models_and_are_shared_by_modes():
    from marnn.train import draw_seed, formal_config

    # smoke / quick (and their committed records): the restart index is the seed of every draw
    for sc in ("smoke", "quick"):
        c = formal_config("count-3", "jm-10", "m", 2, sc)
        assert draw_seed(c) == 2 and "independent_draws" not in c["scale_fields"]
    # paper-2core: (task, model, restart) decides; the modes of one cell share it
    cfg = {(t, m, f, s): formal_config(t, m, f, s, "paper-2core")
           for t in ("count-3", "marked-copy") for m in ("lstm", "jm-10") for f in ("none", "m", "c", "cm")
           for s in range(3)}
    seeds = {k: draw_seed(c) for k, c in cfg.items()}
    assert all(c["scale_fields"]["independent_draws"] is True for c in cfg.values())
    for (t, m, _, s), v in seeds.items():
        assert v == seeds[(t, m, "none", s)]
    cells = {(t, m, s): v for (t, m, f, s), v in seeds.items() if f == "none"}
    assert len(set(cells.values())) == len(cells) == 12
    lrs = {k: hyperparameters(v, get_scale("paper-2core").lr_range)["lr"] for k, v in cells.items()}
    assert lrs[("count-3", "lstm", 0)] != lrs[("marked-copy", "lstm", 0)] != lrs[("marked-copy", "jm-10", 0)]
    assert draw_seed(cfg[("count-3", "lstm", "none", 1)]) == seeds[("count-3", "lstm", "c", 1)]  # deterministic


def test_a_run_with_independent_draws_trains_with_its_own_lr_and_init():
    from marnn.train import draw_seed

    sc = SMOKE.with_(independent_draws=True)
    made, inner = [], toy_builder()

    def build(name, **kw):
        made.append(list(kw["seeds"]))
        return inner(name, **kw)

    a = train_formal(_cfgs(modes=("none", "m"), seeds=(0,), scale=sc), build=build)
    b = train_formal(_cfgs(modes=("none",), seeds=(0,), task="count-3", scale=sc), build=toy_builder())
    plain = train_formal(_cfgs(modes=("none",), seeds=(0,)), build=toy_builder())
    for rec in a + b:
        assert rec["seed"] == 0 and rec["lr"] == hyperparameters(draw_seed(rec["config"]), sc.lr_range)["lr"]
    assert a[0]["lr"] == a[1]["lr"] != b[0]["lr"] and a[0]["lr"] != plain[0]["lr"]
    assert made[0] == [draw_seed(c) for c in _cfgs(modes=("none", "m"), seeds=(0,), scale=sc)] != [0, 0]


def test_tracker_decays_lr_and_stops_early():
    m = Toy(2, 3, 2, [0, 1])
    opt = BatchedAdam(m.named_parameters(), lr=[1.0, 1.0])
    tr = Tracker(m, opt, early_stop=4, patience=2, factor=0.5)
    values = [[1.0, 1.0], [0.5, 2.0], [0.6, 2.0], [0.7, 2.0], [0.8, 2.0], [0.9, 2.0]]
    for epoch, v in enumerate(values, 1):
        tr.end_epoch(epoch, v, step=epoch * 10)
    assert tr.best == [0.5, 1.0] and tr.best_epoch == [2, 1]
    assert tr.status == ["early-stop", "early-stop"]
    assert opt.lr.tolist() == [0.25, 0.25]  # two plateaus of 2 epochs each
    assert not bool(opt.active.any())


# ---- formal training -------------------------------------------------------------
def test_formal_training_is_deterministic():
    a = train_formal(_cfgs(seeds=(0,)), build=toy_builder())
    b = train_formal(_cfgs(seeds=(0,)), build=toy_builder())
    assert [_strip(r) for r in a] == [_strip(r) for r in b]


def test_frozen_parameters_stay_at_init_with_the_real_models():
    made = []
    from marnn.models import build

    def recording_build(name, **kw):
        m = build(name, **kw)
        made.append((m, {n: p.detach().clone() for n, p in m.named_parameters()}))
        return m

    modes = ("none", "m", "c", "cm")
    recs = train_formal(_cfgs(modes=modes, seeds=(0,), model="jm-10"), build=recording_build)
    # the final model (the last with every replica; the trainer then builds the untrained reference, one
    # replica per restart); the first one's init
    model, init = [m for m, _ in made if m.replicas == len(modes)][-1], made[0][1]
    masks = model.freeze_masks(list(modes))
    for name, p in model.named_parameters():
        for r, trainable in enumerate(masks[name].tolist()):
            if trainable:
                assert not torch.equal(p[r], init[name][r]), (name, modes[r])
            else:
                assert torch.equal(p[r], init[name][r]), (name, modes[r])
    assert [r["trainable_parameters"] for r in recs][0] == recs[0]["num_parameters"]
    assert recs[3]["trainable_parameters"] < recs[1]["trainable_parameters"] < recs[0]["trainable_parameters"]


def test_batched_group_equals_runs_one_by_one():
    cfgs = _cfgs(modes=("none", "c"), seeds=(0, 1))
    together = train_formal(cfgs, build=toy_builder())
    for cfg, rec in zip(cfgs, together, strict=True):
        (alone,) = train_formal([cfg], build=toy_builder())
        for x, y in zip(rec["curve"], alone["curve"], strict=True):
            assert x["valid_cross_entropy"] == pytest.approx(y["valid_cross_entropy"], rel=1e-5)
        assert rec["bins"]["bin2"]["accuracy"] == pytest.approx(alone["bins"]["bin2"]["accuracy"], abs=1e-9)
        assert rec["lr"] == alone["lr"] and rec["group"]["replicas"] == 4


def test_dropping_stopped_replicas_changes_nothing():
    scale = SMOKE.with_(max_epochs=6, early_stop=1, lr_patience=1, train_size=60, lr_range=(0.2, 1.0))
    cfgs = _cfgs(modes=("none", "cm"), seeds=(0, 1, 2), scale=scale)
    made = []
    compact = train_formal(cfgs, build=toy_builder(made))
    full = train_formal(cfgs, build=toy_builder(), compact=False)
    assert len(made) > 2  # some replicas stopped early and the live model was rebuilt
    assert len({r["epochs"] for r in full}) > 1
    for a, b in zip(compact, full, strict=True):
        keys = ("epochs", "best_epoch", "status", "steps")
        assert [a[k] for k in keys] == [b[k] for k in keys]
        assert a["final_lr"] == b["final_lr"]
        assert a["valid"]["cross_entropy"] == pytest.approx(b["valid"]["cross_entropy"], rel=1e-5)
        assert a["bins"]["bin1"]["cross_entropy"] == pytest.approx(b["bins"]["bin1"]["cross_entropy"], rel=1e-5)
        assert [row["epoch"] for row in a["curve"]] == [row["epoch"] for row in b["curve"]]


def test_diverged_replica_is_isolated_and_recorded():
    cfgs = _cfgs(modes=("none",), seeds=(0, 1))
    made = []
    recs = train_formal(cfgs, build=toy_builder(made, poison={1: 2}))
    assert recs[1]["status"] == "diverged"
    assert recs[1]["diverged"]["step"] == 2 and recs[1]["diverged"]["epoch"] == 1
    assert recs[1]["diverged"]["where"] == "train-loss"
    model, _ = made[-1]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # masked, never written with NaN
    (alone,) = train_formal(cfgs[:1], build=toy_builder())
    assert recs[0]["status"] != "diverged"
    assert recs[0]["valid"]["cross_entropy"] == pytest.approx(alone["valid"]["cross_entropy"], rel=1e-5)


def test_record_metrics_are_consistent():
    (rec,) = train_formal(_cfgs(modes=("none",), seeds=(0,), task="count-3"), build=toy_builder())
    task_bins = dict(zip(SMOKE.bin_names, SMOKE.test_bins, strict=True))
    for name, b in rec["bins"].items():
        rows = [r for r in rec["lengths"] if r["bin"] == name]
        sym = sum(r["symbols"] for r in rows)
        assert sym == b["symbols"]
        assert b["accuracy"] == pytest.approx(sum(r["accuracy"] * r["symbols"] for r in rows) / sym)
        assert b["cross_entropy"] == pytest.approx(sum(r["cross_entropy"] * r["symbols"] for r in rows) / sym)
        assert b["ce_diff"] == pytest.approx(b["cross_entropy"] - b["lower_bound"])
        assert b["perplexity"] == pytest.approx(math.exp(b["cross_entropy"]))
        assert (b["lo"], b["hi"]) == task_bins[name]
        assert 0 < b["chance_accuracy"] < b["ceiling_accuracy"] <= 1
    assert rec["valid"]["ce_diff"] == pytest.approx(rec["valid"]["cross_entropy"] - rec["valid"]["lower_bound"])
    assert len(rec["curve"]) == rec["epochs"] == SMOKE.max_epochs


def test_length_bounds_average_to_the_bin_bound():
    from marnn import tasks

    for name in ("marked-copy", "unmarked-reverse-and-copy", "count-3"):
        t = tasks.get(name)
        lo, hi = 8, 30
        lengths = t.valid_lengths(lo, hi)
        weighted = sum(length_lower_bound(t, lo, hi, n) * (n + 1) for n in lengths) / sum(n + 1 for n in lengths)
        assert weighted == pytest.approx(bin_references(name, lo, hi)["lower_bound"])


def test_config_validation_names_the_choices():
    from marnn.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="marked-copy"):
        formal_config("nope", "lstm", "none", 0, "smoke")
    with pytest.raises(UnknownNameError, match="jm-10"):
        formal_config("marked-copy", "lstm-256", "none", 0, "smoke")
    with pytest.raises(UnknownNameError, match="cm"):
        formal_config("marked-copy", "lstm", "x", 0, "smoke")
    with pytest.raises(ValueError, match="no valid length"):
        formal_config("count-3", "lstm", "none", 0, SMOKE.with_(train_lengths=(4, 5)))
    with pytest.raises(UnknownNameError, match="controller"):
        ptb_config("lstm-256", "m", 0, "smoke", embedding_group="bogus")


# ---- PTB -----------------------------------------------------------------------
class _Corpus:
    def __init__(self, vocab=7, n=600, seed=0):
        g = np.random.default_rng(seed)
        self.vocab_size = vocab
        self.train, self.valid, self.test = (torch.from_numpy(g.integers(0, vocab, size=k))
                                             for k in (n, n // 3, n // 3))


def test_ptb_training_records_perplexities_and_freezes():
    from marnn.train.ptb import train_ptb

    scale = SMOKE.with_(ptb_max_epochs=3)
    cfgs = [ptb_config("lstm-256", m, 0, scale) for m in ("none", "cm")]
    made = []
    recs = train_ptb(cfgs, corpus=_Corpus(), build=toy_builder(made), detach=lambda s: s.detach())
    model, init = made[-1][0], made[0][1]
    for rec in recs:
        for split in ("valid", "test"):
            # perplexity is e^(cross-entropy); on uniformly random held-out tokens no model beats the
            # vocabulary size (7) by more than the sampling noise of 200 tokens
            assert rec[split]["perplexity"] == pytest.approx(math.exp(rec[split]["cross_entropy"]))
            assert rec[split]["perplexity"] > 0.8 * 7
        assert 0.0112 <= rec["clip"] <= 1.12 and 1 <= rec["lr"] <= 100
        assert len(rec["curve"]) == rec["epochs"]
    assert torch.equal(model.rec[1], init["rec"][1]) and not torch.equal(model.out[1], init["out"][1])
    again = train_ptb(cfgs, corpus=_Corpus(), build=toy_builder(), detach=lambda s: s.detach())
    assert [_strip(r) for r in again] == [_strip(r) for r in recs]


def test_halving_stops_the_worse_half_of_the_draws_and_keeps_modes_together():
    m = Toy(2, 3, 6, list(range(6)))
    opt = BatchedAdam(m.named_parameters(), lr=[1.0] * 6)
    tr = Tracker(m, opt, early_stop=9, patience=9, factor=0.5)
    units = [0, 0, 1, 1, 2, 2]  # three draws with two modes each
    tr.end_epoch(1, [3.0, 0.5, 1.0, 2.0, 0.9, 4.0], step=1)  # draw values: 0.5, 1.0, 0.9
    assert tr.halve(units) == [2, 3]  # ceil(3 / 2) = 2 draws stay: 0 and 2
    assert tr.status == ["training", "training", "pruned", "pruned", "training", "training"]
    assert opt.active.tolist() == [True, True, False, False, True, True]
    tr.end_epoch(2, [0.2, 0.4, 0.0, 0.0, 0.2, 0.4], step=2)  # pruned ones ignored; tie: earlier draw stays
    assert tr.halve(units) == [4, 5] and tr.running() == [0, 1]
    assert tr.halve(units) == [] and tr.running() == [0, 1]  # one draw is never pruned
    assert tr.epochs == [2, 2, 1, 1, 2, 2]


def test_ptb_search_prunes_by_validation_and_the_survivor_trains_on():
    from marnn.train.ptb import train_ptb

    scale = SMOKE.with_(ptb_max_epochs=4, ptb_early_stop=4, ptb_draws=4, ptb_halving=(1, 2))
    cfgs = [ptb_config("lstm-256", "none", s, scale) for s in range(4)]
    recs = train_ptb(cfgs, corpus=_Corpus(), build=toy_builder(), detach=lambda s: s.detach())
    status = [r["status"] for r in recs]
    assert status.count("pruned") == 3 and len({r["lr"] for r in recs}) == 4
    first = [r["curve"][0]["valid_cross_entropy"] for r in recs]
    after1 = sorted(range(4), key=lambda i: first[i])[:2]  # the two best after epoch 1
    assert all(len(recs[i]["curve"]) == 1 for i in range(4) if i not in after1)
    assert all(len(recs[i]["curve"]) >= 2 for i in after1)
    (winner,) = [i for i in range(4) if status[i] != "pruned"]
    assert winner in after1 and len(recs[winner]["curve"]) == 4
    assert recs[winner]["valid"]["cross_entropy"] == min(r["valid"]["cross_entropy"] for r in recs)
    # without halving fields (every scale but paper-2core and paper) nothing is pruned
    plain = train_ptb([ptb_config("lstm-256", "none", s, SMOKE) for s in range(2)], corpus=_Corpus(),
                      build=toy_builder(), detach=lambda s: s.detach())
    assert {r["status"] for r in plain} <= {"early-stop", "max-epochs"}


# ---- interrupted runs resume bitwise ---------------------------------------------
class _Stop(Exception):
    pass


def _stop_after(k):
    def hook(epoch):
        if epoch == k:
            raise _Stop(epoch)
    return hook


def _resumed_equals_uninterrupted(train, cfgs, tmp_path, k, **kw):
    """Train ``cfgs`` once straight through and once interrupted after epoch ``k``
    then resumed; the records must be equal bitwise (timings aside)."""
    import json

    from marnn.train import resume

    straight = train(cfgs, **kw)
    with pytest.raises(_Stop):
        train(cfgs, state_dir=tmp_path, after_epoch=_stop_after(k), **kw)
    path = resume.state_path(cfgs, tmp_path)
    state = torch.load(path, weights_only=True)  # plain types and tensors only
    assert state["epoch"] == k and all(len(c) <= k for c in state["curves"])
    where = resume.progress(cfgs, tmp_path)  # what `paper_2core.py --plan` shows of a group in progress
    assert (where["epoch"], where["chunk"]) == (k, None) and 1 <= where["running"] <= len(cfgs)
    assert where["cpu_s"] == state["cpu_s"] > 0 and resume.progress(cfgs, tmp_path / "none") is None
    resumed = train(cfgs, state_dir=tmp_path, **kw)
    assert json.dumps([_strip(r) for r in resumed]) == json.dumps([_strip(r) for r in straight])
    return straight, resumed


def test_formal_run_resumes_bitwise_after_an_interruption(tmp_path):
    scale = SMOKE.with_(max_epochs=4)
    cfgs = _cfgs(modes=("none", "m"), seeds=(0, 1), model="jm-10", scale=scale)
    _resumed_equals_uninterrupted(train_formal, cfgs, tmp_path, 2)


def test_formal_resume_across_dropped_replicas(tmp_path):
    # replicas stop early, so the saved live model holds only some of them
    scale = SMOKE.with_(max_epochs=6, early_stop=1, lr_patience=1, train_size=60, lr_range=(0.2, 1.0))
    cfgs = _cfgs(modes=("none", "cm"), seeds=(0, 1, 2), scale=scale)
    straight, _ = _resumed_equals_uninterrupted(train_formal, cfgs, tmp_path, 3, build=toy_builder())
    assert len({r["epochs"] for r in straight}) > 1


def test_ptb_run_resumes_bitwise_after_an_interruption(tmp_path):
    from marnn.models import build
    from marnn.train.ptb import train_ptb

    def small(name, **kw):  # the real model, 16 units (fast)
        return build(name, hidden_size=16, **kw)

    scale = SMOKE.with_(ptb_max_epochs=3)
    cfgs = [ptb_config("lstm-256", m, s, scale) for m in ("none", "cm") for s in (0, 1)]
    _resumed_equals_uninterrupted(train_ptb, cfgs, tmp_path, 1, corpus=_Corpus(vocab=11, n=600), build=small)


def test_ptb_search_resumes_bitwise_after_its_halving(tmp_path):
    from marnn.train.ptb import train_ptb

    scale = SMOKE.with_(ptb_max_epochs=4, ptb_early_stop=4, ptb_draws=4, ptb_halving=(1, 2))
    cfgs = [ptb_config("lstm-256", "none", s, scale) for s in range(4)]
    straight, _ = _resumed_equals_uninterrupted(train_ptb, cfgs, tmp_path, 1, corpus=_Corpus(),
                                                build=toy_builder(), detach=lambda s: s.detach())
    assert [r["status"] for r in straight].count("pruned") == 3


def test_grid_group_keeps_its_state_until_its_records_are_written(tmp_path):
    from marnn import grid, store
    from marnn.train import resume

    cfgs = _cfgs(modes=("none",), seeds=(0, 1), scale=SMOKE.with_(max_epochs=3))
    with pytest.raises(_Stop):
        grid.run_group(cfgs, str(tmp_path), train_kwargs={"after_epoch": _stop_after(2)})
    folder = resume.state_dir(tmp_path)
    assert resume.state_path(cfgs, folder).exists() and store.missing(cfgs, tmp_path) == cfgs
    assert len(grid.run_group(cfgs, str(tmp_path))) == 2
    assert not resume.state_path(cfgs, folder).exists()
    straight = grid.run_group(cfgs, str(tmp_path / "other"))
    assert len(straight) == 2
    for c in cfgs:
        assert _strip(store.load_record(c, tmp_path)) == _strip(store.load_record(c, tmp_path / "other"))


# ---- evaluation: known answers -------------------------------------------------------------------
@pytest.mark.parametrize("name, length", [("marked-copy", 9), ("count-3", 9), ("unmarked-copy", 10)])
def test_an_exact_predictor_reaches_the_ceiling_and_the_lower_bound(name, length):
    """The Bayes predictor, evaluated on every member of a one-length split (its exact distribution),
    scores the ceiling accuracy and a cross-entropy gap of zero."""
    from types import SimpleNamespace

    from marnn import tasks
    from marnn.tasks import EOS, split_distribution
    from marnn.tasks.data import encode
    from marnn.train.evaluate import evaluate_bins

    task = tasks.get(name)
    outputs = list(task.outputs)
    post: dict[tuple, dict[str, float]] = {}
    strings = []
    for s, p in split_distribution(task, length, length):
        strings.append(list(s))
        full = list(s) + [EOS]
        for t, sym in enumerate(full):
            d = post.setdefault(tuple(full[:t]), {})
            d[sym] = d.get(sym, 0.0) + p

    def model(inputs):
        B, n = inputs.shape
        logits = torch.full((1, B, n + 1, len(outputs)), -1e9, dtype=torch.float64)
        for b in range(B):
            seq = [outputs[i] for i in inputs[b].tolist()]
            for t in range(n + 1):
                d = post[tuple(seq[:t])]
                total = sum(d.values())
                for sym, q in d.items():
                    logits[0, b, t, outputs.index(sym)] = math.log(q / total)
        return SimpleNamespace(logits=logits)

    batch = encode(task, strings)
    (res,) = evaluate_bins(model, task, {"bin0": [batch]}, {"bin0": (length, length)})
    row = res["bins"]["bin0"]
    assert row["strings"] == len(strings) == 2 ** task.free_bits(task.k_of(length))
    assert row["accuracy"] == pytest.approx(row["ceiling_accuracy"], abs=1e-12)
    assert row["ce_diff"] == pytest.approx(0.0, abs=1e-9)
    assert row["ceiling_exact"]


def test_uniform_logits_give_the_vocabulary_size_as_perplexity():
    from types import SimpleNamespace

    from marnn.ptb import batchify
    from marnn.train.evaluate import stream_cross_entropy

    V = 10_001
    data = batchify(torch.randint(0, V, (4 * 50 + 3,), generator=torch.Generator().manual_seed(0)), 4)

    def model(x, state=None):
        return SimpleNamespace(logits=torch.zeros(2, *x.shape, V), state=torch.zeros(1))

    ce = stream_cross_entropy(model, data, bptt=7, detach_state=lambda s: s)
    assert ce.shape == (2,)
    assert torch.exp(ce).tolist() == pytest.approx([V, V], rel=1e-6)  # float32 log-softmax


def test_set_threads_pins_numpy_blas_as_well_as_torch():
    """The fused kernels' CPU path multiplies with NumPy, whose BLAS ignores torch's thread count."""
    from conftest import run_at_two_threads

    out = run_at_two_threads("from marnn.train import set_threads\n"
                             "set_threads(1)\n"
                             "import torch\n"
                             "print(before, blas(), torch.get_num_threads())\n")
    assert out == ["[2]", "[1]", "1"], out


@pytest.mark.parametrize("model", ["lstm-256", "jm-hidden-247", "jm-learned-22", "rns-4-5",
                                   "vrns-3-3-5-published"])
def test_ptb_run_resumes_bitwise_from_inside_an_epoch(tmp_path, model):
    """A group saves inside an epoch (here after every chunk) with its carried state, the stack's
    included (RNS: a window longer than a chunk), and resumes from the chunk it
    reached with the same numbers as a run that was never stopped."""
    import json

    from marnn.models import build
    from marnn.train import resume
    from marnn.train.ptb import train_ptb

    def small(name, **kw):
        extra = {"window": 15} if "rns" in name else {}  # chunks of 10 tokens: the window spans two
        return build(name, hidden_size=16, **extra, **kw)

    class _StopChunk(Exception):
        pass

    def stop_at(epoch, chunk):
        if (epoch, chunk) == (2, 3):
            raise _StopChunk

    scale = SMOKE.with_(ptb_max_epochs=3)
    cfgs = [ptb_config(model, m, s, scale) for m in ("none", "m") for s in (0, 1)]
    kw = dict(corpus=_Corpus(vocab=11, n=900), build=small)
    straight = train_ptb(cfgs, **kw)
    with pytest.raises(_StopChunk):
        train_ptb(cfgs, state_dir=tmp_path, state_seconds=0.0, after_chunk=stop_at, **kw)
    state = torch.load(resume.state_path(cfgs, tmp_path), weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2 and state["partial"]["chunk"] == 3
    assert ("memory" in state["partial"]["carry"]) == (model != "lstm-256")
    assert (resume.progress(cfgs, tmp_path)["epoch"], resume.progress(cfgs, tmp_path)["chunk"]) == (1, 3)
    resumed = train_ptb(cfgs, state_dir=tmp_path, **kw)
    assert json.dumps([_strip(r) for r in resumed]) == json.dumps([_strip(r) for r in straight])


def test_large_blocks_kept_sets_and_restores_the_malloc_thresholds(monkeypatch):
    """Inside ``large_blocks_kept`` glibc keeps freed blocks up to 1 GiB in the heap;
    afterwards the environment's thresholds (dask's workers: a trim threshold of 64 KiB)
    or glibc's final dynamic ones come back and the heap is trimmed. The real glibc
    takes the calls where there is one."""
    from marnn import train

    calls = []

    class _Libc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    real = train._glibc()
    monkeypatch.setattr(train, "_glibc", _Libc)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with train.large_blocks_kept():
        assert calls == [("mallopt", -3, 1 << 30), ("mallopt", -1, (1 << 31) - 1)]
    assert calls[2:] == [("mallopt", -3, 32 << 20), ("mallopt", -1, 65536), ("trim", 0)]
    if real is not None:
        monkeypatch.setattr(train, "_glibc", lambda: real)
        with train.large_blocks_kept():
            x = torch.ones(1 << 24)
            del x
