"""Replica-batched building blocks: affine maps, embeddings, the LSTM controller.

Every parameter has a leading replica dimension ``R`` (see :mod:`marnn.models.base`),
so ``R`` independent models run as one batched computation (``bmm``/``baddbmm``).
The LSTM is written out by hand (no ``nn.LSTM``) with PyTorch's gate layout and
two bias vectors, so parameter counts match PyTorch models (lstm-256 on PTB has
exactly 5,656,849 parameters):

.. math::
    (i, f, g, o) = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}, \\qquad
    c_t = \\sigma(f) c_{t-1} + \\sigma(i) \\tanh(g), \\qquad
    h_t = \\sigma(o) \\tanh(c_t).

Initialisation is per replica: replica ``r`` draws every one of its slices from
its own ``torch.Generator`` seeded with ``seeds[r]``, in parameter registration
order, so it is bit-for-bit the ``R = 1`` model built from that seed.
Each parameter carries an ``init`` rule (docs: book/reference/models.md, "Initialisation"):
``("uniform", a)`` = U(-a, a), ``("xavier",)`` = Xavier-uniform with gain 1 on the
``(out, in)`` slice, ``("zeros",)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ..kernels import arrays


def replica_param(R: int, *shape: int, init: tuple) -> nn.Parameter:
    """An uninitialised ``(R, *shape)`` parameter tagged with its init rule."""
    p = nn.Parameter(torch.empty(R, *shape))
    cast(Any, p).init = init  # read by init_replicas (a plain attribute on the tensor)
    return p


@torch.no_grad()
def init_replicas(module: nn.Module, seeds: Sequence[int], override: tuple | None = None) -> None:
    """Initialise replica ``r`` of every parameter from ``torch.Generator(seeds[r])``.

    ``override`` (e.g. ``("uniform", 0.05)`` for PTB) replaces every rule.
    Values are drawn in float32 on the CPU and then copied, so the same seed gives
    the same numbers on every device and dtype (up to the cast).
    """
    params = list(module.named_parameters())
    for r, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        for _, p in params:
            rule = override or cast(Any, p).init
            shape = p.shape[1:]
            if rule[0] == "zeros":
                vals = torch.zeros(shape)
            elif rule[0] == "uniform":
                vals = torch.empty(shape).uniform_(-rule[1], rule[1], generator=gen)
            elif rule[0] == "xavier":  # gain 1 (softmax / sigmoid / identity outputs)
                fan_out, fan_in = shape[0], shape[1]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                vals = torch.empty(shape).uniform_(-bound, bound, generator=gen)
            else:  # pragma: no cover - programming error
                raise ValueError(f"unknown init rule {rule}")
            p[r].copy_(vals)


class _Lookup(torch.autograd.Function):
    """``table[index]`` whose backward adds rows with ``index_add_`` (deterministic on
    the CPU, and several times faster than ``embedding``'s dense backward for the
    few-row tables of one-hot inputs)."""

    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        flat = index.reshape(-1)
        out = arrays.empty_like(table, flat.numel(), table.shape[1])  # every row is written
        return torch.index_select(table, 0, flat, out=out).view(*index.shape, table.shape[1])

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        g = arrays.empty_like(grad, ctx.rows, grad.shape[-1]).zero_()
        # a contiguous source: the fused LSTM's gradient is a column slice, and index_add_
        # (deterministic: a scatter_add_) reads a strided one ~5x slower than it copies it
        g.index_add_(0, index.reshape(-1), grad.reshape(-1, grad.shape[-1]).contiguous())
        return g, None


def replica_lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a per-replica table: ``table`` ``(R, N, D)``, ``index`` ``(R, ...)`` in
    ``[0, N)`` -> ``(R, ..., D)``."""
    R, N, D = table.shape
    offset = torch.arange(R, device=index.device).view(R, *([1] * (index.dim() - 1))) * N
    return _Lookup.apply(table.reshape(R * N, D), index + offset)


