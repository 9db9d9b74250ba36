"""The blocked per-token cross-entropy (marnn/kernels/loss.py) against ``F.cross_entropy``:
values and gradients bit for bit, at replica-batched (R, B, T, V) shapes."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import slices_keep_their_bits

from marnn.kernels import arrays, loss
from marnn.train.evaluate import token_nll, token_stats


def _reference(logits, targets):
    R, B, T, V = logits.shape
    tgt = targets.expand(R, B, T) if targets.dim() == 2 else targets
    return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="none").view(R, B, T)


def _case(dtype, R=3, B=4, T=7, V=1001, shared=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(R, B, T, V, generator=g) * 3).to(dtype)
    targets = torch.randint(0, V, (B, T) if shared else (R, B, T), generator=g)
    weights = torch.rand(R, B, T, generator=g).to(dtype)  # a loss that weighs every token differently
    return logits, targets, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("block_bytes", [None, 3 * 1001 * 8 + 5])  # default; blocks that do not divide N
def test_blocked_nll_equals_cross_entropy_bitwise(monkeypatch, dtype, shared, block_bytes):
    if block_bytes is not None:
        monkeypatch.setattr(loss, "BLOCK_BYTES", block_bytes)
    logits, targets, weights = _case(dtype, shared=shared)
    assert loss.blocked(logits)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        nll_a = token_nll(a, targets)
        nll_b = _reference(b, targets)
        assert torch.equal(nll_a, nll_b)
        (nll_a * weights).sum().backward()
        (nll_b * weights).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a.grad, b.grad)
    assert torch.utils.deterministic.fill_uninitialized_memory  # restored after the backward pass


def _fills(make) -> int:
    from torch.profiler import profile
    with profile() as p:
        make()
    return sum(e.key == "aten::fill_" for e in p.events())


def test_kernel_buffers_skip_the_nan_fill_of_deterministic_mode(monkeypatch):
    torch.use_deterministic_algorithms(True)
    try:
        assert _fills(lambda: torch.empty(1000)) == 1  # what deterministic mode does to every new tensor
        monkeypatch.setattr(arrays, "CHECK_WRITES", False)
        x = arrays.empty(10, 100, dtype=torch.float64)
        assert x.shape == (10, 100) and x.dtype == torch.float64
        assert _fills(lambda: arrays.empty(1000, dtype=torch.float32)) == 0
        assert _fills(lambda: arrays.empty_like(x)) == 0 and arrays.empty_like(x, (3, 4)).shape == (3, 4)
        assert torch.utils.deterministic.fill_uninitialized_memory  # restored
        monkeypatch.setattr(arrays, "CHECK_WRITES", True)  # as in every test: NaN whatever the mode
        assert torch.isnan(arrays.empty_like(x, 5, 6)).all()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.isnan(arrays.empty(4, dtype=torch.float32)).all()


def test_blocked_nll_float64_gradcheck(monkeypatch):
    monkeypatch.setattr(loss, "MIN_VOCAB", 4)
    monkeypatch.setattr(loss, "BLOCK_BYTES", 2 * 9 * 8)  # two rows per block
    logits, targets, _ = _case(torch.float64, R=2, B=2, T=3, V=9)
    assert loss.blocked(logits)
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: token_nll(x, targets), (x,), eps=1e-6, atol=1e-7)


def test_small_vocabulary_and_non_contiguous_take_the_reference_path():
    logits, targets, _ = _case(torch.float32, V=7)
    assert not loss.blocked(logits)
    assert torch.equal(token_nll(logits, targets), _reference(logits, targets))
    wide, wt, _ = _case(torch.float32, V=1001)
    t = wide.transpose(1, 2)  # (R, T, B, V) view: not contiguous
    assert not loss.blocked(t)
    assert torch.equal(token_nll(t, wt.t()), _reference(t, wt.t()))


def test_token_stats_keeps_its_values():
    logits, targets, _ = _case(torch.float32)
    nll, correct = token_stats(logits, targets)
    assert torch.equal(nll, _reference(logits, targets))
    assert torch.equal(correct, logits.argmax(-1) == targets)


# ---- the classifier and the loss fused (classifier_nll), against logits then token_nll ----------


@pytest.fixture
def one_thread():
    """The bitwise claims hold at 1 thread (the trainers' setting); more threads split the GEMMs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(n)


def _classifier(dtype, R=3, H=8, V=600, bias=True, seed=0):
    from marnn.models.lstm import ReplicaLinear
    lin = ReplicaLinear(R, H, V, init=("uniform", 0.1), bias=bias).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64).mul(0.4).sub(0.2))
    return lin


