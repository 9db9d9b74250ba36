"""The superposition stack: functional core vs a literal list-based reference,
and the fused kernel (hand-written backward) vs the autograd per-step loop."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from marnn import models, tasks
from marnn.kernels import arrays, fused_lstm
from marnn.kernels import backend as kernel_backend
from marnn.kernels import fused_lstm_numba as compiled
from marnn.models.superposition import ACTIONS, SuperpositionCore, stack_heights

TASK = tasks.get("marked-copy")


# ---- slow reference: Python lists of vectors, the update rule written out ----
def reference_readings(h_seq, W_a, b_a, W_v, b_v, sizes, depth=None, push_hidden=False):
    """Readings r_1..r_{T-1} for one string; h_seq: (T-1, H) the states that act."""
    stacks = [[] for _ in sizes]  # stacks[j] = [top, ..., bottom], each a vector
    readings = []
    for h in h_seq:
        logits = W_a @ h + b_a
        v_all = h if push_hidden else torch.sigmoid(W_v @ h + b_v)
        start, out = 0, []
        for j, m in enumerate(sizes):
            a = torch.softmax(logits[3 * j:3 * j + 3], 0)
            push, noop, pop = (a[ACTIONS.index(x)] for x in ("push", "no-op", "pop"))
            v = v_all[start:start + m]
            old = stacks[j]
            zero = torch.zeros(m, dtype=h.dtype)
            cell = lambda i, old=old, zero=zero: old[i] if 0 <= i < len(old) else zero  # noqa: E731
            new = [push * v + noop * cell(0) + pop * cell(1)]
            for i in range(1, len(old) + 1):
                new.append(push * cell(i - 1) + noop * cell(i) + pop * cell(i + 1))
            if depth is not None:
                new = new[:depth]
            stacks[j] = new
            out.append(new[0])
            start += m
        readings.append(torch.cat(out))
    return torch.stack(readings)


def _params(H, sizes, push_hidden, gen):
    M = sum(sizes)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    return (mk(3 * len(sizes), H), mk(3 * len(sizes)),
            (None if push_hidden else mk(M, H)), (None if push_hidden else mk(M)))


@pytest.mark.parametrize("sizes,push_hidden,depth,prune", [
    ((4,), False, None, False), ((4,), False, None, True), ((3, 3, 3), False, None, True),
    ((2, 5), False, 3, False), ((6,), True, None, True), ((6,), True, 4, False),
])
def test_core_matches_list_reference(sizes, push_hidden, depth, prune):
    gen = torch.Generator().manual_seed(0)
    N, T = 3, 11
    H = sum(sizes) if push_hidden else 6
    W_a, b_a, W_v, b_v = _params(H, sizes, push_hidden, gen)
    h = torch.randn(N, T - 1, H, generator=gen, dtype=torch.float64, requires_grad=True)
    core = SuperpositionCore(sizes, "hidden" if push_hidden else "learned", depth)
    state = core.initial_state(N, dtype=torch.float64, length=T if prune else None)
    reads = []
    for t in range(T - 1):
        logits = h[:, t] @ W_a.T + b_a
        pushed = h[:, t] if push_hidden else torch.sigmoid(h[:, t] @ W_v.T + b_v)
        r, state = core.step(state, logits, pushed)
        reads.append(r)
    fast = torch.stack(reads, 1)
    slow = torch.stack([reference_readings(h[n], W_a, b_a, W_v, b_v, sizes, depth, push_hidden) for n in range(N)])
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    w = torch.randn(fast.shape, generator=gen, dtype=torch.float64)
    leaves = [p for p in (W_a, b_a, W_v, b_v, h) if p is not None]
    g_fast = torch.autograd.grad((fast * w).sum(), leaves)
    g_slow = torch.autograd.grad((slow * w).sum(), leaves)
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_stack_heights():
    n = 9
    assert stack_heights(n) == [0] + [min(t, n - t) for t in range(1, n)]
    assert stack_heights(6, prune=False) == [0, 1, 2, 3, 4, 5]
    assert stack_heights(6, fresh=False, start=2, depth=4) == [3, 4, 4, 4, 4, 4]
    assert max(stack_heights(80)) == 40


def _run(model, x, w, state=None):
    out = model(x, state=state)
    model.zero_grad()
    (out.logits * w).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


BACKENDS = ["compiled", "numpy", "torch"]  # the three ways the fused kernel can run on a CPU


def _use(monkeypatch, backend):
    """Force one backend of the fused kernel (``compiled`` is what ``auto`` picks here)."""
    monkeypatch.setattr(kernel_backend, "FUSED_BACKEND", "auto" if backend == "compiled" else backend)


# the array loops have two variants of the backward step (few broadcast ops / plain ops)
@pytest.mark.parametrize("backend,few", [("compiled", None), ("numpy", True), ("numpy", False), ("torch", True),
                                         ("torch", False)], ids=["compiled", "numpy-few-ops", "numpy-plain-ops",
                                                                 "torch-few-ops", "torch-plain-ops"])
@pytest.mark.parametrize("name,kw", [
    ("lstm", {}), ("jm-10", {}), ("jm-3.3.3", {}), ("jm-hidden", {}),
    ("jm-4", {"prune": False}), ("jm-4", {"depth": 3}), ("jm-hidden", {"depth": 2, "prune": False}),
])
def test_fused_matches_autograd_loop(monkeypatch, backend, name, kw, few):
    _use(monkeypatch, backend)
    if few is not None:
        monkeypatch.setattr(fused_lstm, "SMALL_ELEMENTS", 10 ** 9 if few else 0)  # both variants of the backward step
        monkeypatch.setattr(fused_lstm, "PREP_ELEMENTS", 10 ** 9 if few else 64)  # all steps at once / one step
    kw = dict(kw, hidden_size=7) if name != "jm-hidden" else dict(kw, hidden_size=6)
    fast = models.build(name, task=TASK, replicas=2, seeds=[1, 2], dtype=torch.float64, **kw)
    slow = models.build(name, task=TASK, replicas=2, seeds=[1, 2], dtype=torch.float64, fused=False, **kw)
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (2, 4, 13), generator=gen)
    w = torch.randn(2, 4, 14, 4, generator=gen, dtype=torch.float64)
    of, gf = _run(fast, x, w)
    os_, gs = _run(slow, x, w)
    torch.testing.assert_close(of.logits, os_.logits, rtol=1e-10, atol=1e-12)
    for n in gf:
        torch.testing.assert_close(gf[n], gs[n], rtol=1e-9, atol=1e-11, msg=n)
    # continuing from the carried state (detached), then backprop through both chunks
    x2 = torch.randint(0, 3, (2, 4, 6), generator=gen)
    w2 = torch.randn(2, 4, 7, 4, generator=gen, dtype=torch.float64)
    of2, gf2 = _run(fast, x2, w2, models.detach_state(of.state))
    os2, gs2 = _run(slow, x2, w2, models.detach_state(os_.state))
    torch.testing.assert_close(of2.logits, os2.logits, rtol=1e-10, atol=1e-12)
    for n in gf2:
        torch.testing.assert_close(gf2[n], gs2[n], rtol=1e-9, atol=1e-11, msg=n)
    with torch.no_grad():  # the lean no-grad path (reused buffers)
        torch.testing.assert_close(fast(x).logits, os_.logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_gradient_flows_into_carried_state(monkeypatch, backend):
    """Without detaching, chunk 2's loss reaches chunk 1's parameters through h, c and the stack."""
    _use(monkeypatch, backend)
    kw = dict(vocab_size=11, hidden_size=5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (3, 9), generator=gen)
    for name in ("jm-learned-4", "jm-hidden"):
        grads = []
        for fused in (True, False):
            m = models.build(name, fused=fused, **kw)
            o1 = m(x[:, :4])
            o2 = m(x[:, 4:], state=o1.state)
            (o1.logits.sum() + (o2.logits ** 2).sum()).backward()
            grads.append({n: p.grad for n, p in m.named_parameters()})
        for n in grads[0]:
            torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-11, msg=n)


def test_return_stack_and_pruning_exact():
    m = models.build("jm-3.3.3", task=TASK, dtype=torch.float64)
    x = torch.randint(0, 3, (4, 12), generator=torch.Generator().manual_seed(0))
    out = m(x, return_stack=True)
    assert out.stack["actions"].shape == (1, 4, 12, 3, 3)
    assert out.stack["readings"].shape == (1, 4, 12, 9)
    assert torch.isnan(out.stack["actions"][:, :, 0]).all()  # no action at the first step
    torch.testing.assert_close(out.stack["actions"][:, :, 1:].sum(-1), torch.ones(1, 4, 11, 3, dtype=torch.float64))
    assert (out.stack["readings"][:, :, 0] == 0).all()
    unpruned = models.build("jm-3.3.3", task=TASK, dtype=torch.float64, prune=False)
    torch.testing.assert_close(out.logits, unpruned(x).logits, rtol=1e-12, atol=1e-14)


def test_deterministic_algorithms():
    """Under torch's deterministic mode the models run (no op without a deterministic kernel), two
    passes give bitwise-equal logits and gradients, and returning the stack changes no value."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for name in ("jm-10", "lstm"):
            m = models.build(name, task=TASK)
            x = torch.randint(0, 3, (5, 20), generator=torch.Generator().manual_seed(2))
            w = torch.randn(1, 5, 21, 4, generator=torch.Generator().manual_seed(3))
            runs = [_run(m, x, w), _run(m, x, w)]
            stacked = m(x, return_stack=True).logits
            (o1, g1), (o2, g2) = runs
            assert torch.equal(o1.logits, o2.logits)
            # returning the stack takes the autograd loop: the same numbers up to float32 rounding
            torch.testing.assert_close(stacked, o1.logits, rtol=1e-5, atol=1e-6)
            assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    for name in ("lstm", "jm-10", "jm-hidden", "rns-3-3"):
        cpu = models.build(name, task=TASK, replicas=2, dtype=torch.float64)
        gpu = models.build(name, task=TASK, replicas=2, dtype=torch.float64, device="cuda")
        x = torch.randint(0, 3, (4, 15))
        torch.testing.assert_close(gpu(x.cuda()).logits.cpu(), cpu(x).logits, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("name", ["lstm", "jm-10", "jm-3.3.3", "jm-hidden"])
def test_replica_threads_give_identical_numbers(monkeypatch, name, backend):
    """Splitting the replicas over threads changes no value (replicas never interact);
    gradients agree to rounding (the weight-gradient products are batched matrix
    products, whose kernel torch picks by batch size)."""
    _use(monkeypatch, backend)
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (5, 4, 11), generator=gen)
    w = torch.randn(5, 4, 12, 4, generator=gen)
    runs = []
    for threads in (1, 3):
        monkeypatch.setattr(fused_lstm, "FUSED_THREADS", threads)
        monkeypatch.setattr(fused_lstm, "MIN_ROWS_PER_THREAD", 1)
        assert len(fused_lstm._blocks(5, 4, arrays.Numpy(np.float32))) == threads
        m = models.build(name, task=TASK, replicas=5, seeds=[3, 1, 4, 1, 5])
        out, grads = _run(m, x, w)
        with torch.no_grad():
            lean = m(x).logits
        runs.append((out.logits, grads, lean))
    (l1, g1, n1), (l3, g3, n3) = runs
    assert torch.equal(l1, l3) and torch.equal(n1, n3)
    for n in g1:
        torch.testing.assert_close(g1[n], g3[n], rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_path_runs_in_16_bit_formats(dtype):
    """NumPy has no bfloat16: 16-bit formats take the torch backend of the fused kernel."""
    x = torch.randint(0, 3, (2, 9), generator=torch.Generator().manual_seed(0))
    for name in ("lstm", "jm-10"):
        ref = models.build(name, task=TASK, dtype=torch.float64)
        low = models.build(name, task=TASK).to(dtype)
        out = low(x)
        out.logits.float().sum().backward()
        assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
        torch.testing.assert_close(out.logits.double(), ref(x).logits, rtol=0.05, atol=0.05)


# ---- the compiled (Numba) loop -------------------------------------------------


def test_compiled_loop_is_available_and_chosen(monkeypatch):
    """numba is a dependency: on the CPU, float32/float64 formal-size models take the
    compiled loop; large controllers and an explicit "numpy" keep the array loop."""
    assert compiled.AVAILABLE
    small = torch.zeros(1, 3, 2, 4 * 20)
    assert fused_lstm._backend(small).compiled and fused_lstm._backend(small.double()).compiled
    assert not fused_lstm._backend(torch.zeros(1, 3, 2, 4 * (compiled.MAX_HIDDEN + 1))).compiled
    assert not fused_lstm._backend(small.to(torch.bfloat16)).compiled
    monkeypatch.setattr(kernel_backend, "FUSED_BACKEND", "numpy")
    assert not fused_lstm._backend(small).compiled
    monkeypatch.setattr(kernel_backend, "FUSED_BACKEND", "fortran")
    with pytest.raises(ValueError, match="auto, numpy, torch"):
        fused_lstm._backend(small)


def test_exp32_is_accurate_to_one_ulp():
    x = np.linspace(-80, 80, 400_001, dtype=np.float32)
    got = compiled.exp32_array(x).astype(np.float64)
    true = np.exp(x.astype(np.float64))
    ulp = np.spacing(true.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - true) / ulp) <= 1.0
    clamped = compiled.exp32_array(np.array([-1e4, -80.0, 80.0, 1e4], dtype=np.float32))
    assert clamped[0] == clamped[1] > 0 and clamped[2] == clamped[3] < np.inf  # saturated, never 0 or inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nr,K,N", [(10, 20, 96), (7, 93, 24), (1, 3, 5), (3, 0, 16), (2, 80, 77), (5, 10, 40)])
