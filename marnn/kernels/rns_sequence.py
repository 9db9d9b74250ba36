r"""Whole strings of an RNS model in one compiled call, forward and backward.

The per-step path (:class:`marnn.kernels.rns_tape.Tape`, one compiled stack step per
timestep for all N strings at once) reads every string's triangle once per step; with
the grid's groups (12 replicas x 10 strings, ~0.6 MB of triangle per string at n = 60)
those no longer fit in the caches between two steps, and the pop term runs at the
speed of memory. Here each (replica, string) runs through all its timesteps before the
next one starts -- the LSTM controller, the action layer, ``exp`` of the action logits
and the stack step of :func:`marnn.kernels.rns_numba._forward` (called for one string)
-- so its triangle stays in the core's own cache from one step to the next, and there
is no per-step dispatch at all. The backward pass (:func:`_strings_backward`) runs
each string back through its steps the same way: the LSTM's backward, the stack step's
(:func:`marnn.kernels.rns_numba._backward`, its deferred pop-term adjoint packed as the
tape packs it) and the action layer's, summing the parameter gradients of each replica
over its strings. About 2x faster per replica than the per-step path in a group of 12
(benchmarks/README.md).

Used by :class:`marnn.models.stack_rnn.StackRNN` for RNS models (not VRNS, not
windowed) on whole strings (a fresh state), on the CPU in float32 / float64 when the
compiled step applies: what the formal grid trains and evaluates. The numbers equal
the per-step path's and the torch reference's up to float rounding (the replace term
and ``P̂`` are summed in register tiles here, by ``torch.bmm`` there;
tests/test_rns_sequence.py, readings and every parameter gradient). Memory: the
records of every step of every string (~2 MB per string at n = 80), as the per-step
tape keeps them.

Controller, as :meth:`marnn.models.stack_rnn.StackRNN._generic` computes it: at t = 0
the initial reading (the bottom configuration, one-hot), then for t >= 1 the action
logits ``W_a h_{t-1} + b_a`` -> the stack step -> the reading ``alpha_t``; the gates
``g = gx_t + b + W_hh h_{t-1} + W_ir r_t`` (no ``W_hh`` term at t = 0, where h = 0),
``c = s(f) c + s(i) tanh(g)``, ``h = s(o) tanh(c)`` with gates in the order i, f, g, o.
"""
from __future__ import annotations

import numpy as np

from . import arrays, backend, rns_numba

AVAILABLE = rns_numba.AVAILABLE