def _run(lin, h, targets, fused, upstream=None):
    """Per-token NLL and the gradients of h and of every parameter, for the PTB trainer's
    loss (``guarded_step``: the per-replica mean, through ``torch.where``, summed) or for
    ``sum(upstream * nll)``."""
    lin.zero_grad()
    x = h.clone().requires_grad_()
    nll = lin.nll(x, targets) if fused else token_nll(lin(x), targets)
    if upstream is None:
        loss = nll.mean((1, 2))
        torch.where(torch.ones_like(loss, dtype=torch.bool), loss, torch.zeros(())).sum().backward()
    else:
        (nll * upstream).sum().backward()
    return nll.detach(), {"h": x.grad, **{n: p.grad.clone() for n, p in lin.named_parameters()}}


def _compare(a, b, dtype, bitwise):
    """The loss, then every gradient: bit for bit (``bitwise``: callers pass it where
    :func:`conftest.slices_keep_their_bits` holds) or to float rounding."""
    if bitwise:
        assert torch.equal(a[0], b[0])  # the loss: bit for bit
    else:
        torch.testing.assert_close(a[0], b[0], rtol=1e-14 if dtype == torch.float64 else 1e-6, atol=0)
    assert a[1].keys() == b[1].keys()
    for n in a[1]:
        if bitwise:
            assert torch.equal(a[1][n], b[1][n]), n
        elif dtype == torch.float64:
            torch.testing.assert_close(a[1][n], b[1][n], rtol=0, atol=1e-10, msg=n)
        else:
            torch.testing.assert_close(a[1][n], b[1][n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_classifier_nll_equals_logits_then_token_nll(monkeypatch, one_thread, dtype, bias, shared):
    """Small shapes, blocks that do not divide the rows: the fused path gives the loss
    and every gradient of the unfused one (at 1 thread bit for bit: the same kernels on
    the same rows, replica by replica)."""
    monkeypatch.setattr(loss, "BLOCK_BYTES", 3 * 600 * 8 + 5)
    lin = _classifier(dtype, bias=bias)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 2, 5, 8, generator=g, dtype=dtype)
    t = torch.randint(0, 600, (2, 5) if shared else (3, 2, 5), generator=g)
    assert loss.fusable(h, lin.weight)
    _compare(_run(lin, h, t, True), _run(lin, h, t, False), dtype,
             bitwise=slices_keep_their_bits(dtype, 3, 10, 8, 600, bias))


def test_classifier_nll_at_ptb_size(one_thread):
    """R = 3 replicas of the PTB classifier (H = 256, V = 10,001), float32."""
    lin = _classifier(torch.float32, R=3, H=256, V=10001)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 4, 35, 256, generator=g)
    t = torch.randint(0, 10001, (4, 35), generator=g)
    new, ref = _run(lin, h, t, True), _run(lin, h, t, False)
    _compare(new, ref, torch.float32, bitwise=False)
    if slices_keep_their_bits(torch.float32, 3, 140, 256, 10001):
        _compare(new, ref, torch.float32, bitwise=True)  # 1 thread: bit for bit as well


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_classifier_nll_any_upstream_gradient(monkeypatch, one_thread, dtype):
    """A loss other than the per-replica mean (token weights; a replica whose gradient
    is zero, as guarded_step gives a non-finite one): the backward pass runs those
    replicas again with their own gradient and still equals the unfused path."""
    monkeypatch.setattr(loss, "BLOCK_BYTES", 2 * 600 * 8)
    lin = _classifier(dtype)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 2, 5, 8, generator=g, dtype=dtype)
    t = torch.randint(0, 600, (2, 5), generator=g)
    up = torch.rand(3, 2, 5, generator=g, dtype=dtype)
    up[1] = 1.0 / 10  # replica 1: exactly the mean's gradient (the fast path); 0 and 2 run again
    up[2] = 0.0
    _compare(_run(lin, h, t, True, up), _run(lin, h, t, False, up), dtype, bitwise=False)