def test_compiled_tile_products_equal_the_plain_loop(dtype, nr, K, N):
    """The register-tiled products of the compiled loop (every tile shape: 2 or 1 rows, 32/24/16/8
    columns, single columns, K = 0) give the plain loop's numbers exactly (same fused
    multiply-adds in the same order), at offsets into larger arrays."""
    rng = np.random.default_rng(nr * 1000 + K * 10 + N)
    X = rng.standard_normal((2, nr, K + 3)).astype(dtype)
    W = rng.standard_normal((3, K, N + 5)).astype(dtype)
    Y = rng.standard_normal((2, nr, N + 2)).astype(dtype)
    want = Y.astype(np.float64)
    for j in range(K):  # the plain loop: one fused multiply-add per term (rounded once to float32)
        want[1, :, :N] = want[1, :, :N] + X[1, :, j, None].astype(np.float64) * W[2, j, :N].astype(np.float64)
        want = want.astype(dtype).astype(np.float64)
    compiled._gemm_acc(X, nr * (K + 3), K + 3, W, 2 * K * (N + 5), N + 5, Y, nr * (N + 2), N + 2, nr, K, N)
    if dtype == np.float32:  # float64 holds the products exactly: the float32 fma's numbers
        assert np.array_equal(Y, want.astype(dtype))
    else:
        np.testing.assert_allclose(Y, want, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("w,nr", [(32, 5), (104, 3), (200, 1), (8, 4), (24, 0)])
def test_compiled_stack_rows_equal_the_plain_loop(dtype, w, nr):
    """The vectorised stack rows (issue 19): ``_mix3_rows`` gives the numbers of the scalar
    expression ``a0 * x0 + a1 * x1 + a2 * x2`` compiled as the kernels compile it, and
    ``_dot3_rows`` those of ``acc += g * x`` over the rows in order (one fused multiply-add
    per term), lane by lane, at offsets into larger arrays (16 and 24-lane blocks, nr = 0)."""
    import numba

    @numba.njit(error_model="numpy", fastmath={"contract"})
    def plain_mix3(Y, yo, X, x0, x1, x2, C, w, nr):
        for i in range(nr):
            for c in range(w):
                q = i * w + c
                Y[yo + q] = C[c] * X[x0 + q] + C[w + c] * X[x1 + q] + C[2 * w + c] * X[x2 + q]

    rng = np.random.default_rng(w * 10 + nr)
    X = rng.standard_normal((nr + 4) * w + 3).astype(dtype)
    C = rng.standard_normal(3 * w).astype(dtype)
    Y = rng.standard_normal((nr + 2) * w).astype(dtype)
    want = Y.copy()
    plain_mix3(want, w, X, 3, 3 + 2 * w, 3 + w, C, w, nr)
    compiled._mix3_rows(Y, w, X, 3, 3 + 2 * w, 3 + w, C, w, nr)
    assert np.array_equal(Y, want)

    G = rng.standard_normal(nr * w + 5).astype(dtype)
    acc = rng.standard_normal(3 * w).astype(dtype)
    want = acc.astype(np.float64)
    for i in range(nr):  # one fused multiply-add per term: exact product, one rounding
        for j in range(3):
            x = X[3 + (i + j) * w:3 + (i + j + 1) * w]
            want[j * w:(j + 1) * w] += G[5 + i * w:5 + (i + 1) * w].astype(np.float64) * x
        want = want.astype(dtype).astype(np.float64)
    compiled._dot3_rows(acc, w, G, 5, X, 3, nr)
    if dtype == np.float32:
        assert np.array_equal(acc, want.astype(dtype))
    else:
        np.testing.assert_allclose(acc, want, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "jm-10", "jm-3.3.3", "jm-hidden"])