class _ReplicaAffine(torch.autograd.Function):
    """``baddbmm(b, x, W^T)`` whose weight gradient is computed as ``g^T x``, in the
    ``(R, out, in)`` layout of ``W``. Autograd's ``bmm`` backward computes ``x^T g``
    ``(R, in, out)`` and hands over its transpose, which the gradient accumulation
    then copies into a fresh tensor (a 10 MB copy, after a NaN fill of the fresh
    tensor under deterministic algorithms, for the PTB classifier). Same products,
    summed in the GEMM's other operand order: equal up to float rounding."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        ctx.bias = b is not None
        if b is None:
            return torch.bmm(x, W.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        gx = torch.bmm(g, W) if ctx.needs_input_grad[0] else None
        gW = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.bias and ctx.needs_input_grad[2] else None
        return gx, gW, gb


# Weights with at least this many elements per replica take _ReplicaAffine (the PTB
# classifier and embedding-sized layers); smaller ones autograd's baddbmm.
LARGE_AFFINE = 1 << 16


class ReplicaLinear(nn.Module):
    """``y = x W^T + b`` with one ``(out, in)`` weight per replica."""

    def __init__(self, R: int, in_features: int, out_features: int, init: tuple, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = replica_param(R, out_features, in_features, init=init)
        self.bias = replica_param(R, out_features, init=("zeros",) if init[0] == "xavier" else init) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(R, ..., in)`` -> ``(R, ..., out)``."""
        R = x.shape[0]
        flat = x.reshape(R, -1, self.in_features)  # (R, *, in)
        if self.in_features * self.out_features >= LARGE_AFFINE and torch.is_grad_enabled():
            y = _ReplicaAffine.apply(flat, self.weight, self.bias)
        elif self.bias is None:
            y = torch.bmm(flat, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))
        return y.view(*x.shape[:-1], self.out_features)

    def nll(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token NLL of ``targets`` under ``softmax`` of this layer's output: ``x``
        ``(R, B, T, in)``, ``targets`` ``(B, T)`` or ``(R, B, T)`` -> ``(R, B, T)``.
        Large vocabularies on the CPU: :func:`marnn.kernels.loss.classifier_nll` (no
        (R, B, T, out) logits); else ``token_nll`` of :meth:`forward`."""
        from ..kernels.loss import classifier_nll, fusable, token_nll

        if x.dim() == 4 and fusable(x, self.weight):
            return classifier_nll(x, self.weight, self.bias, targets)
        return token_nll(self(x), targets)


class ReplicaEmbedding(nn.Module):
    """A lookup table per replica: ``x`` ``(R, ...)`` -> ``(R, ..., E)``."""

    def __init__(self, R: int, num: int, dim: int, init: tuple):
        super().__init__()
        self.num, self.dim = num, dim
        self.weight = replica_param(R, num, dim, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return replica_lookup(self.weight, x)


class ReplicaLSTM(nn.Module):
    """The controller: one LSTM layer per replica, PyTorch gate order (i, f, g, o).

    ``weight_ih`` acts on ``[x_t ; r_t]`` (input features, then the stack
    reading); the two halves are used separately so that the input half can be
    computed for all timesteps in one product (:meth:`input_gates`).
    """

    def __init__(self, R: int, input_size: int, reading_size: int, hidden_size: int, init: tuple = ("uniform", 0.1)):
        super().__init__()
        H = hidden_size
        self.input_size, self.reading_size, self.hidden_size = input_size, reading_size, H
        self.weight_ih = replica_param(R, 4 * H, input_size + reading_size, init=init)
        self.weight_hh = replica_param(R, 4 * H, H, init=init)
        self.bias_ih = replica_param(R, 4 * H, init=init)
        self.bias_hh = replica_param(R, 4 * H, init=init)

    @property
    def weight_ix(self) -> torch.Tensor:  # (R, 4H, I)
        return self.weight_ih[:, :, : self.input_size]

    @property
    def weight_ir(self) -> torch.Tensor:  # (R, 4H, reading)
        return self.weight_ih[:, :, self.input_size:]

    def gate_bias(self) -> torch.Tensor:
        """``b_ih + b_hh``: ``(R, 4H)``."""
        return self.bias_ih + self.bias_hh

    def input_gates(self, x: torch.Tensor, one_hot: bool) -> torch.Tensor:
        """Input half of the gate pre-activations (no bias), for all steps, time-major.

        ``x``: ``(R, T, B)`` indices (``one_hot``: the rows ``W_ix[:, x]`` equal the
        product with a one-hot vector exactly) or ``(R, T, B, F)`` features.
        Returns ``(R, T, B, 4H)``.
        """
        if one_hot:
            return replica_lookup(self.weight_ix.transpose(1, 2), x)  # (R, T, B, 4H)
        R, T, B, F = x.shape
        g = torch.bmm(x.reshape(R, T * B, F), self.weight_ix.transpose(1, 2))
        return g.view(R, T, B, -1)

    @staticmethod
    def cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gates``: ``(..., 4H)`` pre-activations; returns ``(h, c)``."""
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c
