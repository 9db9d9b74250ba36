"""The compiled RNS / VRNS step (marnn.kernels.rns_numba) against the torch reference step.

The torch code of ``rns_tape.Tape`` (``RNSCore(compiled=False)``) is the reference; it is
itself checked against the literal recurrences in tests/test_rns.py. Here every
comparison runs both in float64: readings and every gradient (action logits,
pushed vectors, bottom vector, model parameters) equal to float64 rounding.
"""
from __future__ import annotations

import pytest
import torch

from marnn import models
from marnn.kernels import backend, rns_tape
from marnn.kernels import rns_numba as rns_compiled
from marnn.models import rns

from test_rns import run_steps

pytestmark = [pytest.mark.skipif(not rns_compiled.AVAILABLE, reason="numba not installed"),
              pytest.mark.usefixtures("one_thread")]

f64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)




def _inputs(core, N, n, seed, dtype=f64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, n, core.num_actions, generator=g, dtype=f64) * scale).to(dtype)
    m = core.m
    pushed = torch.rand(N, n, m, generator=g, dtype=f64).to(dtype) if m else None
    bottom = torch.rand(N, m, generator=g, dtype=f64).to(dtype) if m else None
    weight = torch.randn(N, n + 1, core.reading_size, generator=g, dtype=f64).to(dtype)
    return logits, pushed, bottom, weight


def _run(core, logits, pushed, bottom, state=None):
    return run_steps(core, logits, pushed, bottom, state)


def _both(Q, S, m, window, N, n, seed=0, bottom="equations", dtype=f64, scale=1.0):
    """Readings and gradients (logits, pushed, bottom) of the compiled and the reference step."""
    res = []
    for compiled in (True, False):
        core = rns.RNSCore(Q, S, m, window, bottom=bottom, compiled=compiled)
        logits, pushed, bot, w = _inputs(core, N, n, seed, dtype, scale)
        xs = [x.requires_grad_(True) for x in (logits, pushed, bot) if x is not None]
        out, state = _run(core, logits, pushed, bot)
        assert (state.tape.kern is not None) == compiled
        grads = torch.autograd.grad((out * w).sum(), xs)
        res.append((out.detach(), grads))
    return res


CASES = [  # (Q, S, m, window, N, n): N = replicas x strings, flattened
    (3, 3, None, None, 6, 14),       # rns-3-3, formal (unwindowed)
    (2, 3, 3, None, 4, 11),          # vrns-2-3-3
    (3, 3, 5, None, 3, 9),           # vrns-3-3-5
    (4, 5, None, 6, 2, 15),          # rns-4-5, windowed (PTB uses D = 35)
    (3, 3, 5, 4, 3, 12),             # vrns-3-3-5 windowed
    (2, 2, None, 1, 2, 6),           # D = 1: only the push column
    (2, 2, 2, 2, 2, 7),              # D = 2: no pop term ever
    (1, 1, None, None, 2, 8),        # Q = S = 1
]


