"""Tests for the renormalizing nondeterministic stack (marnn.models.rns).

Three independent references live in this file (never in the library):

* ``loop_reference``: the recurrences of book/reference/models.md followed literally, one scalar
  (per batch element) at a time, loops over i, k, q, x, r, y, s, z, u, in real
  float64 arithmetic; autograd through it gives reference gradients.
* ``enumerate_runs``: enumerates every PDA run for tiny n (merging identical
  configurations), to cross-check ``loop_reference`` itself.
* ``log_reference``: float64 log space (logsumexp), vectorised, for n = 400
  strings with extreme logits.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from marnn.kernels import rns_tape
from marnn.models import rns

pytestmark = pytest.mark.usefixtures("one_thread")

RNSCore, rns_readings = rns.RNSCore, rns.rns_readings
f64 = torch.float64


# ----------------------------------------------------------------------------- references
def loop_reference(push, repl, pop, pushed=None, bottom=None, window=None, layout="equations"):
    """push/repl (B,n,Q,S,Q,S), pop (B,n,Q,S,Q) positive weights -> readings (B, n+1, ...).

    ``layout="published"``: zeta[-1->0] holds the bottom vector in its whole
    Q*S x Q*S block (the published implementation), not only at (q0,⊥)->(q0,⊥).
    """
    B, n, Q, S = pop.shape[:4]
    vec = pushed is not None
    one = torch.ones(B, dtype=push.dtype)
    g, z, alpha = {}, {}, {}
    g[(-1, 0, 0, 0, 0, 0)] = one
    if vec:
        for q, x, r, y in itertools.product(range(Q), range(S), range(Q), range(S)):
            if layout == "published" or (q, x, r, y) == (0, 0, 0, 0):
                z[(-1, 0, q, x, r, y)] = bottom
    for q, x in itertools.product(range(Q), range(S)):
        alpha[(-1, q, x)] = one * float(q == 0 and x == 0)
        alpha[(0, q, x)] = one * float(q == 0 and x == 0)
    if vec:
        r0 = [bottom if (q, x) == (0, 0) or layout == "published" else torch.zeros_like(bottom)
              for q in range(Q) for x in range(S)]
        out = [torch.stack(r0, 1).reshape(B, -1)]
    else:
        out = [torch.stack([alpha[(0, q, x)] for q in range(Q) for x in range(S)], 1)]
    for t in range(1, n + 1):
        Pu, Re, Po = push[:, t - 1], repl[:, t - 1], pop[:, t - 1]
        P = {}
        for k in range(-1, t - 1):
            for u, y, r in itertools.product(range(Q), range(S), range(Q)):
                acc = 0
                for s, zz in itertools.product(range(Q), range(S)):
                    gv = g.get((k, t - 1, u, y, s, zz))
                    if gv is not None:
                        acc = acc + gv * Po[:, s, zz, r]
                P[(k, u, y, r)] = acc
        for i in range(-1, t):
            if window is not None and i < t - window:
                continue                                    # gamma[i->t] = 0
            for q, x, r, y in itertools.product(range(Q), range(S), range(Q), range(S)):
                if i == -1 and (q, x) != (0, 0):
                    continue
                val, zv = 0, 0
                if i == t - 1:
                    val = Pu[:, q, x, r, y]
                    if vec:
                        zv = Pu[:, q, x, r, y][:, None] * pushed[:, t - 1]
                for s, zz in itertools.product(range(Q), range(S)):
                    gv = g.get((i, t - 1, q, x, s, zz))
                    if gv is not None:
                        val = val + gv * Re[:, s, zz, r, y]
                    if vec and (i, t - 1, q, x, s, zz) in z:
                        zv = zv + z[(i, t - 1, q, x, s, zz)] * Re[:, s, zz, r, y][:, None]
                for k in range(i + 1, t - 1):
                    for u in range(Q):
                        gv = g.get((i, k, q, x, u, y))
                        if gv is not None:
                            val = val + gv * P[(k, u, y, r)]
                        if vec and (i, k, q, x, u, y) in z:
                            zv = zv + z[(i, k, q, x, u, y)] * P[(k, u, y, r)][:, None]
                g[(i, t, q, x, r, y)] = val
                if vec:
                    z[(i, t, q, x, r, y)] = zv
        tot, reading = 0, []
        for r, y in itertools.product(range(Q), range(S)):
            a, e = 0, 0
            for i in range(-1, t):
                for q, x in itertools.product(range(Q), range(S)):
                    gv = g.get((i, t, q, x, r, y))
                    if gv is not None:
                        a = a + alpha[(i, q, x)] * gv
                    if vec and (i, t, q, x, r, y) in z:
                        e = e + alpha[(i, q, x)][:, None] * z[(i, t, q, x, r, y)]
            alpha[(t, r, y)] = a
            tot = tot + a
            reading.append(e if vec else a)
        out.append(torch.stack(reading, 1).reshape(B, -1) / tot[:, None])
    return torch.stack(out, 1)


def enumerate_runs(push, repl, pop, pushed=None, bottom=None, window=None):
    """Sum over PDA runs. Configuration = (state, stack of (symbol, push time)); one example."""
    n, Q, S = pop.shape[0], pop.shape[1], pop.shape[2]
    configs = {(0, ((0, 0),)): 1.0}
    readings = []

    def read(cf):
        tot = sum(cf.values())
        if pushed is None:
            r = torch.zeros(Q, S, dtype=f64)
            for (q, st), w in cf.items():
                r[q, st[-1][0]] += w
            return (r / tot).reshape(-1)
        m = pushed.shape[-1]
        r = torch.zeros(Q, S, m, dtype=f64)
        for (q, st), w in cf.items():
            j = st[-1][1]
            r[q, st[-1][0]] += w * (bottom if j == 0 else pushed[j - 1])
        return (r / tot).reshape(-1)

    readings.append(read(configs))
    for t in range(1, n + 1):
        new = {}
        for (q, st), w in configs.items():
            x = st[-1][0]
            moves = []
            for r, y in itertools.product(range(Q), range(S)):
                moves.append((r, st + ((y, t),), push[t - 1, q, x, r, y]))
                moves.append((r, st[:-1] + ((y, st[-1][1]),), repl[t - 1, q, x, r, y]))
            if len(st) >= 2:
                for r in range(Q):
                    moves.append((r, st[:-1], pop[t - 1, q, x, r]))
            for r, st2, wt in moves:
                if window is not None and t - st2[-1][1] > window - 1:
                    continue                                # top pushed outside the window
                key = (r, st2)
                new[key] = new.get(key, 0.0) + w * float(wt)
        configs = new
        readings.append(read(configs))
    return torch.stack(readings)


def log_reference(lpush, lrepl, lpop, window=None):
    """Float64 log-space recurrences (vectorised over i and k); RNS readings (B, n+1, K)."""
    B, n, Q, S = lpop.shape[:4]
    K = Q * S
    ninf = float("-inf")
    lPu, lRe = lpush.reshape(B, n, K, K), lrepl.reshape(B, n, K, K)
    lPo = lpop.reshape(B, n, K, Q)
    tri = torch.full((B, n + 1, n + 1, K, K), ninf, dtype=f64)   # tri[:, j, c] = log gamma[j-1 -> c]
    tri[:, 0, 0, 0, 0] = 0.0
    lalpha = torch.full((B, n + 2, K), ninf, dtype=f64)          # lalpha[:, i+1] = log alpha[i]
    lalpha[:, 0, 0] = 0.0
    lalpha[:, 1, 0] = 0.0
    out = [torch.softmax(lalpha[:, 1], -1)]
    for t in range(1, n + 1):
        prev = tri[:, :t, t - 1]                                           # (B, j<t, K, K)
        col = torch.logsumexp(prev[..., :, :, None] + lRe[:, t - 1, None, None], dim=-2)  # replace
        if t >= 2:
            # lP[:, c] = log P_t[c][(u,y), r] for c = 0..t-2, from gamma[c -> t-1] (j' = c+1)
            lP = torch.logsumexp(tri[:, 1:t, t - 1][..., None] + lPo[:, t - 1, None, None], dim=-2)
            lP = lP.reshape(B, t - 1, Q, S, Q)                               # (B, c, u, y, r)
            lo = 0 if window is None else max(0, t - window + 1)             # band of the window
            if lo < t - 1:
                L = t - 1 - lo
                T3 = tri[:, lo:t - 1, lo:t - 1].reshape(B, L, L, K, Q, S)     # (B, j, c, a, u, y)
                X = T3[..., None] + lP[:, None, lo:, None]                   # (B, j, c, a, u, y, r)
                popt = torch.logsumexp(X, dim=(2, 4)).transpose(-1, -2)      # (B, j, a, r, y)
                col[:, lo:t - 1] = torch.logaddexp(col[:, lo:t - 1], popt.reshape(B, L, K, K))
        col = torch.cat([col, lPu[:, t - 1, None]], 1)                       # (B, t+1, K, K)
        if window is not None:
            col[:, :max(0, t - window + 1)] = ninf
        tri[:, :t + 1, t] = col
        la = torch.logsumexp(lalpha[:, :t + 1, :, None] + col, dim=(1, 2))   # (B, K)
        lalpha[:, t + 1] = la
        out.append(torch.softmax(la, -1))
    return torch.stack(out, 1)


# ----------------------------------------------------------------------------- helpers
def random_actions(B, n, Q, S, m=None, scale=1.0, dtype=f64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(B, n, Q, S, Q, S, generator=g, dtype=dtype) * scale)
    lr = (torch.randn(B, n, Q, S, Q, S, generator=g, dtype=dtype) * scale)
    lo = (torch.randn(B, n, Q, S, Q, generator=g, dtype=dtype) * scale)
    pushed = torch.rand(B, n, m, generator=g, dtype=dtype) if m else None
    bottom = torch.rand(B, m, generator=g, dtype=dtype) if m else None
    ts = [lp, lr, lo] + ([pushed, bottom] if m else [])
    if grad:
        for x in ts:
            x.requires_grad_(True)
    return ts


def grads(y, w, xs):
    gs = torch.autograd.grad((y * w).sum(), xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs, strict=True)]


def logits_of(lp, lr, lo):
    """Pack (B, n, Q, S, ...) actions into the step() logit layout (B, n, Q*S*(2QS+Q))."""
    B, n, Q, S = lo.shape[:4]
    K = Q * S
    return torch.cat([lp.reshape(B, n, Q, S, K), lr.reshape(B, n, Q, S, K), lo], -1).reshape(B, n, -1)


def run_steps(core, logits, pushed=None, bottom=None, state=None, dtype=None):
    B, n = logits.shape[:2]
    if state is None:
        state = core.initial_state(B, logits.device, dtype or logits.dtype, bottom)
        out = [core.initial_reading(state)]
    else:
        out = []
    for t in range(n):
        r, state = core.step(state, logits[:, t], None if pushed is None else pushed[:, t])
        out.append(r)
    return torch.stack(out, 1), state


CASES = [  # (Q, S, m, n, window)
    (2, 2, None, 5, None),
    (1, 2, None, 7, None),
    (1, 1, None, 4, None),
    (3, 2, None, 4, None),
    (2, 3, 3, 4, None),
    (1, 2, 2, 6, None),
    (2, 2, None, 6, 3),
    (2, 2, 2, 6, 2),
    (2, 2, None, 5, 1),
    (1, 3, 2, 7, 4),
]


# ----------------------------------------------------------------------------- the references agree
@pytest.mark.parametrize("Q,S,m,n,window", [(2, 2, None, 4, None), (1, 2, 2, 6, None), (2, 2, None, 4, 2),
                                            (1, 2, None, 6, 3), (2, 1, 2, 4, None)])
def test_enumeration_matches_loop_reference(Q, S, m, n, window):
    lp, lr, lo, *v = random_actions(1, n, Q, S, m, grad=False, seed=1)
    pushed, bottom = (v + [None, None])[:2]
    ref = loop_reference(lp.exp(), lr.exp(), lo.exp(), pushed, bottom, window)[0]
    enum = enumerate_runs(lp.exp()[0], lr.exp()[0], lo.exp()[0], None if pushed is None else pushed[0],
                          None if bottom is None else bottom[0], window)
    torch.testing.assert_close(ref, enum, rtol=1e-10, atol=1e-12)


def test_log_reference_matches_loop_reference():
    lp, lr, lo = random_actions(2, 6, 2, 2, grad=False, seed=2, scale=2.0)
    for window in (None, 3):
        ref = loop_reference(lp.exp(), lr.exp(), lo.exp(), window=window)
        torch.testing.assert_close(log_reference(lp, lr, lo, window), ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- fast == reference
@pytest.mark.parametrize("Q,S,m,n,window", CASES)
def test_readings_and_gradients_match_loop_reference(Q, S, m, n, window):
    xs = random_actions(2, n, Q, S, m, seed=3)
    lp, lr, lo = xs[:3]
    pushed, bottom = (xs[3:] + [None, None])[:2]
    ref = loop_reference(lp.exp(), lr.exp(), lo.exp(), pushed, bottom, window)
    fast = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom, window=window)
    assert fast.shape == (2, n + 1, Q * S * (m or 1))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-9)
    w = torch.randn_like(ref)
    for gf, gr in zip(grads(fast, w, xs), grads(ref, w, xs), strict=True):
        torch.testing.assert_close(gf, gr, rtol=1e-3, atol=1e-9)


def test_positive_weights_input_matches_log_input():
    xs = random_actions(2, 5, 2, 2, 3, seed=4)
    lp, lr, lo, pushed, bottom = xs
    a = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom)
    W = [x.detach().exp().requires_grad_(True) for x in (lp, lr, lo)]
    b = rns_readings(*W, log=False, pushed=pushed, bottom=bottom)
    torch.testing.assert_close(a, b)
    w = torch.randn_like(a)
    ga = grads(a, w, [pushed, bottom, lp, lr, lo])
    gb = grads(b, w, [pushed, bottom] + W)
    for x, y in zip(ga[:2], gb[:2], strict=True):
        torch.testing.assert_close(x, y)
    for x, y, wt in zip(ga[2:], gb[2:], W, strict=True):        # d/dlog w = w * d/dw
        torch.testing.assert_close(x, y * wt)
    ref = loop_reference(*W, pushed, bottom)
    for x, y in zip(gb, grads(ref, w, [pushed, bottom] + W), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("m", [None, 2])
def test_step_interface_layout_and_sizes(m):
    Q, S, n, B = 2, 3, 5, 3
    core = RNSCore(Q, S, m)
    K = Q * S
    assert core.num_actions == K * (2 * K + Q)
    assert core.reading_size == K * (m or 1)
    assert core.pushed_size == (m or 0)
    xs = random_actions(B, n, Q, S, m, seed=5)
    lp, lr, lo = xs[:3]
    pushed, bottom = (xs[3:] + [None, None])[:2]
    logits = logits_of(lp, lr, lo)
    assert logits.shape == (B, n, core.num_actions)
    out, _ = run_steps(core, logits, pushed, bottom)
    ref = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    w = torch.randn_like(ref)
    for x, y in zip(grads(out, w, xs), grads(ref, w, xs), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    st = core.initial_state(B, None, f64, bottom)
    r0 = core.initial_reading(st)
    assert r0.shape == (B, core.reading_size)
    expect = torch.zeros(B, K, m or 1, dtype=f64)
    expect[:, 0] = 1 if m is None else bottom
    torch.testing.assert_close(r0, expect.reshape(B, -1))


# ----------------------------------------------------------------------------- numerics on long strings
@pytest.mark.parametrize("Q,S,n,window", [(1, 2, 400, None), (2, 2, 400, 35), (2, 2, 120, None)])
def test_long_string_extreme_logits_vs_log_space(Q, S, n, window):
    g = torch.Generator().manual_seed(6)
    raw = [torch.rand(1, n, Q, S, Q, S, generator=g, dtype=f64) * 60 - 30,
           torch.rand(1, n, Q, S, Q, S, generator=g, dtype=f64) * 60 - 30,
           torch.rand(1, n, Q, S, Q, generator=g, dtype=f64) * 60 - 30]
    ref = log_reference(*raw, window=window)
    core = RNSCore(Q, S, None, window)
    logits = logits_of(*raw)
    for dtype, tol in ((f64, 1e-9), (torch.float32, 1e-4)):
        x = logits.to(dtype).requires_grad_(True)
        out, _ = run_steps(core, x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol)
        (gx,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out).to(dtype)).sum(), x)
        assert torch.isfinite(gx).all()
        if dtype == f64:
            g64 = gx
        else:  # float32 gradients agree with float64 ones (to float32 accuracy)
            torch.testing.assert_close(gx.double(), g64, rtol=0, atol=2e-2 * g64.abs().max().item())


def test_vrns_long_extreme_finite():
    Q, S, m, n = 2, 2, 3, 300
    core = RNSCore(Q, S, m)
    g = torch.Generator().manual_seed(7)
    logits = (torch.rand(2, n, core.num_actions, generator=g) * 60 - 30).requires_grad_(True)
    pushed = torch.rand(2, n, m, generator=g).requires_grad_(True)
    bottom = torch.rand(2, m, generator=g).requires_grad_(True)
    out, _ = run_steps(core, logits, pushed, bottom)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 + 1e-5
    gs = torch.autograd.grad(out.sum(), [logits, pushed, bottom])
    assert all(torch.isfinite(x).all() for x in gs)


# ----------------------------------------------------------------------------- windowing and chunking
@pytest.mark.parametrize("m", [None, 2])
def test_windowed_equals_unwindowed_when_window_covers_sequence(m):
    n = 7
    xs = random_actions(2, n, 2, 2, m, seed=8)
    lp, lr, lo = xs[:3]
    pushed, bottom = (xs[3:] + [None, None])[:2]
    full = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom)
    w = torch.randn_like(full)
    gfull = grads(full, w, xs)
    for D in (n + 1, n + 10):
        win = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom, window=D)
        torch.testing.assert_close(win, full, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads(win, w, xs), gfull, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # D = n: identical up to the last step (where the bottom-only runs leave the window)
    win = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom, window=n)
    torch.testing.assert_close(win[:, :n], full[:, :n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("Q,S,m,D", [(2, 2, None, 4), (2, 3, 2, 5), (1, 2, None, 3), (2, 2, 3, 1)])
def test_chunked_with_detached_state_equals_whole_sequence(Q, S, m, D):
    B, n, split = 2, 17, (5, 6, 6)
    core = RNSCore(Q, S, m, window=D)
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(B, n, core.num_actions, generator=g, dtype=f64) * 2
    pushed = torch.rand(B, n, m, generator=g, dtype=f64) if m else None
    bottom = torch.rand(B, m, generator=g, dtype=f64) if m else None
    whole, _ = run_steps(core, logits, pushed, bottom)
    state, parts, t0 = None, [], 0
    last_x = None
    for L in split:
        x = logits[:, t0:t0 + L].clone().requires_grad_(True)
        v = None if m is None else pushed[:, t0:t0 + L]
        if state is None:
            out, state = run_steps(core, x, v, bottom)
        else:
            out, state = run_steps(core, x, v, state=state)
        parts.append(out.detach())
        state = core.detach_state(state)
        last_x, last_out, t0 = x, out, t0 + L
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-12, atol=1e-12)
    # gradient of the last chunk's readings w.r.t. its own logits equals the whole-sequence one
    wgt = torch.randn_like(last_out)
    (gc,) = torch.autograd.grad((last_out * wgt).sum(), last_x)
    xw = logits.clone().requires_grad_(True)
    outw, _ = run_steps(core, xw, pushed, bottom)
    (gw,) = torch.autograd.grad((outw[:, -split[-1]:] * wgt).sum(), xw)
    torch.testing.assert_close(gc, gw[:, -split[-1]:], rtol=1e-10, atol=1e-12)


def test_long_windowed_no_grad_stream_matches_chunked():
    """No-grad streaming compacts the buffer; results equal a grad-mode run."""
    core = RNSCore(2, 2, None, window=6)
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(1, 60, core.num_actions, generator=g, dtype=f64)
    with torch.no_grad():
        a, _ = run_steps(core, logits)
    b, _ = run_steps(core, logits.clone().requires_grad_(True))
    torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- hand-built action sequences
def one_hot_actions(Q, S, seq, big=60.0):
    """seq of (kind, target) with kind in push/replace/pop; every (q, x) row picks that action."""
    K = Q * S
    n = len(seq)
    logits = torch.full((1, n, Q, S, 2 * K + Q), -big, dtype=f64)
    for t, (kind, tgt) in enumerate(seq):
        if kind == "push":
            idx = tgt[0] * S + tgt[1]
        elif kind == "replace":
            idx = K + tgt[0] * S + tgt[1]
        else:
            idx = 2 * K + tgt
        logits[0, t, :, :, idx] = big
    return logits.reshape(1, n, -1)


def test_hand_built_push_replace_push_pop():
    Q, S = 2, 3
    seq = [("push", (1, 1)), ("replace", (0, 2)), ("push", (1, 1)), ("pop", 0), ("pop", 1), ("replace", (0, 1))]
    core = RNSCore(Q, S)
    out, _ = run_steps(core, one_hot_actions(Q, S, seq))
    expect = [(0, 0), (1, 1), (0, 2), (1, 1), (0, 2), (1, 0), (0, 1)]  # (state, top)
    for t, (q, x) in enumerate(expect):
        target = torch.zeros(Q * S, dtype=f64)
        target[q * S + x] = 1
        torch.testing.assert_close(out[0, t], target, rtol=0, atol=1e-12)


def test_hand_built_vrns_replace_keeps_pop_restores():
    Q, S, m = 2, 3, 4
    seq = [("push", (1, 1)), ("replace", (0, 2)), ("push", (1, 1)), ("pop", 0), ("pop", 1)]
    core = RNSCore(Q, S, m)
    g = torch.Generator().manual_seed(11)
    pushed = torch.rand(1, len(seq), m, generator=g, dtype=f64)
    bottom = torch.rand(1, m, generator=g, dtype=f64)
    out, _ = run_steps(core, one_hot_actions(Q, S, seq), pushed, bottom)
    out = out.reshape(1, len(seq) + 1, Q * S, m)
    expect = [((0, 0), bottom[0]), ((1, 1), pushed[0, 0]), ((0, 2), pushed[0, 0]),  # replace keeps v_1
              ((1, 1), pushed[0, 2]), ((0, 2), pushed[0, 0]),                       # pop restores v_1
              ((1, 0), bottom[0])]                                                 # ... and the bottom
    for t, ((q, x), v) in enumerate(expect):
        target = torch.zeros(Q * S, m, dtype=f64)
        target[q * S + x] = v
        torch.testing.assert_close(out[0, t], target, rtol=0, atol=1e-12)


def test_nondeterministic_split_is_exact():
    """Push and replace with equal weight from the start: two runs, readings 1/2 each."""
    Q, S = 1, 2
    logits = torch.full((1, 1, Q, S, 2 * Q * S + Q), -80.0, dtype=f64)
    logits[0, 0, 0, 0, 1] = 0.0          # push (0, 1)
    logits[0, 0, 0, 0, 2] = 0.0          # replace by (0, 0)
    out, _ = run_steps(RNSCore(Q, S), logits.reshape(1, 1, -1))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.5, 0.5], dtype=f64))


# ----------------------------------------------------------------------------- API behaviour
def test_state_is_single_use_and_detach_forks():
    core = RNSCore(2, 2)
    lg = torch.randn(1, core.num_actions)
    s0 = core.initial_state(1, None, torch.float32)
    _, s1 = core.step(s0, lg)
    with pytest.raises(ValueError):
        core.step(s0, lg)
    r_a, _ = core.step(core.detach_state(s1), lg)
    r_b, _ = core.step(s1, lg)
    torch.testing.assert_close(r_a, r_b)


def test_float32_default_no_grad_and_deterministic_mode():
    core = RNSCore(3, 3, 2, window=5)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        logits = torch.randn(4, 12, core.num_actions, requires_grad=True)
        pushed = torch.rand(4, 12, 2, requires_grad=True)
        bottom = torch.rand(4, 2, requires_grad=True)
        out, state = run_steps(core, logits, pushed, bottom, dtype=torch.float32)
        assert out.dtype == torch.float32 and out.shape == (4, 13, core.reading_size)
        out.square().sum().backward()
        assert all(torch.isfinite(x.grad).all() for x in (logits, pushed, bottom))
        with torch.no_grad():
            out2, _ = run_steps(core, logits, pushed, bottom, dtype=torch.float32)
        torch.testing.assert_close(out2, out.detach())
    finally:
        torch.use_deterministic_algorithms(prev)


def test_backward_twice_with_retain_graph():
    core = RNSCore(2, 2)
    logits = torch.randn(2, 8, core.num_actions, dtype=f64, requires_grad=True)
    out, _ = run_steps(core, logits)
    (g1,) = torch.autograd.grad(out.square().sum(), logits, retain_graph=True)
    (g2,) = torch.autograd.grad(out.square().sum(), logits, retain_graph=True)
    (g3,) = torch.autograd.grad(out[:, :5].sum() * 0 + (out[:, 4] * out[:, 3]).sum(), logits)
    torch.testing.assert_close(g1, g2)
    ref_x = logits.detach().clone().requires_grad_(True)
    ref_out, _ = run_steps(core, ref_x)
    (g4,) = torch.autograd.grad((ref_out[:, 4] * ref_out[:, 3]).sum(), ref_x)
    torch.testing.assert_close(g3, g4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    core = RNSCore(2, 3, 2, window=4)
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 9, core.num_actions, generator=g, dtype=f64)
    pushed = torch.rand(3, 9, 2, generator=g, dtype=f64)
    bottom = torch.rand(3, 2, generator=g, dtype=f64)
    outs, gs = [], []
    for dev in ("cpu", "cuda"):
        x = logits.to(dev).requires_grad_(True)
        out, _ = run_steps(core, x, pushed.to(dev), bottom.to(dev))
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        outs.append(out.cpu())
        gs.append(gx.cpu())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(gs[0], gs[1])


@pytest.mark.parametrize("Q,S,m,n,window", [(2, 2, None, 7, None), (1, 2, 2, 8, 6)])
def test_blocked_triangle_path_matches_loop_reference(monkeypatch, Q, S, m, n, window):
    """Long windows use a row-blocked GEMM that skips the zero half of the triangle; force it
    (on the torch reference step, which has that path)."""
    monkeypatch.setattr(rns_tape, "_BLOCK_MIN", 2)
    monkeypatch.setattr(rns_tape, "compiled_default", lambda: False)
    xs = random_actions(2, n, Q, S, m, seed=13)
    lp, lr, lo = xs[:3]
    pushed, bottom = (xs[3:] + [None, None])[:2]
    ref = loop_reference(lp.exp(), lr.exp(), lo.exp(), pushed, bottom, window)
    fast = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom, window=window)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-9)
    w = torch.randn_like(ref)
    for gf, gr in zip(grads(fast, w, xs), grads(ref, w, xs), strict=True):
        torch.testing.assert_close(gf, gr, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("m", [None, 2])
def test_old_chunks_are_freed_after_detach(m):
    """Regression: VRNS kept its readings on the tape, a tensor <-> grad_fn cycle
    that kept every past chunk alive (memory grew ~130 MiB per PTB chunk)."""
    import gc
    import weakref

    core = RNSCore(2, 2, m=m, window=3)
    N = 3
    bottom = torch.full((N, m), 0.5) if m else None
    state = core.initial_state(N, torch.device("cpu"), torch.float32, bottom=bottom)
    first_tape = weakref.ref(state.tape)
    for _chunk in range(2):
        logits = torch.randn(4, N, core.num_actions, requires_grad=True)
        pushed = torch.rand(4, N, m, requires_grad=True) if m else None
        readings = []
        for t in range(4):
            r, state = core.step(state, logits[t], None if pushed is None else pushed[t])
            readings.append(r)
        torch.stack(readings).sum().backward()
        state = core.detach_state(state)
        del readings, r, logits, pushed
    gc.collect()
    assert first_tape() is None


# ----------------------------------------------------------------------------- VRNS bottom layouts
PUBLISHED_CASES = [  # (Q, S, m, n, window)
    (2, 2, 2, 5, None),
    (1, 3, 2, 6, None),
    (2, 3, 3, 4, None),
    (2, 2, 2, 6, 3),
    (1, 2, 2, 6, 1),
    (1, 3, 2, 7, 8),
]


@pytest.mark.parametrize("Q,S,m,n,window", PUBLISHED_CASES)
def test_published_bottom_layout_matches_loop_reference(Q, S, m, n, window):
    xs = random_actions(2, n, Q, S, m, seed=11)
    lp, lr, lo, pushed, bottom = xs
    ref = loop_reference(lp.exp(), lr.exp(), lo.exp(), pushed, bottom, window, layout="published")
    fast = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom, window=window, layout="published")
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-9)
    w = torch.randn_like(ref)
    for gf, gr in zip(grads(fast, w, xs), grads(ref, w, xs), strict=True):
        torch.testing.assert_close(gf, gr, rtol=1e-3, atol=1e-9)
    # the two layouts are different models: readings differ while the bottom is in the window
    eq = loop_reference(lp.exp(), lr.exp(), lo.exp(), pushed, bottom, window)
    last = n if window is None else min(n, window - 1)
    assert (ref[:, : last + 1] - eq[:, : last + 1]).abs().amax() > 1e-3
    if window is not None and window <= n:  # the bottom has left the window: same reading again
        torch.testing.assert_close(ref[:, window:] - eq[:, window:], torch.zeros_like(ref[:, window:]), atol=0, rtol=0)


def test_published_layout_step_interface_and_detach():
    Q, S, m, n = 2, 2, 2, 6
    lp, lr, lo, pushed, bottom = random_actions(2, n, Q, S, m, seed=12, grad=False)
    logits = logits_of(lp, lr, lo)
    core = RNSCore(Q, S, m, bottom="published")
    whole, _ = run_steps(core, logits, pushed, bottom)
    ref = rns_readings(lp, lr, lo, log=True, pushed=pushed, bottom=bottom, layout="published")
    torch.testing.assert_close(whole, ref, rtol=1e-10, atol=1e-12)
    head, st = run_steps(core, logits[:, :3], pushed[:, :3], bottom)
    tail, _ = run_steps(core, logits[:, 3:], pushed[:, 3:], state=core.detach_state(st))
    torch.testing.assert_close(torch.cat([head, tail], 1), whole, rtol=1e-10, atol=1e-12)


def test_bottom_layout_is_checked():
    with pytest.raises(ValueError, match="equations, published"):
        RNSCore(2, 2, 2, bottom="everywhere")
    with pytest.raises(ValueError, match="only for the VRNS"):
        RNSCore(2, 2, None, bottom="published")


def test_published_vrns_model_name_builds_the_published_layout():
    from marnn import models

    x = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(0))
    eq = models.build("vrns-2-2-3", vocab_size=20, replicas=1, seeds=[0], window=4)
    pub = models.build("vrns-2-2-3-published", vocab_size=20, replicas=1, seeds=[0], window=4)
    for (n, p), (n2, p2) in zip(eq.named_parameters(), pub.named_parameters(), strict=True):
        assert n == n2 and torch.equal(p, p2)  # same parameters, different bottom layout
    a, b = eq(x).logits, pub(x).logits
    assert (a - b).abs().amax() > 1e-6
    b.sum().backward()
    assert pub.memory.bottom.grad.abs().sum() > 0


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("Q,S,m,D,bottom", [(2, 2, None, 4, "equations"), (2, 3, 2, 12, "published"),
                                            (2, 2, 2, None, "published"), (1, 2, None, None, "equations")])
def test_snapshot_of_a_detached_state_continues_bitwise(compiled, Q, S, m, D, bottom):
    """A detached state saved with torch.save (weights_only) and restored continues with the same
    readings and gradients, bit for bit, as the state itself (what a PTB group saved inside an
    epoch relies on); the published bottom's term is saved while it is still non-zero."""
    import io

    if compiled and not rns_tape.rns_numba.AVAILABLE:
        pytest.skip("Numba is not installed")
    core = RNSCore(Q, S, m, window=D, bottom=bottom, compiled=compiled)
    g = torch.Generator().manual_seed(3)
    B, n1, n2 = 3, 7, 6
    dtype = torch.float32
    logits = torch.randn(B, n1 + n2, core.num_actions, generator=g) * 2
    pushed = torch.rand(B, n1 + n2, m, generator=g) if m else None
    bottom_v = torch.rand(B, m, generator=g) if m else None
    _, state = run_steps(core, logits[:, :n1].clone().requires_grad_(True),
                         None if m is None else pushed[:, :n1], bottom_v, dtype=dtype)
    state = core.detach_state(state)
    assert (state.tape.kern is not None) == compiled
    assert (state.published is not None) == (bottom == "published")
    buf = io.BytesIO()
    torch.save(core.snapshot_state(state), buf)
    buf.seek(0)
    back = core.restore_state(torch.load(buf, weights_only=True))

    def go(st):
        x = logits[:, n1:].clone().requires_grad_(True)
        out, _ = run_steps(core, x, None if m is None else pushed[:, n1:], state=st)
        (gx,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)
        return out.detach(), gx

    (a, ga), (b, gb) = go(back), go(state)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_snapshot_refuses_a_state_that_has_advanced():
    core = RNSCore(2, 2, window=4)
    state = core.detach_state(run_steps(core, torch.randn(2, 3, core.num_actions))[1])
    core.snapshot_state(state)  # fine: detached, not advanced
    core.step(state, torch.randn(2, core.num_actions))
    with pytest.raises(ValueError, match="not advanced"):
        core.snapshot_state(state)
