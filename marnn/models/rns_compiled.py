r"""Compiled (Numba) form of one RNS / VRNS stack step, forward and backward.

The same step as the torch code of :class:`marnn.models.rns._Tape`
(``forward_step`` / ``backward_step``, kept as the reference these kernels are
tested against), with the same tape layout (the triangle buffer ``buf``, the
deferred pop-term adjoint ``DP`` / ``PH``, the column ``col``), but each string
of the batch runs through the whole step inside one compiled function: no
per-operation dispatch, no permuting copies between the products, and the pop
term touches only the lower triangle ``j <= c`` of each symbol's block, one row
``(c, u)`` at a time, with that row's ``Q`` outputs accumulated in L1.

Notation (as in ``rns.py``): ``N`` strings (replicas flattened), ``K = Q S``
configurations ``(state, top symbol)``, ``A = 2K + Q`` actions per configuration
(push | replace | pop), at step ``T = t + 1`` the push times ``[loT, t]``
(``Lw`` of them) of which ``Lr = Lw - 1`` have a pop term; ``col`` holds push
times ``[lo, t]`` (its first ``d = loT - lo`` rows leave the window).

Arithmetic: the same sums as the reference, in a fixed order per string
(deterministic; the only difference from torch is rounding). ``fastmath``
allows FMA contraction and re-association (vectorised dot products): the
results are the same from run to run and do not depend on how the strings are
split over threads.

Array arguments are NumPy views of the tape's torch tensors (zero copy). Used
on the CPU for float32 / float64 when Numba is installed (``AVAILABLE``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

try:  # optional: without Numba the torch reference runs
    from numba import njit
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba
    AVAILABLE = False

if AVAILABLE:
    _JIT: dict[str, Any] = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract", "reassoc"})

    @njit(**_JIT)
    def _forward(E, alpha, col, d, buf, rb, Lw, vec_old, v, m, newcol, a_out, s_out, z0_out, alphaT, ahat,
                 PhT, w, vec_new, reading, tiny):
        """One step for every string.

        Inputs: E (N,K,A) weights, alpha (N,K), col (N,Lc,K,K) (rows d.. are push
        times loT..t), buf (N,S,cap*Q,cap*K) the triangle (row (c,u), column (j,a),
        buffer index of push time loT = rb), vec_old (N,Lc,m) and v (N,m) (VRNS, m > 0).
        Outputs: newcol (N,Lw+1,K,K), a_out (N,K) (the normalised column sums),
        s_out, z0_out (N), alphaT, ahat (N,K), PhT (N,S,Q,Lr*Q) = P̂[c+1][(u,y), r]
        at [y, r, c*Q+u], w (N,Lw+1,K), vec_new (N,Lw+1,m), reading (N,K) or (N,K*m).
        """
        N, K, A = E.shape
        Q = A - 2 * K
        S = K // Q
        Lr = Lw - 1
        uK = np.uint64(K)
        dt = E.dtype
        W = np.empty((K, A), dt)
        acc = np.empty((Q, max(Lr, 1) * K), dt)
        off = np.uint64(rb * K)
        zero = tiny - tiny  # 0 and 1 in the arrays' dtype (a float literal would promote float32 sums)
        one = tiny / tiny
        for i in range(N):
            for a in range(K):
                al = alpha[i, a]
                for e in range(A):
                    W[a, e] = al * E[i, a, e]
            C = newcol[i]  # built in place: C, then C / Z0, then C / ahat
            for j in range(Lw):  # replace: C[j] = col[j] @ Wre
                for a in range(K):
                    for b in range(uK):
                        C[j, a, b] = 0
                    for c in range(K):
                        x = col[i, d + j, a, c]
                        for b in range(uK):
                            C[j, a, b] += x * W[c, uK + b]
            for a in range(K):  # push at time T
                for b in range(uK):
                    C[Lw, a, b] = W[a, b]
            if Lr > 0:
                # P̂[c+1][(u,y), r] = sum_c' col[c+1][(u,y), c'] Wpop[c', r]
                for c in range(Lr):
                    for u in range(Q):
                        for y in range(S):
                            ab = u * S + y
                            for r in range(Q):
                                x = zero
                                for cp in range(K):
                                    x += col[i, d + 1 + c, ab, cp] * W[cp, 2 * K + r]
                                PhT[i, y, r, c * Q + u] = x
                # pop: C[j][a, (r,y)] += sum_{c >= j, u} tri[y][(c,u), (j,a)] P̂[c+1][(u,y), r]
                for y in range(S):
                    for r in range(Q):
                        for e in range(np.uint64(Lr * K)):
                            acc[r, e] = 0
                    for c in range(Lr):
                        ln = np.uint64((c + 1) * K)
                        for u in range(Q):
                            row = (rb + c) * Q + u
                            for r in range(Q):
                                p = PhT[i, y, r, c * Q + u]
                                for e in range(ln):
                                    acc[r, e] += p * buf[i, y, row, off + e]
                    for j in range(Lr):
                        for a in range(K):
                            for r in range(Q):
                                C[j, a, r * S + y] += acc[r, j * K + a]
            z = zero
            for j in range(Lw + 1):
                for a in range(K):
                    for b in range(uK):
                        z += C[j, a, b]
            z = max(z, tiny)
            z0_out[i] = z
            rz = one / z
            for b in range(K):
                a_out[i, b] = 0
            for j in range(Lw + 1):
                for a in range(K):
                    for b in range(uK):
                        x = C[j, a, b] * rz
                        C[j, a, b] = x
                        a_out[i, b] += x
            s = zero
            for b in range(K):
                s += a_out[i, b]
            s_out[i] = s
            for b in range(K):
                alphaT[i, b] = a_out[i, b] / s
                ahat[i, b] = max(a_out[i, b], tiny)
            if m > 0:
                for j in range(Lw):
                    for f in range(m):
                        vec_new[i, j, f] = vec_old[i, d + j, f]
                for f in range(m):
                    vec_new[i, Lw, f] = v[i, f]
                for j in range(Lw + 1):
                    for b in range(K):
                        w[i, j, b] = 0
                    for a in range(K):
                        for b in range(uK):
                            w[i, j, b] += C[j, a, b]
                for b in range(K):
                    for f in range(m):
                        x = zero
                        for j in range(Lw + 1):
                            x += w[i, j, b] * vec_new[i, j, f]
                        reading[i, b * m + f] = x / s
            else:
                for b in range(K):
                    reading[i, b] = alphaT[i, b]
            for j in range(Lw + 1):
                for a in range(K):
                    for b in range(uK):
                        C[j, a, b] = C[j, a, b] / ahat[i, b]

    @njit(**_JIT)
    def _backward(E, alpha, col, d, buf, rb, Lw, PhT, z0, a_in, s_in, alphaT, ahat, newcol, vec, w, reading, m,
                  dR, dalphaT, has_dalpha, dM, has_dM, DP, PH, tb, jb, adj_lo, adj_hi, adj_j, dV, j0,
                  dE, dcol, dalpha, tiny):
        """Reverse of :func:`_forward` at step T (same arrays as recorded there), for every string.

        dR (N,K) or (N,K*m) the reading's gradient; dalphaT (N,K) (``has_dalpha``)
        and dM (N,Lw+1,K,K) (``has_dM``) the gradients of alpha[T] and of the new
        column from later steps. Deferred pop-term adjoint of column T: rows
        ``adj_j..`` (push times, buffer index) from steps t' (buffer index) in
        ``[adj_lo, adj_hi)`` of DP (N,S,n,Q,n*K) and PH (N,S,n,Q,n,Q); this step's
        pop gradient and P̂ are stored in DP[:, :, tb] and PH[..., tb, :] at push
        time index jb. VRNS: dV (N,nv,m) gets the pushed vectors' gradients at
        index j0... Outputs: dE (N,K,A) (w.r.t. E), dcol (N,Lc,K,K), dalpha (N,K)
        (w.r.t. alpha[t]).
        """
        N, K, A = E.shape
        Q = A - 2 * K
        S = K // Q
        Lr = Lw - 1
        uK = np.uint64(K)
        dt = E.dtype
        W = np.empty((K, A), dt)
        dC = np.empty((Lw + 1, K, K), dt)
        dMe = np.empty((Lw + 1, K, K), dt)
        dW = np.empty((K, A), dt)
        da = np.empty(K, dt)
        dpop = np.empty((Q, max(Lr, 1) * K), dt)
        dPh = np.empty((S, Q, max(Lr, 1) * Q), dt)
        L3 = Lw + 1 - (adj_j - jb)   # deferred rows: push times adj_j..T (buffer index)
        accu = np.empty((Q, max(L3, 1) * K), dt)
        off = np.uint64(rb * K)
        adj = adj_hi > adj_lo
        zero = tiny - tiny
        one = tiny / tiny
        for i in range(N):
            s = s_in[i]
            rs = one / s
            for a in range(K):
                al = alpha[i, a]
                for e in range(A):
                    W[a, e] = al * E[i, a, e]
            for j in range(Lw + 1):
                for a in range(K):
                    for b in range(uK):
                        dC[j, a, b] = 0
            ds = zero
            if m > 0:
                for j in range(Lw + 1):
                    for b in range(K):
                        x = zero
                        for f in range(m):
                            x += dR[i, b * m + f] * vec[i, j, f]
                        x *= rs
                        for a in range(K):
                            dC[j, a, b] += x
                    for f in range(m):
                        x = zero
                        for b in range(K):
                            x += dR[i, b * m + f] * w[i, j, b]
                        dV[i, j0 + j, f] += x * rs
                x = zero
                for q in range(K * m):
                    x += dR[i, q] * reading[i, q]
                ds -= x * rs
                for b in range(K):
                    da[b] = dalphaT[i, b] if has_dalpha else zero
                hasa = has_dalpha
            else:
                for b in range(K):
                    da[b] = dR[i, b] + (dalphaT[i, b] if has_dalpha else zero)
                hasa = True
            # adjoint of the new column: from step T+1 (dM) plus the deferred pop-term uses
            has_m = has_dM or adj
            if has_m:
                for j in range(Lw + 1):
                    for a in range(K):
                        for b in range(uK):
                            dMe[j, a, b] = dM[i, j, a, b] if has_dM else zero
            if adj:
                aoff = np.uint64(adj_j * K)
                ln = np.uint64(L3 * K)
                for y in range(S):
                    for u in range(Q):
                        for e in range(ln):
                            accu[u, e] = 0
                    for tq in range(adj_lo, adj_hi):
                        for r in range(Q):
                            dprow = tq * Q + r
                            for u in range(Q):
                                p = PH[i, y, tb, u, tq, r]
                                for e in range(ln):
                                    accu[u, e] += p * DP[i, y, dprow, aoff + e]
                    jr = adj_j - jb
                    for j in range(L3):
                        for a in range(K):
                            for u in range(Q):
                                dMe[jr + j, a, u * S + y] += accu[u, j * K + a]
            if hasa:
                x = zero
                for b in range(K):
                    x += da[b] * alphaT[i, b]
                ds -= x * rs
                for b in range(K):
                    da[b] = da[b] * rs + ds
            else:
                for b in range(K):
                    da[b] = ds
            if has_m:
                for b in range(K):
                    x = zero
                    for j in range(Lw + 1):
                        for a in range(K):
                            x += dMe[j, a, b] * newcol[i, j, a, b]
                    if a_in[i, b] > tiny:
                        da[b] -= x / ahat[i, b]
                for j in range(Lw + 1):
                    for a in range(K):
                        for b in range(uK):
                            dC[j, a, b] += dMe[j, a, b] / ahat[i, b]
            rz = one / z0[i]
            for j in range(Lw + 1):
                for a in range(K):
                    for b in range(uK):
                        dC[j, a, b] = (dC[j, a, b] + da[b]) * rz
            # push, replace
            for a in range(K):
                for b in range(uK):
                    dW[a, b] = dC[Lw, a, b]
            for c in range(K):
                for e in range(K, A):
                    dW[c, e] = 0
            for j in range(d):
                for a in range(K):
                    for c in range(uK):
                        dcol[i, j, a, c] = 0
            for j in range(Lw):
                for a in range(K):
                    for c in range(K):
                        x = zero
                        y0 = col[i, d + j, a, c]
                        for b in range(uK):
                            g = dC[j, a, b]
                            x += g * W[c, uK + b]
                            dW[c, uK + b] += y0 * g
                        dcol[i, d + j, a, c] = x
            if Lr > 0:
                for y in range(S):
                    for j in range(Lr):  # dpop[r, (j,a)] = dC[j][a, (r,y)]
                        for a in range(K):
                            for r in range(Q):
                                dpop[r, j * K + a] = dC[j, a, r * S + y]
                    for c in range(Lr):
                        ln = np.uint64((c + 1) * K)
                        for u in range(Q):
                            row = (rb + c) * Q + u
                            for r in range(Q):
                                x = zero
                                for e in range(ln):
                                    x += dpop[r, e] * buf[i, y, row, off + e]
                                dPh[y, r, c * Q + u] = x
                    # store dpop_T and P̂_T for the deferred adjoint of the triangle
                    for r in range(Q):
                        for e in range(np.uint64(Lr * K)):
                            DP[i, y, tb * Q + r, np.uint64(jb * K) + e] = dpop[r, e]
                    for c in range(Lr):
                        for u in range(Q):
                            for r in range(Q):
                                PH[i, y, jb + c, u, tb, r] = PhT[i, y, r, c * Q + u]
                # P̂[c+1][(u,y), r] = sum_c' col[c+1][(u,y), c'] W[c', 2K + r]
                for c in range(Lr):
                    for u in range(Q):
                        for y in range(S):
                            ab = u * S + y
                            for cp in range(K):
                                x = zero
                                y0 = col[i, d + 1 + c, ab, cp]
                                for r in range(Q):
                                    g = dPh[y, r, c * Q + u]
                                    x += g * W[cp, 2 * K + r]
                                    dW[cp, 2 * K + r] += y0 * g
                                dcol[i, d + 1 + c, ab, cp] += x
            for a in range(K):
                x = zero
                al = alpha[i, a]
                for e in range(A):
                    g = dW[a, e]
                    x += g * E[i, a, e]
                    dE[i, a, e] = g * al
                dalpha[i, a] = x

    @njit(**_JIT)
    def _insert(col, r0, buf, tc, jc):
        """buf[:, y, tc, u, jc + j, a] = col[:, r0 + j, a, (u, y)] (column t of the triangle);
        buf as (N, S, cap, Q, cap*K)."""
        N, Lc, K, _ = col.shape
        S = buf.shape[1]
        Q = K // S
        for i in range(N):
            for j in range(Lc - r0):
                for a in range(K):
                    for u in range(Q):
                        for y in range(S):
                            buf[i, y, tc, u, (jc + j) * K + a] = col[i, r0 + j, a, u * S + y]


def usable(device, dtype) -> bool:
    """Whether the compiled step applies: Numba present, CPU, float32 / float64."""
    import torch

    on_cpu = device is None or torch.device(device).type == "cpu"
    return AVAILABLE and on_cpu and dtype in (torch.float32, torch.float64)