if AVAILABLE:
    from numba import njit

    from .rns_numba import _JIT, PAD, _backward, _forward, _pk_insert

    @njit(inline="always", **_JIT)
    def _sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @njit(inline="always", **_JIT)
    def _action_weights(WaT, ba, r, h, logits, E):
        """E[0] (K, A) = exp(l - max l) of the action logits l = W_a h + b_a of replica r
        (``WaT`` (H, K A): W_a transposed). Each logit is summed over h in order, as a dot
        product would, but all logits at once (independent sums: vectorised, not one chain
        of dependent additions per logit)."""
        K, A = E.shape[1], E.shape[2]
        for q in range(K * A):
            logits[q] = ba[r, q]
        for k in range(h.shape[0]):
            hk = h[k]
            for q in range(K * A):
                logits[q] += WaT[k, q] * hk
        mx = logits[0]
        for q in range(1, K * A):
            mx = max(mx, logits[q])
        for a in range(K):
            for e in range(A):
                E[0, a, e] = np.exp(logits[a * A + e] - mx)

    @njit(inline="always", **_JIT)
    def _gates(gx, bias, WhhT, WirT, r, t, b, h, reading, gates):
        """gates = gx[r, t, b] + bias[r] + W_hh h (not at t = 0, where h = 0) + W_ir reading, each
        gate summed in that order (``WhhT`` (H, 4H), ``WirT`` (K, 4H): transposed, so that the
        gates accumulate side by side as in :func:`_action_weights`)."""
        G = gates.shape[0]
        for g in range(G):
            gates[g] = gx[r, t, b, g] + bias[r, g]
        if t > 0:
            for k in range(h.shape[0]):
                hk = h[k]
                for g in range(G):
                    gates[g] += WhhT[k, g] * hk
        for k in range(reading.shape[0]):
            rk = reading[k]
            for g in range(G):
                gates[g] += WirT[k, g] * rk

    @njit(inline="always", **_JIT)
    def _transposed(Whh, Wir, Wa, r):
        """Replica r's W_hh, W_ir and W_a transposed (contiguous), for :func:`_gates` and
        :func:`_action_weights`."""
        return Whh[r].T.copy(), Wir[r].T.copy(), Wa[r].T.copy()

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
        nc = (T + 1) * K * K
        cols = np.zeros((2, nc), dt)  # flat: each step views a C-contiguous (1, L, K, K) prefix
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
            WhhT, WirT, WaT = _transposed(Whh, Wir, Wa, r)
            for b in range(B):
                for k in range(H):
                    h[k] = zero
                    c[k] = zero
                    hs[r, 0, b, k] = zero
                cur = 0
                cols[cur, 0] = one  # the bottom: Ĝ[0 -> 0] at (q0, ⊥)
                for a in range(K):
                    alpha[cur, 0, a] = zero
                    reading[0, a] = zero
                    for e in range(K):
                        if a + e > 0:
                            cols[cur, a * K + e] = zero
                alpha[cur, 0, 0] = one
                reading[0, 0] = one
                used = 0
                for t in range(T):
                    if t > 0:  # the stack step T' = t: push times [0, t - 1], Lw = t of them
                        Lw = t
                        _action_weights(WaT, ba, r, h, logits, E)
                        nxt = 1 - cur
                        PhT = np.empty((1, S, Q, (Lw - 1) * Q), dt)
                        col = cols[cur, :Lw * K * K].reshape(1, Lw, K, K)
                        _forward(E, alpha[cur], col, 0, pk, roff, rj0, 0, 0, Lw, none4, none3,
                                 none2, 0, cols[nxt, :(Lw + 1) * K * K].reshape(1, Lw + 1, K, K), a_out, s_out, z0,
                                 alpha[nxt], ahat, PhT,
                                 none3, none3, reading, tiny)
                        # column t - 1 (push times [0, t - 1]) joins the triangle: the pop term
                        # reads it from step t + 1 on
                        roff[t - 1] = used
                        rj0[t - 1] = 0
                        _pk_insert(col, 0, pk, used, Lw)
                        used += Q * (Lw * K + PAD)
                        cur = nxt
                    _gates(gx, bias, WhhT, WirT, r, t, b, h, reading[0], gates)
                    for k in range(H):
                        c[k] = _sigmoid(gates[H + k]) * c[k] + _sigmoid(gates[k]) * np.tanh(gates[2 * H + k])
                        h[k] = _sigmoid(gates[3 * H + k]) * np.tanh(c[k])
                        hs[r, t + 1, b, k] = h[k]
                for k in range(H):
                    hT[r, b, k] = h[k]
                    cT[r, b, k] = c[k]


    @njit(**_JIT)
    def _strings_train(gx, bias, Whh, Wir, Wa, ba, Q, S, hs, cs, acts, reads, Es, alphas, colpk, coff, phpk, poff,
                       z0s, a_s, s_s, ahats, pks, tiny):
        """:func:`_strings` keeping what the backward pass needs, per (replica, string):
        cs (R, B, T + 1, H) the cell states, acts (R, B, T, 4H) the gate activations (sigmoid of
        i, f, o; tanh of g), reads (R, B, T, K) the readings, and per stack step t >= 1 its
        weights Es (R, B, T, K, A), the stack after every step (alphas (R, B, T, K); column t
        (t + 1 push times) at colpk[r, b, coff[t]:]), P̂ (phpk at poff[t], PhT's layout), Z0,
        a, s, ahat (z0s, s_s (R, B, T); a_s, ahats (R, B, T, K)) and the packed triangle
        pks (R, B, S, P)."""
        R, T, B, G = gx.shape
        H = G // 4
        K = Q * S
        A = 2 * K + Q
        dt = gx.dtype
        zero = tiny - tiny
        one = tiny / tiny
        roff = np.zeros(T + 1, np.int64)
        rj0 = np.zeros(T + 1, np.int64)
        gates = np.empty(G, dt)
        logits = np.empty(K * A, dt)
        h = np.empty(H, dt)
        c = np.empty(H, dt)
        none3 = np.empty((0, 0, 0), dt)
        none4 = np.empty((0, 0, 0, 0), dt)
        none2 = np.empty((0, 0), dt)
        for r in range(R):
            WhhT, WirT, WaT = _transposed(Whh, Wir, Wa, r)
            for b in range(B):
                for k in range(H):
                    h[k] = zero
                    c[k] = zero
                    hs[r, 0, b, k] = zero
                    cs[r, b, 0, k] = zero
                col0 = colpk[r, b, 0:K * K]
                for e in range(K * K):
                    col0[e] = zero
                col0[0] = one  # the bottom: Ĝ[0 -> 0] at (q0, ⊥)
                for a in range(K):
                    alphas[r, b, 0, a] = zero
                    reads[r, b, 0, a] = zero
                alphas[r, b, 0, 0] = one
                reads[r, b, 0, 0] = one
                pk = pks[r, b:b + 1]
                used = 0
                for t in range(T):
                    if t > 0:  # the stack step from time t - 1 (push times [0, t - 1], Lw = t) to t
                        Lw = t
                        E = Es[r, b, t:t + 1]
                        _action_weights(WaT, ba, r, h, logits, E)
                        col = colpk[r, b, coff[t - 1]:coff[t]].reshape(1, Lw, K, K)
                        newcol = colpk[r, b, coff[t]:coff[t + 1]].reshape(1, Lw + 1, K, K)
                        PhT = phpk[r, b, poff[t]:poff[t + 1]].reshape(1, S, Q, (Lw - 1) * Q)
                        _forward(E, alphas[r, b, t - 1:t], col, 0, pk, roff, rj0, 0, 0, Lw, none4, none3, none2, 0,
                                 newcol, a_s[r, b, t:t + 1], s_s[r, b, t:t + 1], z0s[r, b, t:t + 1],
                                 alphas[r, b, t:t + 1], ahats[r, b, t:t + 1], PhT, none3, none3,
                                 reads[r, b, t:t + 1], tiny)
                        roff[t - 1] = used
                        rj0[t - 1] = 0
                        _pk_insert(col, 0, pk, used, Lw)
                        used += Q * (Lw * K + PAD)
                    _gates(gx, bias, WhhT, WirT, r, t, b, h, reads[r, b, t], gates)
                    for k in range(H):
                        ig = _sigmoid(gates[k])
                        fg = _sigmoid(gates[H + k])
                        gg = np.tanh(gates[2 * H + k])
                        og = _sigmoid(gates[3 * H + k])
                        acts[r, b, t, k] = ig
                        acts[r, b, t, H + k] = fg
                        acts[r, b, t, 2 * H + k] = gg
                        acts[r, b, t, 3 * H + k] = og
                        c[k] = fg * c[k] + ig * gg
                        h[k] = og * np.tanh(c[k])
                        hs[r, t + 1, b, k] = h[k]
                        cs[r, b, t + 1, k] = c[k]

    @njit(**_JIT)
    def _strings_backward(dhs, gx, Whh, Wir, Wa, Q, S, hs, cs, acts, reads, Es, alphas, colpk, coff, phpk, poff,
                          z0s, a_s, s_s, ahats, pks, doff, dj0, dlen, PD, dgx, dbias, dWhh, dWir, dWa, dba, tiny):
        """Reverse of :func:`_strings_train` for every string: the gradients of gx (dgx), and,
        summed over the strings of each replica, of bias, Whh, Wir, Wa and ba, from dhs (R, T + 1,
        B, H). The stack steps go through :func:`marnn.kernels.rns_numba._backward` one string at
        a time (its deferred pop-term adjoint in DP / PH packed as the tape packs them: doff,
        dj0, dlen for the last step T - 1 down to 0)."""
        R, T, B, G = gx.shape
        H = G // 4
        K = Q * S
        A = 2 * K + Q
        dt = gx.dtype
        zero = tiny - tiny
        one = tiny / tiny
        roff = np.zeros(T + 1, np.int64)
        rj0 = np.zeros(T + 1, np.int64)
        used = 0
        for c in range(T - 1):
            roff[c] = used
            used += Q * ((c + 1) * K + PAD)
        n = T  # tape times 0 .. T - 1
        DP = np.empty((1, S, max(PD, 1)), dt)
        PH = np.empty((1, S, n, Q, n, Q), dt)
        dh = np.empty(H, dt)
        dc = np.empty(H, dt)
        dgates = np.empty(G, dt)
        dr = np.empty((1, K), dt)
        dal = np.zeros((2, 1, K), dt)   # the gradient of alpha at a tape time, from the step after it
        dcols = np.zeros((2, (T + 1) * K * K), dt)  # ... of the column at a tape time (flat, as cols)
        dE = np.empty((1, K, A), dt)
        none3 = np.empty((0, 0, 0), dt)
        none4 = np.empty((0, 0, 0, 0), dt)
        none2 = np.empty((0, 0), dt)
        top = T - 1  # the last stack step
        for r in range(R):
            for b in range(B):
                for k in range(H):
                    dh[k] = zero
                    dc[k] = zero
                cur = 0
                has = False  # gradients of alpha / the column at the current tape time exist
                pk = pks[r, b:b + 1]
                for t in range(T - 1, -1, -1):
                    for k in range(H):  # the LSTM at step t
                        dh[k] += dhs[r, t + 1, b, k]
                        ig = acts[r, b, t, k]
                        fg = acts[r, b, t, H + k]
                        gg = acts[r, b, t, 2 * H + k]
                        og = acts[r, b, t, 3 * H + k]
                        th = np.tanh(cs[r, b, t + 1, k])
                        dct = dc[k] + dh[k] * og * (one - th * th)
                        dgates[k] = dct * gg * ig * (one - ig)
                        dgates[H + k] = dct * cs[r, b, t, k] * fg * (one - fg)
                        dgates[2 * H + k] = dct * ig * (one - gg * gg)
                        dgates[3 * H + k] = dh[k] * th * og * (one - og)
                        dc[k] = dct * fg
                    for g in range(G):
                        x = dgates[g]
                        dgx[r, t, b, g] = x
                        dbias[r, g] += x
                        for k in range(K):
                            dWir[r, g, k] += x * reads[r, b, t, k]
                    for k in range(K):  # dr = W_ir^T dgates, each sum over g in order, all k side by side
                        dr[0, k] = zero
                    for g in range(G):
                        x = dgates[g]
                        for k in range(K):
                            dr[0, k] += Wir[r, g, k] * x
                    for k in range(H):
                        dh[k] = zero
                    if t > 0:
                        for g in range(G):
                            x = dgates[g]
                            for k in range(H):
                                dWhh[r, g, k] += x * hs[r, t, b, k]
                        for g in range(G):
                            x = dgates[g]
                            for k in range(H):
                                dh[k] += Whh[r, g, k] * x
                        # the stack step from tape time t - 1 to t
                        Lw = t
                        nxt = 1 - cur
                        adj_lo = t + 2 if top >= t + 2 else 0
                        adj_hi = top + 1 if top >= t + 2 else 0
                        _backward(Es[r, b, t:t + 1], alphas[r, b, t - 1:t],
                                  colpk[r, b, coff[t - 1]:coff[t]].reshape(1, Lw, K, K), 0, pk, roff, rj0, 0, 0, Lw,
                                  phpk[r, b, poff[t]:poff[t + 1]].reshape(1, S, Q, (Lw - 1) * Q), z0s[r, b, t:t + 1],
                                  a_s[r, b, t:t + 1], s_s[r, b, t:t + 1], alphas[r, b, t:t + 1],
                                  ahats[r, b, t:t + 1], colpk[r, b, coff[t]:coff[t + 1]].reshape(1, Lw + 1, K, K),
                                  none3, none3, none2, 0, dr, dal[cur], has,
                                  dcols[cur, :(Lw + 1) * K * K].reshape(1, Lw + 1, K, K), has, DP, doff,
                                  dj0, dlen, PH, t, 0, adj_lo, adj_hi, 0, none3, 0,
                                  dE, dcols[nxt, :Lw * K * K].reshape(1, Lw, K, K), dal[nxt], none4, none4, tiny)
                        cur = nxt
                        has = True
                        for q in range(K * A):  # the action logits (exp of them): dx = dE E
                            a = q // A
                            e = q - a * A
                            x = dE[0, a, e] * Es[r, b, t, a, e]
                            dba[r, q] += x
                            for k in range(H):
                                dWa[r, q, k] += x * hs[r, t, b, k]
                                dh[k] += Wa[r, q, k] * x

    # these call rns_numba's compiled step: their cache must not outlive a change there
    backend.cache_follows([rns_numba.__file__], _strings, _strings_train, _strings_backward)