def test_compiled_float32_agrees_with_autograd_loop(monkeypatch, name):
    """float32 (exp32, no zero-division checks) against the autograd loop in float32."""
    _use(monkeypatch, "compiled")
    fast = models.build(name, task=TASK, replicas=2, seeds=[4, 5])
    slow = models.build(name, task=TASK, replicas=2, seeds=[4, 5], fused=False)
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(0, 3, (2, 3, 40), generator=gen)
    w = torch.randn(2, 3, 41, 4, generator=gen)
    of, gf = _run(fast, x, w)
    os_, gs = _run(slow, x, w)
    torch.testing.assert_close(of.logits, os_.logits, rtol=1e-5, atol=1e-5)
    for n in gf:
        torch.testing.assert_close(gf[n], gs[n], rtol=1e-4, atol=1e-4, msg=n)


def test_compiled_saturated_gates_stay_finite(monkeypatch):
    """Huge weights saturate every gate: values and gradients stay finite."""
    _use(monkeypatch, "compiled")
    m = models.build("jm-10", task=TASK)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1e3)
    x = torch.randint(0, 3, (4, 30), generator=torch.Generator().manual_seed(0))
    out = m(x)
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_backend_default_comes_from_the_environment():
    """$MARNN_FUSED_BACKEND=numpy repeats runs made with the array loop (before the compiled one)."""
    code = ("import torch; from marnn.kernels import backend, fused_lstm; "
            "print(backend.FUSED_BACKEND, fused_lstm._backend(torch.zeros(1, 2, 3, 8)).compiled)")
    env = dict(os.environ, MARNN_FUSED_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["numpy", "False"]