def test_classifier_nll_gradcheck(monkeypatch):
    monkeypatch.setattr(loss, "MIN_VOCAB", 4)
    monkeypatch.setattr(loss, "BLOCK_BYTES", 2 * 9 * 8)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(2, 2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(2, 9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 9, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 9, (2, 3), generator=g)
    assert loss.fusable(h, W)
    assert torch.autograd.gradcheck(lambda h, W, b: loss.classifier_nll(h, W, b, t), (h, W, b), eps=1e-6, atol=1e-7)


def test_classifier_nll_replicas_are_independent(one_thread):
    """Changing replica 1's weights changes neither replica 0's loss nor its gradients."""
    lin = _classifier(torch.float64)
    g = torch.Generator().manual_seed(5)
    h = torch.randn(3, 2, 5, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 600, (2, 5), generator=g)
    a = _run(lin, h, t, True)
    with torch.no_grad():
        lin.weight[1].mul_(-3.0)
        lin.bias[1].add_(1.0)
    b = _run(lin, h, t, True)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][2], b[0][2])
    assert not torch.equal(a[0][1], b[0][1])
    for n in a[1]:
        assert torch.equal(a[1][n][0], b[1][n][0]) and torch.equal(a[1][n][2], b[1][n][2]), n
        assert not torch.equal(a[1][n][1], b[1][n][1]), n


def test_classifier_nll_without_gradients_and_small_vocabularies(one_thread):
    lin = _classifier(torch.float32)
    g = torch.Generator().manual_seed(6)
    h = torch.randn(3, 2, 5, 8, generator=g)
    t = torch.randint(0, 600, (2, 5), generator=g)
    with torch.no_grad():
        assert torch.equal(lin.nll(h, t), token_nll(lin(h), t))
    small = _classifier(torch.float32, V=7)
    assert not loss.fusable(h, small.weight)
    ts = t % 7
    assert torch.equal(small.nll(h, ts), token_nll(small(h), ts))


def test_classifier_nll_masked_non_finite_replica(one_thread):
    """A replica with NaN hidden states, masked as ``guarded_step`` masks a non-finite
    loss: the other replicas' loss and gradients are the unfused ones bit for bit, and
    the masked replica's gradients are non-finite where the unfused ones are."""
    lin = _classifier(torch.float64)
    g = torch.Generator().manual_seed(7)
    h = torch.randn(3, 2, 5, 8, generator=g, dtype=torch.float64)
    h[1, 0, 2] = float("nan")
    t = torch.randint(0, 600, (2, 5), generator=g)
    res = []
    for fused in (True, False):
        lin.zero_grad()
        x = h.clone().requires_grad_()
        nll = lin.nll(x, t) if fused else token_nll(lin(x), t)
        loss_r = nll.mean((1, 2))
        finite = torch.isfinite(loss_r)
        assert finite.tolist() == [True, False, True]
        torch.where(finite, loss_r, torch.zeros(())).sum().backward()
        res.append((nll.detach(), {"h": x.grad, **{n: p.grad.clone() for n, p in lin.named_parameters()}}))
    (na, ga), (nb, gb) = res
    same = torch.equal if slices_keep_their_bits(torch.float64, 3, 10, 8, 600) else functools.partial(
        torch.allclose, rtol=1e-14, atol=1e-16)  # this BLAS: to float64 rounding only
    assert same(na[[0, 2]], nb[[0, 2]]) and torch.equal(na[1].isnan(), nb[1].isnan())
    for n in ga:
        assert same(ga[n][[0, 2]], gb[n][[0, 2]]), n
        assert torch.equal(ga[n][1].isfinite(), gb[n][1].isfinite()), n