def usable(device, dtype) -> bool:
    """Whether the whole-string kernel applies: the compiled step does (Numba, CPU, float32 / float64)."""
    return rns_numba.usable(device, dtype)


def strings(gx, bias, Whh, Wir, Wa, ba, Q: int, S: int):
    """``hs`` (R, T + 1, B, H) of the model's controller over whole strings, and the last
    ``h`` and ``c`` (R, B, H): torch tensors in, torch tensors out (no autograd)."""
    import torch

    R, T, B, G = gx.shape
    H = G // 4
    hs = arrays.empty_like(gx, R, T + 1, B, H)  # every entry is written
    hT, cT = arrays.empty_like(gx, R, B, H), arrays.empty_like(gx, R, B, H)
    tiny = np.array(torch.finfo(gx.dtype).tiny, dtype=gx.numpy().dtype).item()
    args = [t.detach().contiguous().numpy() for t in (gx, bias, Whh, Wir, Wa, ba)]
    _strings(*args, Q, S, hs.numpy(), hT.numpy(), cT.numpy(), args[0].dtype.type(tiny))
    return hs, hT, cT


def _layout(T: int, Q: int, S: int):
    """Offsets of the packed per-string records of :func:`_strings_train` (columns, P̂), the
    triangle's size, and the packing of the deferred adjoint (as ``Tape._pack_dp`` packs it
    for the last step T - 1, unwindowed)."""
    K = Q * S
    t = np.arange(T + 1, dtype=np.int64)
    coff = K * K * t * (t + 1) // 2
    poff = np.zeros(T + 1, dtype=np.int64)
    poff[1:] = np.cumsum(S * Q * Q * np.maximum(t[:-1] - 1, 0))
    P = sum(Q * ((c + 1) * K + rns_numba.PAD) for c in range(T))
    doff, dj0, dlen = (np.zeros(max(T, 1), dtype=np.int64) for _ in range(3))
    off = 0
    for tq in range(T - 1, -1, -1):
        Lr = max(tq - 1, 0)
        doff[tq], dlen[tq] = off, Lr
        off += Q * Lr * K
    return coff, poff, max(P, 1), doff, dj0, dlen, off


