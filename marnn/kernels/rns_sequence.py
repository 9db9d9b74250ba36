r"""Whole strings of an RNS model in one compiled call: the evaluation pass (no gradients).

The per-step path (:class:`marnn.kernels.rns_tape.Tape`, one compiled stack step per
timestep for all N strings at once) reads every string's triangle once per step; with
the grid's groups (12 replicas x 10 strings, ~0.6 MB of triangle per string at n = 60)
those no longer fit in the caches between two steps, and the pop term runs at the
speed of memory. Here each (replica, string) runs through all its timesteps before the
next one starts -- the LSTM controller, the action layer, ``exp`` of the action logits
and the stack step of :func:`marnn.kernels.rns_numba._forward` (called for one string)
-- so its triangle stays in the core's own cache from one step to the next, and there
is no per-step dispatch at all.

Used by :class:`marnn.models.stack_rnn.StackRNN` for RNS models (not VRNS, not
windowed) on whole strings without gradients, on the CPU in float32 / float64 when the
compiled step applies (:func:`usable`): what validation and the test bins run. The
numbers equal the per-step path's up to float rounding (the replace term and ``P̂`` are
summed in loops here, by ``torch.bmm`` there; tests/test_rns_sequence.py).

Controller, as :meth:`marnn.models.stack_rnn.StackRNN._generic` computes it: at t = 0
the initial reading (the bottom configuration, one-hot), then for t >= 1 the action
logits ``W_a h_{t-1} + b_a`` -> the stack step -> the reading ``alpha_t``; the gates
``g = gx_t + b + W_hh h_{t-1} + W_ir r_t`` (no ``W_hh`` term at t = 0, where h = 0),
``c = s(f) c + s(i) tanh(g)``, ``h = s(o) tanh(c)`` with gates in the order i, f, g, o.
"""
from __future__ import annotations

import numpy as np

from . import rns_numba

AVAILABLE = rns_numba.AVAILABLE

if AVAILABLE:
    from numba import njit

    from .rns_numba import _JIT, PAD, _forward, _pk_insert

    @njit(inline="always", **_JIT)
    def _sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @njit(**_JIT)
    def _strings(gx, bias, Whh, Wir, Wa, ba, Q, S, hs, hT, cT, tiny):
        """Every string of every replica through all its steps.

        gx (R, T, B, 4H) input gates without bias (time-major), bias (R, 4H), Whh (R, 4H, H),
        Wir (R, 4H, K), Wa (R, K (2K + Q), H), ba (R, K (2K + Q)); writes hs (R, T + 1, B, H)
        (hs[:, 0] = 0), hT and cT (R, B, H): the last hidden and cell state."""
        R, T, B, G = gx.shape
        H = G // 4
        K = Q * S
        A = 2 * K + Q
        dt = gx.dtype
        zero = tiny - tiny
        one = tiny / tiny
        # one string's buffers, reused: two column buffers (the step writes the new column
        # into the one it does not read), the packed triangle and its row table
        cols = np.zeros((2, 1, T + 1, K, K), dt)
        P = 0
        for c in range(T):
            P += Q * ((c + 1) * K + PAD)
        pk = np.empty((1, S, max(P, 1)), dt)
        roff = np.zeros(T + 1, np.int64)
        rj0 = np.zeros(T + 1, np.int64)
        E = np.empty((1, K, A), dt)
        alpha = np.empty((2, 1, K), dt)
        a_out = np.empty((1, K), dt)
        s_out = np.empty(1, dt)
        z0 = np.empty(1, dt)
        ahat = np.empty((1, K), dt)
        reading = np.empty((1, K), dt)
        gates = np.empty(G, dt)
        logits = np.empty(K * A, dt)
        h = np.empty(H, dt)
        c = np.empty(H, dt)
        none3 = np.empty((0, 0, 0), dt)
        none4 = np.empty((0, 0, 0, 0), dt)
        none2 = np.empty((0, 0), dt)
        for r in range(R):
            for b in range(B):
                for k in range(H):
                    h[k] = zero
                    c[k] = zero
                    hs[r, 0, b, k] = zero
                cur = 0
                cols[cur, 0, 0, 0, 0] = one  # the bottom: Ĝ[0 -> 0] at (q0, ⊥)
                for a in range(K):
                    alpha[cur, 0, a] = zero
                    reading[0, a] = zero
                    for e in range(K):
                        if a + e > 0:
                            cols[cur, 0, 0, a, e] = zero
                alpha[cur, 0, 0] = one
                reading[0, 0] = one
                used = 0
                for t in range(T):
                    if t > 0:  # the stack step T' = t: push times [0, t - 1], Lw = t of them
                        Lw = t
                        for q in range(K * A):
                            x = ba[r, q]
                            for k in range(H):
                                x += Wa[r, q, k] * h[k]
                            logits[q] = x
                        mx = logits[0]
                        for q in range(1, K * A):
                            mx = max(mx, logits[q])
                        for a in range(K):
                            for e in range(A):
                                E[0, a, e] = np.exp(logits[a * A + e] - mx)
                        nxt = 1 - cur
                        PhT = np.empty((1, S, Q, (Lw - 1) * Q), dt)
                        _forward(E, alpha[cur], cols[cur, :, :Lw], 0, pk, roff, rj0, 0, 0, Lw, none4, none3,
                                 none2, 0, cols[nxt, :, :Lw + 1], a_out, s_out, z0, alpha[nxt], ahat, PhT,
                                 none3, none3, reading, tiny)
                        # column t - 1 (push times [0, t - 1]) joins the triangle: the pop term
                        # reads it from step t + 1 on
                        roff[t - 1] = used
                        rj0[t - 1] = 0
                        _pk_insert(cols[cur, :, :Lw], 0, pk, used, Lw)
                        used += Q * (Lw * K + PAD)
                        cur = nxt
                    for g in range(G):
                        x = gx[r, t, b, g] + bias[r, g]
                        if t > 0:
                            for k in range(H):
                                x += Whh[r, g, k] * h[k]
                        for k in range(K):
                            x += Wir[r, g, k] * reading[0, k]
                        gates[g] = x
                    for k in range(H):
                        c[k] = _sigmoid(gates[H + k]) * c[k] + _sigmoid(gates[k]) * np.tanh(gates[2 * H + k])
                        h[k] = _sigmoid(gates[3 * H + k]) * np.tanh(c[k])
                        hs[r, t + 1, b, k] = h[k]
                for k in range(H):
                    hT[r, b, k] = h[k]
                    cT[r, b, k] = c[k]


def usable(device, dtype) -> bool:
    """Whether the whole-string kernel applies: the compiled step does (Numba, CPU, float32 / float64)."""
    return rns_numba.usable(device, dtype)


def strings(gx, bias, Whh, Wir, Wa, ba, Q: int, S: int):
    """``hs`` (R, T + 1, B, H) of the model's controller over whole strings, and the last
    ``h`` and ``c`` (R, B, H): torch tensors in, torch tensors out (no autograd)."""
    import torch

    R, T, B, G = gx.shape
    H = G // 4
    hs = gx.new_empty(R, T + 1, B, H)
    hT, cT = gx.new_empty(R, B, H), gx.new_empty(R, B, H)
    tiny = np.array(torch.finfo(gx.dtype).tiny, dtype=gx.numpy().dtype).item()
    args = [t.detach().contiguous().numpy() for t in (gx, bias, Whh, Wir, Wa, ba)]
    _strings(*args, Q, S, hs.numpy(), hT.numpy(), cT.numpy(), args[0].dtype.type(tiny))
    return hs, hT, cT