@pytest.mark.parametrize("Q,S,m,window,N,n", CASES)
def test_compiled_step_equals_reference(Q, S, m, window, N, n):
    (out_c, g_c), (out_r, g_r) = _both(Q, S, m, window, N, n, seed=Q * 100 + n)
    torch.testing.assert_close(out_c, out_r, **TOL)
    for a, b in zip(g_c, g_r, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("window", [None, 3, 8])
def test_published_bottom_layout_equals_reference(window):
    (out_c, g_c), (out_r, g_r) = _both(2, 3, 3, window, 4, 10, seed=5, bottom="published")
    torch.testing.assert_close(out_c, out_r, **TOL)
    for a, b in zip(g_c, g_r, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    # and the published layout differs from the equations' one (the test would not see a mix-up otherwise)
    (out_e, _), _ = _both(2, 3, 3, window, 4, 10, seed=5)
    assert (out_e - out_c).abs().max() > 1e-3


def test_extreme_logits_long_string_equals_reference():
    """Logits in [-30, 30] over 150 steps: underflowing configurations are dropped alike."""
    (out_c, g_c), (out_r, g_r) = _both(2, 2, None, None, 2, 150, seed=7, scale=15.0)
    torch.testing.assert_close(out_c, out_r, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(g_c[0], g_r[0], rtol=1e-7, atol=1e-9 * g_r[0].abs().max().item())


def test_gradcheck_compiled_step():
    core = rns.RNSCore(2, 2, 2, window=4)
    logits, pushed, bottom, w = _inputs(core, 2, 6, seed=3)
    xs = tuple(x.requires_grad_(True) for x in (logits, pushed, bottom))

    def f(lg, v, b):
        out, state = _run(core, lg, v, b)
        assert state.tape.kern is not None
        return (out * w).sum()

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-8)


def test_float32_compiled_close_to_float64_reference():
    (out32, g32), _ = _both(3, 3, None, None, 3, 20, seed=2, dtype=torch.float32)
    _, (out64, g64) = _both(3, 3, None, None, 3, 20, seed=2)
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-5)
    torch.testing.assert_close(g32[0].double(), g64[0], rtol=0, atol=1e-4 * g64[0].abs().max().item())


@pytest.mark.parametrize("m,D", [(None, 4), (2, 5), (None, None)])
def test_chunks_with_detached_state_equal_reference(m, D):
    """Truncated BPTT (PTB): detach_state copies the packed triangle; each chunk's readings
    and gradients equal the reference path's."""
    outs = []
    for compiled in (True, False):
        core = rns.RNSCore(2, 3, m, window=D, compiled=compiled)
        logits, pushed, bottom, w = _inputs(core, 3, 18, seed=11)
        state, got = None, []
        for a, b in ((0, 5), (5, 11), (11, 18)):
            x = logits[:, a:b].clone().requires_grad_(True)
            v = None if pushed is None else pushed[:, a:b]
            out, state = _run(core, x, v, bottom, state)
            (gx,) = torch.autograd.grad((out * w[:, :out.shape[1]]).sum(), x)
            got += [out.detach(), gx]
            state = core.detach_state(state)
            assert (state.tape.kern is not None) == compiled
        outs.append(got)
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_long_no_grad_windowed_stream_stays_small_and_equals_reference():
    """Without grad the packed triangle drops rows that left the window (bounded memory)."""
    res = []
    for compiled in (True, False):
        core = rns.RNSCore(2, 2, None, window=5, compiled=compiled)
        logits, _, _, _ = _inputs(core, 2, 300, seed=4)
        with torch.no_grad():
            out, state = _run(core, logits, None, None)
        res.append(out)
        if compiled:
            assert state.tape.pk.shape[2] < 4096  # O(D^2 Q K) per string and symbol, not O(n D)
    torch.testing.assert_close(res[0], res[1], **TOL)


def test_retain_graph_and_shorter_second_pass_equal_reference():
    res = []
    for compiled in (True, False):
        core = rns.RNSCore(2, 2, compiled=compiled)
        logits, _, _, _ = _inputs(core, 2, 9, seed=8)
        logits.requires_grad_(True)
        out, _ = _run(core, logits, None, None)
        (g1,) = torch.autograd.grad(out.square().sum(), logits, retain_graph=True)
        (g2,) = torch.autograd.grad((out[:, 4] * out[:, 3]).sum(), logits)  # covers steps 1..4 only
        res.append((g1, g2))
    for a, b in zip(*res, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_same_inputs_same_numbers():
    runs = [_both(3, 3, 5, None, 3, 12, seed=1)[0] for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


def test_backend_switch(monkeypatch):
    core = rns.RNSCore(2, 2)
    assert core.initial_state(1, None, torch.float32).tape.kern is not None  # default: compiled
    assert core.initial_state(1, None, torch.float16).tape.kern is None  # no kernel for 16-bit
    assert rns.RNSCore(2, 2, compiled=False).initial_state(1, None, f64).tape.kern is None
    monkeypatch.setattr(backend, "FUSED_BACKEND", "torch")  # marnn bench --backend torch
    assert core.initial_state(1, None, torch.float32).tape.kern is None


@pytest.mark.parametrize("name,setting", [("rns-3-3", "formal"), ("vrns-2-3-3", "formal"),
                                          ("vrns-3-3-5-published", "formal"), ("rns-2-3", "ptb")])
def test_models_fused_false_take_the_reference_with_equal_numbers(name, setting):
    """A replica-batched model (R = 3): logits and every parameter gradient equal between the
    compiled step (default) and ``fused=False`` (the torch reference step); PTB: windowed with
    the state carried into a second chunk."""
    kw = dict(task="marked-copy") if setting == "formal" else dict(vocab_size=30, window=4, hidden_size=12)
    base = models.build(name, replicas=3, seeds=[0, 1, 2], dtype=f64, **kw)
    ref = base.with_config(fused=False).train()
    base.train()
    g = torch.Generator().manual_seed(0)
    V = base.config.input_size
    xs = [torch.randint(0, V, (3, 4, 9), generator=g) for _ in range(2)]
    got = []
    for model in (base, ref):
        model.zero_grad()
        state, logits = None, []
        for x in xs if setting == "ptb" else xs[:1]:
            out = model(x, state=state)
            logits.append(out.logits)
            state = models.detach_state(out.state) if setting == "ptb" else None
            out.logits.square().mean().backward()
        got.append((logits, {k: p.grad.clone() for k, p in model.named_parameters()}))
    assert got[0][1].keys() == got[1][1].keys()
    for a, b in zip(got[0][0], got[1][0], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    for k in got[0][1]:
        torch.testing.assert_close(got[0][1][k], got[1][1][k], **TOL)


@pytest.mark.parametrize("m,window", [(None, None), (3, 4)])
def test_strings_split_over_threads_give_the_same_numbers(monkeypatch, m, window):
    """With several torch threads the kernels run blocks of strings in parallel threads:
    bitwise the same readings and gradients as one thread."""
    monkeypatch.setattr(rns_tape, "_SPLIT_WORK", 0)
    res = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        res.append(_both(2, 3, m, window, 5, 10, seed=6)[0])
    for out, grads in res[1:]:
        assert torch.equal(out, res[0][0])
        for a, b in zip(grads, res[0][1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,width,rows,group", [(1, 1, 1, 4), (3, 7, 3, 4), (5, 8, 4, 4), (9, 45, 4, 4),
                                                (6, 33, 3, 3), (7, 20, 5, 2), (13, 61, 6, 4), (4, 16, 2, 1)])
def test_streamed_rows_give_the_tiles_numbers(dtype, n, width, rows, group):
    """The row sweep of the pop term and the deferred adjoint (``_rows_seq``: each row of X read
    once, front to back) adds the same terms in the same order as the register tiles
    (``_rows_acc``): the same numbers, bit for bit, for any number of rows and any width."""
    np_dt = torch.empty(0, dtype=dtype).numpy().dtype
    g = torch.Generator().manual_seed(n * 100 + width)
    lda, ldp = width + 5, n + 2
    X = torch.randn(4 * n * (width + 3), generator=g, dtype=f64).to(dtype).numpy()
    R = torch.randperm(n, generator=g).numpy().astype("int64") * (width + 3) + 2  # rows in any order
    P = torch.randn(rows * ldp + 1, generator=g, dtype=f64).to(dtype).numpy()
    A0 = torch.randn(rows * lda + 3, generator=g, dtype=f64).to(dtype).numpy()
    tile, seq = A0.copy(), A0.copy()
    rns_compiled._rows_acc(tile, 1, lda, P, 1, ldp, X, R, 0, 1, n, width, rows)
    rns_compiled._rows_seq(seq, 1, lda, P, 1, ldp, X, R, 0, 1, n, width, rows, group)
    assert seq.dtype == np_dt
    assert (seq.view(f"u{seq.itemsize}") == tile.view(f"u{tile.itemsize}")).all()
    assert not (tile == A0).all()