def strings_with_grad(gx, bias, Whh, Wir, Wa, ba, Q: int, S: int):
    """As :func:`strings`, differentiable in gx, bias, Whh, Wir, Wa and ba; returns ``hs`` and ``cT``
    (``cT`` without a gradient)."""
    return _WholeStringsFn.apply(gx, bias, Whh, Wir, Wa, ba, Q, S)


def _numpy(*ts):
    return [t.detach().contiguous().numpy() for t in ts]


try:
    import torch

    class _WholeStringsFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gx, bias, Whh, Wir, Wa, ba, Q, S):
            R, T, B, G = gx.shape
            H, K = G // 4, Q * S
            A = 2 * K + Q
            coff, poff, P, doff, dj0, dlen, PD = _layout(T, Q, S)
            dt = _NP[gx.dtype]

            def new(*shape):  # every entry is written (NumPy: no NaN fill of deterministic torch)
                return np.empty(shape, dt)
            hs, cs, acts, reads = new(R, T + 1, B, H), new(R, B, T + 1, H), new(R, B, T, G), new(R, B, T, K)
            Es, alphas = new(R, B, T, K, A), new(R, B, T, K)
            colpk, phpk = new(R, B, int(coff[T])), new(R, B, max(int(poff[T]), 1))
            z0s, s_s, a_s, ahats = new(R, B, T), new(R, B, T), new(R, B, T, K), new(R, B, T, K)
            pks = new(R, B, S, P)
            tiny = dt(torch.finfo(gx.dtype).tiny)
            saved = [hs, cs, acts, reads, Es, alphas, colpk, coff, phpk, poff, z0s, a_s, s_s, ahats, pks]
            _strings_train(*_numpy(gx, bias, Whh, Wir, Wa, ba), Q, S, *saved, tiny)
            ctx.QS, ctx.saved, ctx.tables = (Q, S), saved, (doff, dj0, dlen, PD)
            ctx.save_for_backward(gx, Whh, Wir, Wa)
            cT = torch.from_numpy(cs[:, :, -1].copy())
            ctx.mark_non_differentiable(cT)
            return torch.from_numpy(hs), cT

        @staticmethod
        def backward(ctx, dhs, dcT):
            gx, Whh, Wir, Wa = ctx.saved_tensors
            Q, S = ctx.QS
            R, T, B, G = gx.shape
            K = Q * S
            A = 2 * K + Q
            dgx = arrays.empty_like(gx)  # every entry is written
            dbias, dWhh, dWir = gx.new_zeros(R, G), torch.zeros_like(Whh), torch.zeros_like(Wir)
            dWa, dba = torch.zeros_like(Wa), gx.new_zeros(R, K * A)
            doff, dj0, dlen, PD = ctx.tables
            dhs = np.zeros_like(ctx.saved[0]) if dhs is None else dhs.contiguous().numpy()
            _strings_backward(dhs, *_numpy(gx, Whh, Wir, Wa), Q, S, *ctx.saved, doff, dj0, dlen, PD, dgx.numpy(),
                              dbias.numpy(), dWhh.numpy(), dWir.numpy(), dWa.numpy(), dba.numpy(),
                              _NP[gx.dtype](torch.finfo(gx.dtype).tiny))
            return dgx, dbias, dWhh, dWir, dWa, dba, None, None

    _NP = {torch.float32: np.float32, torch.float64: np.float64}
except ImportError:  # pragma: no cover
    pass
