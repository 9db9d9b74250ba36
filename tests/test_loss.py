"""The blocked per-token cross-entropy (marnn/kernels/loss.py) against ``F.cross_entropy``:
values and gradients bit for bit, at replica-batched (R, B, T, V) shapes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from marnn.kernels import loss
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
