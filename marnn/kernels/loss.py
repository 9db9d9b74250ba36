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

:func:`classifier_nll` goes one step further for the PTB classifier of a replica
group: the classifier's product, the loss and the whole backward pass
of both run one replica at a time through one (N, V) buffer (45 MB, in the L3
cache) instead of (R, N, V) logits and their gradient (360 MB each at R = 8).
The forward pass takes the gradients too, for the upstream gradient of the PTB
trainer's loss (the mean per replica); the backward pass hands them over, or
runs a replica again for any other upstream gradient. Per replica the same
kernels on the same rows as ``baddbmm`` + :class:`_BlockedNLL` +
``_ReplicaAffine``'s backward: at 1 thread the loss and every gradient equal
the unfused path bit for bit (``tests/test_loss.py``, ``tests/test_models.py``) where the
BLAS gives a replica's own product the bits of its slice of the batched one (MKL on Intel
CPUs); on an AMD EPYC, MKL's generic kernels differ in the last bit for some shapes, and the
two paths agree to float rounding (the tests check which holds: ``conftest.slices_keep_their_bits``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .arrays import empty_like

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
        dx, go = empty_like(x), empty_like(x, min(nb, N), V)  # every entry is written below
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


# ---- the classifier and the loss fused, one replica at a time ---------------------------


def _replica_pass(h, W, b, t, g, buf, nll, gW, gh, gb) -> None:
    """One replica: logits ``h W^T + b`` into ``buf`` (N, V), the NLL of each row into
    ``nll`` (N,); with ``g`` (N,), the gradient of ``sum(g * nll)`` of the logits in
    place in ``buf`` (each block of rows once its NLL is taken), then the weight, input
    and bias gradients into ``gW`` (V, H), ``gh`` (N, H), ``gb`` (V,) (``gb`` None: no bias).

    The same kernels, row for row, as ``baddbmm`` + :class:`_BlockedNLL` forward and
    backward + :class:`marnn.models.lstm._ReplicaAffine`'s backward for this replica."""
    N, V = buf.shape
    torch.mm(h, W.t(), out=buf)
    nb = _rows(V, buf.element_size())
    go = None if g is None else buf.new_empty(min(nb, N), V)
    for a in range(0, N, nb):
        e = min(N, a + nb)
        if b is not None:  # the bias added to each block in the cache: bitwise addmm's (product, then + b)
            buf[a:e] += b
        lp = torch.log_softmax(buf[a:e], 1)
        torch.neg(lp.gather(1, t[a:e, None]).squeeze(1), out=nll[a:e])
        if g is not None and go is not None:
            blk = go[:e - a]
            blk.zero_()
            blk.scatter_(1, t[a:e, None], g[a:e, None].neg())
            torch._log_softmax_backward_data(blk, lp, 1, buf.dtype, out=buf[a:e])
    if g is None:
        return
    torch.mm(buf.t(), h, out=gW)
    torch.bmm(buf[None], W[None], out=gh[None])  # bmm: bitwise _ReplicaAffine's (mm sums in another order)
    if gb is not None:
        torch.sum(buf, 0, out=gb)


class _ClassifierNLL(torch.autograd.Function):
    """Per-token NLL of ``softmax(h W^T + b)``, replica by replica: ``h`` (R, N, H), ``W``
    (R, V, H), ``b`` (R, V) or None, ``t`` (R, N) -> (R, N). The forward pass also takes
    the gradients for the upstream gradient ``expect`` per token (``1 / N``: the gradient
    of the PTB trainer's ``nll.mean(1).sum()``); the backward pass hands them over for
    every replica whose upstream gradient is exactly that, multiplies them by 0 for a
    replica whose upstream gradient is zero (``guarded_step`` masks a non-finite loss so),
    and runs the replica again with its own gradient otherwise (any loss is exact; only
    the expected one is fast)."""

    @staticmethod
    def forward(ctx, h, W, b, t, expect):
        R, N, H = h.shape
        V = W.shape[1]
        buf = empty_like(h, N, V)  # one replica's logits (45 MB for PTB), reused
        nll = h.new_empty(R, N)
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        gW = empty_like(W, R, V, H) if grads else None
        gh = empty_like(h, R, N, H) if grads else None
        gb = empty_like(b, R, V) if grads and b is not None else None
        g = torch.full((N,), expect, dtype=h.dtype) if grads else None
        for r in range(R):
            _replica_pass(h[r], W[r], None if b is None else b[r], t[r], g, buf, nll[r],
                          None if gW is None else gW[r], None if gh is None else gh[r],
                          None if gb is None else gb[r])
        ctx.save_for_backward(h, W, b, t)
        ctx.grads, ctx.expect = (gW, gh, gb), g
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        h, W, b, t = ctx.saved_tensors
        g = g.contiguous()
        R, N = g.shape
        if ctx.grads is None:  # a second backward pass (retain_graph): the first one handed them over
            V, H = W.shape[1:]
            ctx.grads = (empty_like(W, R, V, H), empty_like(h, R, N, H),
                         None if b is None else empty_like(b, R, V))
            ctx.expect = None
        (gW, gh, gb), expect = ctx.grads, ctx.expect
        ctx.grads = ctx.expect = None  # the gradients go to autograd without another reference
        buf = None
        for r in range(R):
            if expect is not None and torch.equal(g[r], expect):
                continue
            if expect is not None and not bool(g[r].any()):  # a masked replica (guarded_step's where):
                for grad in (gW, gh, gb):  # zeros (NaN where the logits were not finite, as unfused)
                    if grad is not None:
                        grad[r].mul_(0)
                continue
            if buf is None:
                buf = empty_like(h, N, W.shape[1])
            _replica_pass(h[r], W[r], None if b is None else b[r], t[r], g[r], buf, torch.empty_like(g[r]),
                          gW[r], gh[r], None if gb is None else gb[r])
        need = ctx.needs_input_grad
        return (gh if need[0] else None, gW if need[1] else None, gb if b is not None and need[2] else None,
                None, None)


def fusable(h: torch.Tensor, W: torch.Tensor) -> bool:
    """Whether :func:`classifier_nll` takes the fused path."""
    return (h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64) and W.dtype == h.dtype
            and W.shape[1] >= MIN_VOCAB)


