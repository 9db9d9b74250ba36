r"""Compiled (Numba) form of one RNS / VRNS stack step, forward and backward.

The same step as the torch code of :class:`marnn.kernels.rns_tape.Tape`
(``forward_step`` / ``backward_step``, kept as the reference these kernels are
tested against), with the same tape state (the column ``col``, the deferred pop-term adjoint
``DP`` / ``PH``) except the triangle, which is packed (:func:`_row_start`:
each column's rows stored one after the other, only the push times still in
the window, so that the pop term's sweeps read memory in order), but each string
of the batch runs through the whole step inside one compiled function: no
per-operation dispatch, no permuting copies between the products, and the pop
term touches only the lower triangle ``j <= c`` of each symbol's block, one row
``(c, u)`` at a time, with that row's ``Q`` outputs accumulated in L1.

Notation (as in ``rns_tape.py``): ``N`` strings (replicas flattened), ``K = Q S``
configurations ``(state, top symbol)``, ``A = 2K + Q`` actions per configuration
(push | replace | pop), at step ``T = t + 1`` the push times ``[loT, t]``
(``Lw`` of them) of which ``Lr = Lw - 1`` have a pop term; ``col`` holds push
times ``[lo, t]`` (its first ``d = loT - lo`` rows leave the window).

Arithmetic: the same sums as the reference, in a fixed order per string
(deterministic; the only difference from torch is rounding). ``fastmath``
allows FMA contraction, and re-association only inside the dot products of
:func:`_tri_dots` (vector lanes; allowed everywhere it loses precision on
extreme logits: a float64 step differed from the reference by 1e-9 relative
after cancellations). The results are the same from run to run and do not
depend on how the strings are split over threads.

Array arguments are NumPy views of the tape's torch tensors (zero copy). Used
on the CPU for float32 / float64 when Numba is installed (``AVAILABLE``).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

try:  # optional: without Numba the torch reference runs
    from numba import njit
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba
    AVAILABLE = False

if AVAILABLE:
    _JIT: dict[str, Any] = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    # dot products only: re-association lets LLVM keep the partial sums in vector lanes (15x faster
    # than one scalar chain); a dot's value changes only by its summation order
    _DOT: dict[str, Any] = dict(_JIT, fastmath={"contract", "reassoc"})

    @njit(inline="always", **_JIT)
    def _row_start(roff, rj0, pbase, loT, c, u, K, Q):
        """Start of row (c, u) of the packed triangle from push time loT on (c relative to loT).

        Packed layout: row block of push time ``ca`` (absolute; index ``ca - pbase`` in the row
        table) at ``roff``, holding push times ``j >= rj0`` (``ln = ca - rj0 + 1`` of them) for
        each u: element (u, j, a) at ``roff + (u*ln + j - rj0)*K + a``. Rows are appended as
        the columns arrive, so a sweep over the triangle reads memory in order."""
        ri = loT + c - pbase
        j0 = rj0[ri]
        lenc = loT + c - j0 + 1
        return np.uint64(roff[ri] + (u * lenc + loT - j0) * K)

    @njit(**_JIT)
    def _forward(E, alpha, col, d, pk, roff, rj0, pbase, loT, Lw, Cre, vec_old, v, m, newcol, a_out, s_out, z0_out,
                 alphaT, ahat,
                 PhT, w, vec_new, reading, tiny):
        """One step for every string.

        Inputs: E (N,K,A) weights, alpha (N,K), col (N,Lc,K,K) (rows d.. are push
        times loT..t), the packed triangle pk (N,S,P) with its row table roff / rj0 / pbase
        (see :func:`_row_start`), vec_old (N,Lc,m) and v (N,m) (VRNS, m > 0). Cre (N,Lw,K,K):
        the replace term col[j] @ Wre, when computed outside (a batched GEMM; an empty
        array: computed here); then PhT is given too (an input).
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
        zero = tiny - tiny  # 0 and 1 in the arrays' dtype (a float literal would promote float32 sums)
        one = tiny / tiny
        for i in range(N):
            for a in range(K):
                al = alpha[i, a]
                for e in range(A):
                    W[a, e] = al * E[i, a, e]
            C = newcol[i]  # built in place: C, then C / Z0, then C / ahat
            if Cre.shape[0] == N:  # replace term given
                for j in range(Lw):
                    for a in range(K):
                        for b in range(uK):
                            C[j, a, b] = Cre[i, j, a, b]
            else:
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
                # P̂[c+1][(u,y), r] = sum_c' col[c+1][(u,y), c'] Wpop[c', r] (unless given, with Cre)
                for c in range(Lr if Cre.shape[0] != N else 0):
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
                            st = _row_start(roff, rj0, pbase, loT, c, u, K, Q)
                            for r in range(Q):
                                p = PhT[i, y, r, c * Q + u]
                                for e in range(ln):
                                    acc[r, e] += p * pk[i, y, st + e]
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

    @njit(**_DOT)
    def _tri_dots(dpop, pk, roff, rj0, pbase, loT, i, y, Lr, K, Q, dPh, zero):
        """dPh[y, r, c*Q+u] = sum_{j <= c, a} dpop[r, (j,a)] tri[y][(c,u), (j,a)] (rows of the triangle
        dotted with the Q rows of dpop; the only re-associated sums: each dot in vector lanes)."""
        for c in range(Lr):
            ln = np.uint64((c + 1) * K)
            for u in range(Q):
                st = _row_start(roff, rj0, pbase, loT, c, u, K, Q)
                for r in range(Q):
                    x = zero
                    for e in range(ln):
                        x += dpop[r, e] * pk[i, y, st + e]
                    dPh[y, r, c * Q + u] = x

    @njit(**_JIT)
    def _backward(E, alpha, col, d, pk, roff, rj0, pbase, loT, Lw, PhT, z0, a_in, s_in, alphaT, ahat, newcol, vec,
                  w, reading, m, dR, dalphaT, has_dalpha, dM, has_dM, DP, doff, dj0, dlen, PH, tb, jb, adj_lo,
                  adj_hi, adj_j, dV, j0,
                  dE, dcol, dalpha, dCout, tiny):
        """Reverse of :func:`_forward` at step T (same arrays as recorded there), for every string.

        dR (N,K) or (N,K*m) the reading's gradient; dalphaT (N,K) (``has_dalpha``)
        and dM (N,Lw+1,K,K) (``has_dM``) the gradients of alpha[T] and of the new
        column from later steps. Deferred pop-term adjoint of column T: rows
        ``adj_j..`` (push times, buffer index) from steps t' (buffer index) in
        ``[adj_lo, adj_hi)`` of DP and PH (N,S,n,Q,n,Q); this step's pop gradient and
        P̂ are stored in DP's row block ``tb`` and PH[..., tb, :] at push time index jb.
        DP (N,S,P) is packed: row block of step index tq at ``doff[tq]``, Q rows (r) of
        ``dlen[tq]`` push times from index ``dj0[tq]``, K numbers each (the blocks in
        the order the backward pass writes them, so a step's reads are one sweep).
        VRNS: dV (N,nv,m) gets the pushed vectors' gradients from index j0 on.
        Outputs: dE (N,K,A) (w.r.t. E), dcol (N,Lc,K,K), dalpha (N,K)
        (w.r.t. alpha[t]). dCout (N,Lw,K,K), unless empty: the replace term's adjoint
        goes there instead, and its products (dcol += dCout @ Wre^T, the replace part
        of dE and dalpha) are the caller's.
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
        WreT = np.empty((K, K), dt)
        dWre = np.empty((K, K), dt)
        da = np.empty(K, dt)
        dpop = np.empty((Q, max(Lr, 1) * K), dt)
        dPh = np.empty((S, Q, max(Lr, 1) * Q), dt)
        L3 = Lw + 1 - (adj_j - jb)   # deferred rows: push times adj_j..T (buffer index)
        accu = np.empty((Q, max(L3, 1) * K), dt)
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
                ln = np.uint64(L3 * K)
                for y in range(S):
                    for u in range(Q):
                        for e in range(ln):
                            accu[u, e] = 0
                    for tq in range(adj_lo, adj_hi):
                        j0q = dj0[tq]
                        jlo = max(adj_j, j0q)  # push times before the window of step tq: zero there
                        cnt = np.uint64((tb - jlo + 1) * K)
                        dst = np.uint64((jlo - adj_j) * K)
                        for r in range(Q):
                            src = np.uint64(doff[tq] + (r * dlen[tq] + jlo - j0q) * K)
                            for u in range(Q):
                                p = PH[i, y, tb, u, tq, r]
                                for e in range(cnt):
                                    accu[u, dst + e] += p * DP[i, y, src + e]
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
            for c in range(K):  # WreT[b, c] = W[c, K + b]; dWre (K, K)
                for b in range(K):
                    WreT[b, c] = W[c, K + b]
                    dWre[c, b] = 0
            gemm = dCout.shape[0] == N  # replace products left to the caller (batched GEMMs on dCout)
            for j in range(Lw):  # dcol[j] = dC[j] @ Wre^T, dWre += col[j]^T @ dC[j] (contiguous inner loops)
                for a in range(K):
                    for c in range(uK):
                        dcol[i, d + j, a, c] = 0
                    if gemm:
                        for b in range(uK):
                            dCout[i, j, a, b] = dC[j, a, b]
                        continue
                    for b in range(K):
                        g = dC[j, a, b]
                        for c in range(uK):
                            dcol[i, d + j, a, c] += g * WreT[b, c]
                    for c in range(K):
                        y0 = col[i, d + j, a, c]
                        for b in range(uK):
                            dWre[c, b] += y0 * dC[j, a, b]
            for c in range(K):
                for b in range(K):
                    dW[c, K + b] = dWre[c, b]
            if Lr > 0:
                for y in range(S):
                    for j in range(Lr):  # dpop[r, (j,a)] = dC[j][a, (r,y)]
                        for a in range(K):
                            for r in range(Q):
                                dpop[r, j * K + a] = dC[j, a, r * S + y]
                    _tri_dots(dpop, pk, roff, rj0, pbase, loT, i, y, Lr, K, Q, dPh, zero)
                    # store dpop_T and P̂_T for the deferred adjoint of the triangle
                    for r in range(Q):
                        o = np.uint64(doff[tb] + r * Lr * K)
                        for e in range(np.uint64(Lr * K)):
                            DP[i, y, o + e] = dpop[r, e]
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
    def _pk_insert(col, r0, pk, off, ln):
        """Append column t of the triangle as one packed row block at ``off``:
        pk[:, y, off + (u*ln + j)*K + a] = col[:, r0 + j, a, (u, y)], j < ln."""
        N, _, K, _ = col.shape
        S = pk.shape[1]
        Q = K // S
        for i in range(N):
            for y in range(S):
                for u in range(Q):
                    for j in range(ln):
                        o = off + (u * ln + j) * K
                        for a in range(K):
                            pk[i, y, o + a] = col[i, r0 + j, a, u * S + y]

    @njit(**_JIT)
    def _pk_copy(src, roff, rj0, pbase, c0, c1, jlo, dst, droff, drj0, K):
        """Rows c in [c0, c1) of a packed triangle, restricted to push times j >= jlo (or their own
        first, if later), one after
        the other into ``dst`` (row table droff / drj0 from index 0); returns the elements used."""
        N, S, _ = src.shape
        Q = K // S
        o = 0
        for c in range(c0, c1):
            ri = c - pbase
            j0 = rj0[ri]
            jl = max(jlo, j0)
            lenc = c - j0 + 1
            ln = c - jl + 1
            droff[c - c0] = o
            drj0[c - c0] = jl
            for i in range(N):
                for y in range(S):
                    for u in range(Q):
                        a0 = roff[ri] + (u * lenc + jl - j0) * K
                        b0 = o + u * ln * K
                        for e in range(ln * K):
                            dst[i, y, b0 + e] = src[i, y, a0 + e]
            o += Q * ln * K
        return o


def _positions(kernel, names: str) -> frozenset:
    params = list(inspect.signature(kernel.py_func).parameters)
    return frozenset(params.index(n) for n in names.split())


if AVAILABLE:
    # the per-string arguments (first axis N): a block of strings is these sliced, the rest as is
    FORWARD_ROWS = _positions(_forward, "E alpha col pk Cre vec_old v newcol a_out s_out z0_out alphaT ahat PhT w "
                                        "vec_new reading")
    BACKWARD_ROWS = _positions(_backward, "E alpha col pk PhT z0 a_in s_in alphaT ahat newcol vec w reading dR "
                                          "dalphaT dM DP PH dV dE dcol dalpha dCout")


def usable(device, dtype) -> bool:
    """Whether the compiled step applies: Numba present, CPU, float32 / float64."""
    import torch

    on_cpu = device is None or torch.device(device).type == "cpu"
    return AVAILABLE and on_cpu and dtype in (torch.float32, torch.float64)
