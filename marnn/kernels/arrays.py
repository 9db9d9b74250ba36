"""Array namespaces for the fused LSTM / superposition loop, and the gate scaling both of its loops use.

:class:`Numpy` (CPU, float32 / float64) and :class:`Torch` (any device, every
format) give the loop of :mod:`marnn.kernels.fused_lstm` one set of array
operations (``xp.matmul``, ``xp.exp``, ``xp.zeros``, ...), so one loop serves both;
:func:`gate_scale` is the gate rule it shares with the Numba loop of
:mod:`marnn.kernels.fused_lstm_numba` (sigma(x) = 1 / (1 + exp(-x)) and
tanh(x) = 2 sigma(2x) - 1: every gate is one exp of ``z = -s x``).
"""
from __future__ import annotations

from typing import Any

import torch

CHECK_WRITES = False  # the tests set it: buffers from empty() start as NaN, so an entry a kernel leaves unwritten shows


def empty(*shape, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``torch.empty`` for a buffer that a kernel writes in full before it is read: without
    the NaN fill that deterministic algorithms (on in every trainer) give each new tensor,
    a pass over its memory per allocation that cost ~10% of a windowed RNS chunk. With
    :data:`CHECK_WRITES` the buffer is NaN whatever the mode."""
    if len(shape) == 1 and isinstance(shape[0], tuple | list | torch.Size):
        shape = tuple(shape[0])
    if CHECK_WRITES:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    det: Any = torch.utils.deterministic
    fill = det.fill_uninitialized_memory
    det.fill_uninitialized_memory = False
    try:
        return torch.empty(shape, dtype=dtype, device=device)
    finally:
        det.fill_uninitialized_memory = fill


def empty_like(x: torch.Tensor, *shape) -> torch.Tensor:
    """:func:`empty` with ``x``'s dtype and device (and its shape unless ``shape`` is given)."""
    return empty(*(shape or (x.shape,)), dtype=x.dtype, device=x.device)


class Numpy:
    """Array namespace over NumPy (CPU)."""

    compiled = False  # run the per-row compiled loop (marnn.kernels.fused_lstm_numba) instead of the array loop

    def __init__(self, dtype):
        import numpy as np
        self.np, self.dtype = np, dtype
        for name in ("matmul", "add", "subtract", "multiply", "tanh", "exp", "stack", "concatenate"):
            setattr(self, name, getattr(np, name))
        self.sum, self.amax = np.add.reduce, np.maximum.reduce  # no Python wrapper

    def zeros(self, *shape):
        return self.np.zeros(shape, dtype=self.dtype)

    def empty(self, *shape):
        return self.np.empty(shape, dtype=self.dtype)

    def const(self, values):
        return self.np.asarray(values, dtype=self.dtype)

    def recip(self, x):  # in place
        self.np.divide(1.0, x, out=x)

    def quiet(self):  # exp(z) overflows to inf for saturated gates: 1 / (1 + inf) = 0 is the right value
        return self.np.errstate(over="ignore")

    @staticmethod
    def unbind(x):
        return list(x)

    @staticmethod
    def unbind1(x):
        return [x[:, t] for t in range(x.shape[1])]

    @staticmethod
    def arr(t):
        return None if t is None else t.detach().numpy()

    @staticmethod
    def tensor(a):
        return a if a is None or isinstance(a, torch.Tensor) else torch.from_numpy(a)

    @staticmethod
    def T(x):  # swap the last two axes
        return x.swapaxes(-1, -2)

    @staticmethod
    def copy(x):
        return x.copy()

    @staticmethod
    def bigmm(a, b):
        """Large products go to torch: OpenBLAS would start spinning threads for them."""
        return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()

class Torch:
    """The same namespace over torch (any device)."""

    compiled = False

    def __init__(self, like):
        self.like = like
        for name in ("matmul", "add", "subtract", "multiply", "tanh", "exp", "sum", "amax", "stack"):
            setattr(self, name, getattr(torch, name))

    def zeros(self, *shape):
        return self.like.new_zeros(shape)

    def empty(self, *shape):
        return self.like.new_empty(shape)

    def const(self, values):
        return torch.tensor(values, dtype=self.like.dtype, device=self.like.device)

    @staticmethod
    def recip(x):
        torch.reciprocal(x, out=x)

    @staticmethod
    def quiet():
        import contextlib
        return contextlib.nullcontext()

    @staticmethod
    def concatenate(xs, axis=0):
        return torch.cat(xs, dim=axis)

    @staticmethod
    def unbind(x):
        return x.unbind(0)

    @staticmethod
    def unbind1(x):
        return x.unbind(1)

    @staticmethod
    def arr(t):
        return None if t is None else t.detach()

    @staticmethod
    def tensor(a):
        return a

    @staticmethod
    def bigmm(a, b):
        return torch.matmul(a, b)

    @staticmethod
    def T(x):
        return x.transpose(-1, -2)

    @staticmethod
    def copy(x):
        return x.clone()


def gate_scale(xp, W, G):
    """Rows of ``W`` (R, G, ...) times -s per gate (s = 1, 1, 2, 1)."""
    R, H = W.shape[0], G // 4
    neg = xp.const([-1.0, -1.0, -2.0, -1.0]).reshape(1, 4, 1, 1)
    return (W.reshape(R, 4, H, -1) * neg).reshape(W.shape)
