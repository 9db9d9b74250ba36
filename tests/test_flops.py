"""The analytic FLOP counts of marnn.flops against counted references."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from marnn import flops, models


def counted(model, x, state=None):
    """FLOPs torch counts on the generic (unfused) forward pass, and the output."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        out = model(x, state=state)
    return fc.get_total_flops(), out


def generic(name, **kw):
    return models.build(name, **kw).with_config(fused=False)


@pytest.mark.parametrize("name", ["lstm", "jm-10", "jm-3.3.3", "jm-hidden", "lstm-7"])
def test_formal_products_equal_the_counted_forward(name):
    m = generic(name, task="marked-copy")
    x = torch.randint(0, m.config.input_size, (1, 3, 7))
    got, _ = counted(m, x)
    ana = flops.forward_flops(m.config, 3, 7)
    # FlopCounterMode counts matrix products; the superposition update is elementwise
    assert got == ana["total"] - ana["stack"]


@pytest.mark.parametrize("name,window", [("rns-2-2", 3), ("rns-2-3", 2), ("vrns-2-2-3", 3), ("rns-3-2", None)])
def test_rns_equals_the_counted_forward(name, window):
    # with at most one pair of push times (window 3, or n = 3) the kernel's pop
    # product is exactly the triangle the analytic count takes
    n = 3 if window is None else 7
    m = generic(name, task="marked-copy", window=window)
    x = torch.randint(0, m.config.input_size, (1, 2, n))
    got, _ = counted(m, x)
    assert got == flops.forward_flops(m.config, 2, n)["total"]


def test_carried_state_counts():
    # PTB setting: state carried, every step has W_hh h and a stack update
    m = generic("rns-2-2", vocab_size=11, window=3)
    x = torch.randint(0, 11, (1, 2, 5))
    _, out = counted(m, x)
    state = models.detach_state(out.state)
    got, _ = counted(m, x, state)
    assert got == flops.forward_flops(m.config, 2, 5, fresh=False, start=5)["total"]
    lm = generic("lstm-6", vocab_size=13)
    _, out = counted(lm, x.clamp_max(12))
    got, _ = counted(lm, x.clamp_max(12), models.detach_state(out.state))
    assert got == flops.forward_flops(lm.config, 2, 5, fresh=False)["total"]


def test_superposition_update_by_hand():
    # jm-10, fresh, n = 7, pruned heights min(t, 7 - t) for t = 1..6 = 1 2 3 3 2 1:
    # 12 kept cells x 10 features x 3 multiply-adds x 2 FLOP x 3 strings
    cfg = models.make_config("jm-10", task="marked-copy")
    assert flops.forward_flops(cfg, 3, 7)["stack"] == 12 * 10 * 3 * 2 * 3
    # PTB: depth limit 10, carried stack already at the limit: 10 cells every step
    cfg = models.make_config("jm-learned-22", vocab_size=100)
    assert flops.forward_flops(cfg, 2, 4, fresh=False, start=10)["stack"] == 4 * 10 * 22 * 6 * 2


@pytest.mark.parametrize("Q,S,n,window", [(2, 2, 9, None), (3, 2, 12, 5), (2, 3, 40, 35), (1, 1, 6, 1)])
def test_rns_pop_term_against_the_recurrence(Q, S, n, window):
    pop = sum(flops.rns_step_flops(Q, S, None, window, t)["pop"] for t in range(n))
    assert pop == 2 * flops.rns_pop_macs_enumerated(Q, S, n, window)


def test_known_totals():
    # the figures quoted in benchmarks/README.md
    lstm = models.make_config("lstm-256", vocab_size=10001)
    parts = flops.forward_flops(lstm, 32, 35, fresh=False)
    assert parts["classifier"] == 2 * 1120 * 256 * 10001
    assert flops.train_flops(lstm, 32, 35, fresh=False) == 3 * (2 * 1120 * 256 * 10001 + 2 * 2 * 1120 * 256 * 1024)
    rns = models.make_config("rns-3-3", task="marked-copy")
    assert flops.rns_pop_share(rns, 10, 60) == pytest.approx(0.80, abs=0.01)
    assert flops.train_flops(rns, 10, 60) == pytest.approx(0.6e9, rel=0.15)


def test_bad_sizes():
    cfg = models.make_config("lstm", task="marked-copy")
    with pytest.raises(ValueError, match="batch and steps must be positive"):
        flops.forward_flops(cfg, 0, 5)


@pytest.mark.parametrize("name,kw", [("lstm", dict(task="marked-copy")), ("jm-3.3.3", dict(task="marked-copy")),
                                     ("jm-hidden", dict(task="marked-copy")), ("vrns-2-3-3", dict(task="marked-copy")),
                                     ("rns-3-3", dict(task="marked-copy")), ("lstm-256", dict(vocab_size=101)),
                                     ("vrns-3-3-5", dict(vocab_size=101))])
def test_parameter_count_and_step_bytes(name, kw):
    from marnn import flops, models

    cfg = models.make_config(name, **kw)
    assert flops.num_parameters(cfg) == models.build(name, **kw).num_parameters()
    train = flops.step_bytes(cfg, 10, 30)
    ev = flops.step_bytes(cfg, 10, 30, train=False)
    assert train["total"] == pytest.approx(sum(v for k, v in train.items() if k != "total"))
    assert ev["saved"] == 0 and ev["total"] < train["total"]
    assert ev["params"] == flops.WORD * flops.num_parameters(cfg)
    assert train["params"] == flops.WORD * flops.num_parameters(cfg) * (2 + flops.OPT_PASSES["adam"])
    assert flops.step_bytes(cfg, 20, 30)["saved"] == pytest.approx(2 * train["saved"])  # linear in the batch


def test_rns_saved_state_is_the_columns():
    """Training saves each RNS column (L K^2 numbers per string and step), written once and read once."""
    from marnn import flops, models

    rns = models.make_config("rns-3-3", task="marked-copy")
    lstm = models.make_config("lstm", task="marked-copy")
    B, n, K = 2, 12, 9
    cols = sum((t + 2) * K * K + K for t in range(n - 1))  # step t + 1 keeps push times 0..t+1
    extra = flops.step_bytes(rns, B, n)["saved"] - flops.step_bytes(lstm, B, n)["saved"]
    assert extra == pytest.approx(2 * flops.WORD * B * (cols + n * K))  # + the reading (K per step)