def classifier_nll(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of the classifier ``softmax(h W^T + b)`` of every replica without
    the (R, N, V) logits: ``h`` ``(R, B, T, H)``, ``W`` ``(R, V, H)``, ``b`` ``(R, V)``,
    ``targets`` ``(B, T)`` shared or ``(R, B, T)``; returns ``(R, B, T)``.

    Equal to ``token_nll(baddbmm(b, h, W^T), targets)`` (the values bit for bit where the BLAS
    keeps a batched slice's bits (module docstring), else to float rounding; the
    gradients to float rounding; ``tests/test_loss.py``). Fast for the gradient of
    ``nll.mean((1, 2))`` per replica (the PTB trainer's loss), exact for any."""
    R, B, T, H = h.shape
    tgt = (targets.expand(R, B, T) if targets.dim() == 2 else targets).reshape(R, B * T).contiguous()
    flat = h.reshape(R, B * T, H)
    if not flat.is_contiguous():  # (the PTB model's hidden states are batch-major views)
        flat = empty_like(h, R, B * T, H).copy_(flat)
    if not torch.is_grad_enabled() or not (h.requires_grad or W.requires_grad or (b is not None and b.requires_grad)):
        with torch.no_grad():
            return _ClassifierNLL.forward(_NoCtx(), flat, W.detach(), None if b is None else b.detach(), tgt,
                                          0.0).view(R, B, T)
    expect = float(torch.ones((), dtype=h.dtype) / (B * T))
    return _ClassifierNLL.apply(flat, W, b, tgt, expect).view(R, B, T)


class _NoCtx:
    """A stand-in for autograd's ctx when :class:`_ClassifierNLL` runs without gradients."""
    needs_input_grad = (False, False, False, False, False)

    def save_for_backward(self, *tensors):
        pass
