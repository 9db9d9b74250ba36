"""Per-token cross-entropy over a large vocabulary without full-size temporaries.

:func:`token_nll` returns the same numbers as
``F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")``
and the same gradient, bit for bit on the CPU (``tests/test_loss.py``), but for
a large vocabulary (the PTB classifier: 1,120 x 10,001 logits, 45 MB per
replica and chunk) it works on blocks of rows that stay in the cache:

* forward: ``log_softmax`` of each block of rows (each row is computed
  independently, so the values equal the whole-tensor call), of which only the
  target entry is kept: the (N, V) log-probabilities are never stored;
* backward: for each block, ``log_softmax`` again, the incoming gradient
  scattered into a zeroed block (what ``nll_loss``'s backward writes into a
  zeroed (N, V) tensor) and ``log_softmax``'s own backward of that block,
  written straight into the gradient of the logits.

The reference path writes the log-probabilities (45 MB), zero-fills a second
(N, V) tensor and reads both again; here the logits are read once in each
direction and the gradient written once. Small vocabularies (the formal
languages), non-contiguous logits, devices other than the CPU and the 16-bit
formats take the reference path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BLOCK_BYTES = 1 << 19  # rows per block: about this many bytes of logits (stays in L2)
MIN_VOCAB = 512  # smaller vocabularies: the reference path (its temporaries are small)


def _rows(V: int, itemsize: int) -> int:
    return max(1, BLOCK_BYTES // (V * itemsize))


class _BlockedNLL(torch.autograd.Function):
    """``x`` (N, V) contiguous logits, ``t`` (N,) targets -> (N,) negative log-likelihoods."""

    @staticmethod
    def forward(ctx, x, t):
        N, V = x.shape
        nb = _rows(V, x.element_size())
        out = x.new_empty(N)
        for a in range(0, N, nb):
            b = min(N, a + nb)
            lp = torch.log_softmax(x[a:b], 1)
            torch.neg(lp.gather(1, t[a:b, None]).squeeze(1), out=out[a:b])
        ctx.save_for_backward(x, t)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        N, V = x.shape
        nb = _rows(V, x.element_size())
        g = g.contiguous()
        fill = torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = False  # every entry is written below
        try:
            dx = torch.empty_like(x)
            go = x.new_empty(min(nb, N), V)
        finally:
            torch.utils.deterministic.fill_uninitialized_memory = fill
        for a in range(0, N, nb):
            b = min(N, a + nb)
            lp = torch.log_softmax(x[a:b], 1)
            gb = go[:b - a]
            gb.zero_()
            gb.scatter_(1, t[a:b, None], g[a:b, None].neg())  # nll_loss backward: -g at the target
            torch._log_softmax_backward_data(gb, lp, 1, x.dtype, out=dx[a:b])
        return dx, None


def blocked(logits: torch.Tensor) -> bool:
    """Whether :func:`token_nll` takes the blocked path for these logits."""
    return (logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64)
            and logits.shape[-1] >= MIN_VOCAB and logits.is_contiguous())


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of every replica: ``logits`` ``(R, B, T, V)``, ``targets`` ``(B, T)``
    shared or ``(R, B, T)``; returns ``(R, B, T)`` (float32 for 16-bit logits, as
    ``token_stats``)."""
    R, B, T, V = logits.shape
    tgt = (targets.expand(R, B, T) if targets.dim() == 2 else targets).reshape(-1)
    if blocked(logits):
        return _BlockedNLL.apply(logits.view(R * B * T, V), tgt.contiguous()).view(R, B, T)
    return F.cross_entropy(logits.reshape(R * B * T, V).float(), tgt, reduction="none").view(R, B, T)
