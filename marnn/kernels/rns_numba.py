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

The three O(L^2) sweeps are written as llvmlite intrinsics (like the tiles of
:mod:`marnn.kernels.fused_lstm_numba`). At the grid's sizes (a group of 12
replicas x 10 strings, or 32 PTB streams) the triangles of all strings (~0.6-1 MB
each) no longer fit in the caches between two steps, so these sweeps are bound by
memory traffic rather than arithmetic, and they read their rows once each, front
to back (:func:`_make_sweep`): the pop term takes the Q rows (c, u) of one c side
by side over their whole length, adding into its Q rows of sums (in L1), and each
row is followed by ``PAD`` zeros, so a vector may run past a row's end; the
deferred adjoint does the same over the stored rows (t', r) of ``DP``; and the
gradient of ``P̂`` dots the Q rows (c, u) of one c with the Q rows of the
pop-term gradient at once (:func:`_make_dots_tile`). The pop term and the
deferred adjoint add their terms in the order of the loops they replace (the
same numbers). Walking a block of 32 columns down all the rows instead (the sums
in registers, :func:`_make_rows_tile`, still used for the short products) read
128 bytes from rows a kilobyte or more apart, and took 10-20% longer.

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

PAD = 8  # zeros after every row of the packed triangle: one vector may run past its end

try:  # optional: without Numba the torch reference runs
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba
    AVAILABLE = False

if AVAILABLE:
    _JIT: dict[str, Any] = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    # dot products only: re-association lets LLVM keep the partial sums in vector lanes (15x faster
    # than one scalar chain); a dot's value changes only by its summation order
    _DOT: dict[str, Any] = dict(_JIT, fastmath={"contract", "reassoc"})
    _LANES = 8  # numbers per vector register in the tiles (float32: ymm; float64: two)
    _BLOCK = 4 * _LANES  # columns of the widest tile

    def _ptr(context, builder, sig, args, k):
        return context.make_array(sig.args[k])(context, builder, args[k]).data

    def _vec(builder, base, off, vt):
        ptr = builder.gep(base, [off])
        return builder.bitcast(ptr, vt.as_pointer()) if isinstance(vt, ir.VectorType) else ptr

    def _fma(builder, vt, et):
        suffix = "f32" if et == ir.FloatType() else "f64"
        name = f"llvm.fmuladd.v{vt.count}{suffix}" if isinstance(vt, ir.VectorType) else f"llvm.fmuladd.{suffix}"
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)

    def _splat(builder, x, vt):
        if not isinstance(vt, ir.VectorType):
            return x
        i32 = ir.IntType(32)
        x = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
        return builder.shuffle_vector(x, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, vt.count), [0] * vt.count))

    def _counted_loop(builder, n, name, carried, body):
        """``for k in range(n)`` with the values ``carried`` (a flat list) updated by ``body(k,
        values) -> values``; returns their final values (the initial ones when n <= 0)."""
        i64 = ir.IntType(64)
        entry = builder.block
        loop = builder.append_basic_block(f"{name}.loop")
        done = builder.append_basic_block(f"{name}.done")
        builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        cur = [builder.phi(v.type) for v in carried]
        new = body(k, cur)
        kn = builder.add(k, ir.Constant(i64, 1))
        end = builder.block
        k.add_incoming(ir.Constant(i64, 0), entry)
        k.add_incoming(kn, end)
        for c, v0, v1 in zip(cur, carried, new, strict=True):
            c.add_incoming(v0, entry)
            c.add_incoming(v1, end)
        builder.cbranch(builder.icmp_signed("<", kn, n), loop, done)
        builder.position_at_end(done)
        out = [builder.phi(v.type) for v in carried]
        for o, v0, v1 in zip(out, carried, new, strict=True):
            o.add_incoming(v0, entry)
            o.add_incoming(v1, end)
        return out

    def _make_rows_tile(rows, nv, lanes):
        """Intrinsic ``tile(Acc, ao, lda, P, po, ldp, X, R, ro, xo, n)``: for the ``rows`` rows r and
        the ``nv * lanes`` columns e of one block (flat offsets into C-contiguous arrays),
        ``Acc[ao + r lda + e] += sum_k P[po + r ldp + k] X[R[ro + k] + xo + e]``, k = 0, ..., n - 1
        in that order, one fused multiply-add per term (``llvm.fmuladd``, what ``contract``
        makes of ``acc += p * x``): the numbers of the loop ``for k: for r: for e: Acc[r, e] +=
        P[r, k] X[k, e]``, but with the ``rows * nv`` accumulators in vector registers across the
        sum and each vector of X loaded once for all rows. Row k of X starts at ``R[ro + k] + xo``."""
        @intrinsic
        def tile(typingctx, Acc, ao, lda, P, po, ldp, X, R, ro, xo, n):
            def codegen(context, builder, sig, args):
                ap, pp, xp, rp = (_ptr(context, builder, sig, args, k) for k in (0, 3, 6, 7))
                ao, lda, po, ldp, ro, xo, n = (args[k] for k in (1, 2, 4, 5, 8, 9, 10))
                et = context.get_data_type(sig.args[0].dtype)
                vt = ir.VectorType(et, lanes) if lanes > 1 else et
                fma = _fma(builder, vt, et)
                i64 = ir.IntType(64)

                def const(v):
                    return ir.Constant(i64, v)
                optr = [_vec(builder, ap, builder.add(builder.add(ao, builder.mul(const(r), lda)),
                                                      const(lanes * v)), vt)
                        for r in range(rows) for v in range(nv)]
                init = [builder.load(q, align=4) for q in optr]

                def body(k, acc):
                    off = builder.add(builder.load(builder.gep(rp, [builder.add(ro, k)])), xo)
                    xs = [builder.load(_vec(builder, xp, builder.add(off, const(lanes * v)), vt), align=4)
                          for v in range(nv)]
                    new = []
                    for r in range(rows):
                        p = builder.load(builder.gep(pp, [builder.add(builder.add(po, builder.mul(const(r), ldp)), k)]))
                        p = _splat(builder, p, vt)
                        new += [builder.call(fma, [p, xs[v], acc[r * nv + v]]) for v in range(nv)]
                    return new
                out = _counted_loop(builder, n, "tile", init, body)
                for q, v in zip(optr, out, strict=True):
                    builder.store(v, q, align=4)
                return context.get_dummy_value()
            i = types.int64
            return types.void(Acc, i, i, P, i, i, X, R, i, i, i), codegen
        return tile

    def _make_dots_tile(rows, lanes):
        """Intrinsic ``dots(Out, oo, ldo, D, do, ldd, X, R, ro, xo, L)``: for r, u < ``rows``,
        ``Out[oo + r ldo + u] = sum_{e < L} D[do + r ldd + e] X[R[ro + u] + xo + e]`` (L a multiple
        of ``lanes``): each row of X loaded once for all rows of D, the ``rows^2`` sums in vector
        lanes (then added across the lanes: a re-associated sum, like the loop it replaces)."""
        @intrinsic
        def dots(typingctx, Out, oo, ldo, D, do, ldd, X, R, ro, xo, L):
            def codegen(context, builder, sig, args):
                op, dp, xp, rp = (_ptr(context, builder, sig, args, k) for k in (0, 3, 6, 7))
                oo, ldo, do, ldd, ro, xo, L = (args[k] for k in (1, 2, 4, 5, 8, 9, 10))
                et = context.get_data_type(sig.args[0].dtype)
                vt = ir.VectorType(et, lanes)
                fma = _fma(builder, vt, et)
                i64 = ir.IntType(64)

                def const(v):
                    return ir.Constant(i64, v)
                xrow = [builder.add(builder.load(builder.gep(rp, [builder.add(ro, const(u))])), xo)
                        for u in range(rows)]
                drow = [builder.add(do, builder.mul(const(r), ldd)) for r in range(rows)]
                zero = ir.Constant(vt, [ir.Constant(et, 0.0)] * lanes)

                def body(k, acc):
                    e = builder.mul(k, const(lanes))
                    xs = [builder.load(_vec(builder, xp, builder.add(xrow[u], e), vt), align=4) for u in range(rows)]
                    ds = [builder.load(_vec(builder, dp, builder.add(drow[r], e), vt), align=4) for r in range(rows)]
                    return [builder.call(fma, [ds[r], xs[u], acc[r * rows + u]])
                            for r in range(rows) for u in range(rows)]
                nk = builder.sdiv(L, const(lanes))
                out = _counted_loop(builder, nk, "dots", [zero] * (rows * rows), body)
                i32 = ir.IntType(32)
                for r in range(rows):
                    for u in range(rows):
                        v, w = out[r * rows + u], lanes
                        while w > 1:  # pairwise across the lanes
                            w //= 2
                            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, w), list(range(w, 2 * w))))
                            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, w), list(range(w))))
                            v = builder.fadd(lo, hi) if w > 1 else builder.fadd(
                                builder.extract_element(lo, const(0)), builder.extract_element(hi, const(0)))
                        dst = builder.gep(op, [builder.add(builder.add(oo, builder.mul(const(r), ldo)), const(u))])
                        builder.store(v, dst)
                return context.get_dummy_value()
            i = types.int64
            return types.void(Out, i, i, D, i, i, X, R, i, i, i), codegen
        return dots

    def _make_rows_acc(rows):
        """``acc(Acc, ao, lda, P, po, ldp, X, R, ro, xo, n, width)``: :func:`_make_rows_tile`'s sum for
        the columns e < width: blocks of 4, then 1 vectors, then single columns."""
        wide, one, single = (_make_rows_tile(rows, nv, ln) for nv, ln in ((4, _LANES), (1, _LANES), (1, 1)))

        @njit(inline="always", **_JIT)
        def acc(Acc, ao, lda, P, po, ldp, X, R, ro, xo, n, width):
            e = 0
            while e + 4 * _LANES <= width:
                wide(Acc, ao + e, lda, P, po, ldp, X, R, ro, xo + e, n)
                e += 4 * _LANES
            while e + _LANES <= width:
                one(Acc, ao + e, lda, P, po, ldp, X, R, ro, xo + e, n)
                e += _LANES
            while e < width:
                single(Acc, ao + e, lda, P, po, ldp, X, R, ro, xo + e, n)
                e += 1
        return acc

    _acc1, _acc2, _acc3, _acc4 = (_make_rows_acc(r) for r in (1, 2, 3, 4))

    def _make_sweep(nr, nu, lanes):
        """Intrinsic ``sweep(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width)``: the sum of
        :func:`_make_rows_tile` for ``nr`` rows r and ``nu`` rows k of X, but over the whole width at
        once: each row k (from ``R[ro + k] + xo``) is read once from front to back, and for every
        column e < width, ``Acc[ao + r lda + e] += P[po + r ldp + k] X[R[ro + k] + xo + e]`` for
        k = 0, ..., nu - 1 in that order (fused multiply-adds; ``lanes`` columns at a time, then
        single ones). Acc stays in memory (L1): the rows are streamed instead of revisited."""
        @intrinsic
        def sweep(typingctx, Acc, ao, lda, P, po, ldp, X, R, ro, xo, width):
            def codegen(context, builder, sig, args):
                ap, pp, xp, rp = (_ptr(context, builder, sig, args, k) for k in (0, 3, 6, 7))
                ao, lda, po, ldp, ro, xo, width = (args[k] for k in (1, 2, 4, 5, 8, 9, 10))
                et = context.get_data_type(sig.args[0].dtype)
                i64 = ir.IntType(64)

                def const(v):
                    return ir.Constant(i64, v)
                xrow = [builder.add(builder.load(builder.gep(rp, [builder.add(ro, const(u))])), xo)
                        for u in range(nu)]
                arow = [builder.add(ao, builder.mul(const(r), lda)) for r in range(nr)]
                ps = [[builder.load(builder.gep(pp, [builder.add(builder.add(po, builder.mul(const(r), ldp)),
                                                                 const(u))])) for u in range(nu)] for r in range(nr)]

                def run(vt, w, e0):
                    fma = _fma(builder, vt, et)
                    pv = [[_splat(builder, p, vt) for p in row] for row in ps]

                    def body(k, carried):
                        e = builder.add(e0, builder.mul(k, const(w)))
                        xs = [builder.load(_vec(builder, xp, builder.add(xrow[u], e), vt), align=4)
                              for u in range(nu)]
                        for r in range(nr):
                            q = _vec(builder, ap, builder.add(arow[r], e), vt)
                            a = builder.load(q, align=4)
                            for u in range(nu):
                                a = builder.call(fma, [pv[r][u], xs[u], a])
                            builder.store(a, q, align=4)
                        return carried
                    return body
                nv = builder.sdiv(width, const(lanes))
                _counted_loop(builder, nv, "sweep", [], run(ir.VectorType(et, lanes), lanes, const(0)))
                e1 = builder.mul(nv, const(lanes))
                _counted_loop(builder, builder.sub(width, e1), "sweep1", [], run(et, 1, e1))
                return context.get_dummy_value()
            i = types.int64
            return types.void(Acc, i, i, P, i, i, X, R, i, i, i), codegen
        return sweep

    def _make_sweep_rows(nr):
        """``sweep(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nu)``: :func:`_make_sweep` for ``nr``
        rows of sums and any ``nu <= 4``."""
        s1, s2, s3, s4 = (_make_sweep(nr, u, _LANES) for u in (1, 2, 3, 4))

        @njit(inline="always", **_JIT)
        def sweep(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nu):
            if nu == 4:
                s4(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width)
            elif nu == 3:
                s3(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width)
            elif nu == 2:
                s2(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width)
            else:
                s1(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width)
        return sweep

    _sweep1, _sweep2, _sweep3, _sweep4 = (_make_sweep_rows(r) for r in (1, 2, 3, 4))

    @njit(inline="always", **_JIT)
    def _sweep(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nr, nu):
        """:func:`_make_sweep` for nr, nu <= 4."""
        if nr == 4:
            _sweep4(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nu)
        elif nr == 3:
            _sweep3(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nu)
        elif nr == 2:
            _sweep2(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nu)
        else:
            _sweep1(Acc, ao, lda, P, po, ldp, X, R, ro, xo, width, nu)

    @njit(**_JIT)
    def _rows_seq(Acc, ao, lda, P, po, ldp, X, R, ro, xo, n, width, rows, group):
        """The sum of :func:`_rows_acc` (the same numbers: k ascending for every element), with the
        rows of X streamed ``group`` (<= 4) at a time over the whole width (:func:`_make_sweep`)."""
        for k0 in range(0, n, group):
            nu = min(group, n - k0)
            for r0 in range(0, rows, 4):
                _sweep(Acc, ao + r0 * lda, lda, P, po + r0 * ldp + k0, ldp, X, R, ro + k0, xo, width,
                       min(4, rows - r0), nu)

    _dots1, _dots2, _dots3, _dots4 = (_make_dots_tile(r, _LANES) for r in (1, 2, 3, 4))

    @njit(**_JIT)
    def _rows_acc(Acc, ao, lda, P, po, ldp, X, R, ro, xo, n, width, rows):
        """``Acc[ao + r lda + e] += sum_{k < n} P[po + r ldp + k] X[R[ro + k] + xo + e]`` for r < rows,
        e < width, k ascending with fused multiply-adds (register tiles of up to 4 rows)."""
        r0 = 0
        while r0 < rows:
            q = min(4, rows - r0)
            a, p = ao + r0 * lda, po + r0 * ldp
            if q == 3:
                _acc3(Acc, a, lda, P, p, ldp, X, R, ro, xo, n, width)
            elif q == 4:
                _acc4(Acc, a, lda, P, p, ldp, X, R, ro, xo, n, width)
            elif q == 2:
                _acc2(Acc, a, lda, P, p, ldp, X, R, ro, xo, n, width)
            else:
                _acc1(Acc, a, lda, P, p, ldp, X, R, ro, xo, n, width)
            r0 += q

    @njit(inline="always", **_JIT)
    def _row_start(roff, rj0, pbase, loT, c, u, K, Q):
        """Start of row (c, u) of the packed triangle from push time loT on (c relative to loT).

        Packed layout: row block of push time ``ca`` (absolute; index ``ca - pbase`` in the row
        table) at ``roff``, holding push times ``j >= rj0`` (``ln = ca - rj0 + 1`` of them) for
        each u, each row followed by ``PAD`` zeros: element (u, j, a) at
        ``roff + u*(ln*K + PAD) + (j - rj0)*K + a``. Rows are appended as the columns arrive,
        so a sweep over the triangle reads memory in order; the zeros let a vector run past
        a row's end."""
        ri = loT + c - pbase
        j0 = rj0[ri]
        lenc = loT + c - j0 + 1
        return np.uint64(roff[ri] + u * (lenc * K + PAD) + (loT - j0) * K)

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
        wa = -(-max(Lr * K, 1) // _LANES) * _LANES  # whole vectors
        uwa = np.uint64(wa)
        acc = np.empty((Q, wa), dt)
        LrQ = Lr * Q
        P = pk.shape[2]
        Lc = col.shape[1]
        wre = np.empty(K, np.int64)  # rows c of W's replace and pop blocks (flat offsets)
        wpo = np.empty(K, np.int64)
        for c in range(K):
            wre[c] = c * A + K
            wpo[c] = c * A + 2 * K
        ph = np.empty(max(Lr * K * Q, 1), dt)  # P̂[c+1][(u,y), r] at ((c K + u S + y) Q + r)
        rows = np.empty(max(LrQ, 1), np.int64)  # start of row (c, u) of the triangle (the same for every string)
        for c in range(Lr):
            for u in range(Q):
                rows[c * Q + u] = _row_start(roff, rj0, pbase, loT, c, u, K, Q)
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
            else:  # replace: C[j] = col[j] @ Wre, rows (j, a) by register tiles (c ascending)
                for j in range(Lw):
                    for a in range(K):
                        for b in range(uK):
                            C[j, a, b] = 0
                _rows_acc(newcol, i * (Lw + 1) * K * K, K, col, (i * Lc + d) * K * K, K, W, wre, 0, 0, K, K,
                          Lw * K)
            for a in range(K):  # push at time T
                for b in range(uK):
                    C[Lw, a, b] = W[a, b]
            if Lr > 0:
                # P̂[c+1][(u,y), r] = sum_c' col[c+1][(u,y), c'] Wpop[c', r] (unless given, with Cre):
                # rows (c, u, y) by register tiles (c' ascending), then into PhT's layout
                if Cre.shape[0] != N:
                    for e in range(Lr * K * Q):
                        ph[e] = 0
                    _rows_acc(ph, 0, Q, col, (i * Lc + d + 1) * K * K, K, W, wpo, 0, 0, K, Q, Lr * K)
                    for c in range(Lr):
                        for u in range(Q):
                            for y in range(S):
                                for r in range(Q):
                                    PhT[i, y, r, c * Q + u] = ph[(c * K + u * S + y) * Q + r]
                # pop: C[j][a, (r,y)] += sum_{c >= j, u} tri[y][(c,u), (j,a)] P̂[c+1][(u,y), r], summed
                # over (c, u) ascending: the triangle read once, in memory order, the Q rows (c, u) of
                # one c side by side over their whole length (row (c, u) reaches column e iff
                # (c + 1) K > e; whole vectors, so a row's last one runs into its zeros)
                for y in range(S):
                    for r in range(Q):
                        for e in range(uwa):
                            acc[r, e] = 0
                    xb = (i * S + y) * P
                    pb = (i * S + y) * Q * LrQ
                    for c in range(Lr):
                        _rows_seq(acc, 0, wa, PhT, pb + c * Q, LrQ, pk, rows, c * Q, xb,
                                  Q, -(-((c + 1) * K) // _LANES) * _LANES, Q, 4)
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
    def _tri_dots_tiled(dpop, pk, rows, xb, Lr, K, Q, dPh, ob, LrQ):
        """:func:`_tri_dots` by tiles (Q <= 4; ``dpop`` zero past column Lr K, ``rows`` the row
        starts, ``xb`` / ``ob`` the flat offsets of pk[i, y] / dPh[y]): the Q rows (c, u) of one c
        dotted with the Q rows of dpop over whole vectors (the rows' zeros fill the last one)."""
        wd = dpop.shape[1]
        for c in range(Lr):
            L = min(-(-(c + 1) * K // _LANES) * _LANES, wd)
            if Q == 3:
                _dots3(dPh, ob + c * Q, LrQ, dpop, 0, wd, pk, rows, c * Q, xb, L)
            elif Q == 2:
                _dots2(dPh, ob + c * Q, LrQ, dpop, 0, wd, pk, rows, c * Q, xb, L)
            elif Q == 4:
                _dots4(dPh, ob + c * Q, LrQ, dpop, 0, wd, pk, rows, c * Q, xb, L)
            else:
                _dots1(dPh, ob + c * Q, LrQ, dpop, 0, wd, pk, rows, c * Q, xb, L)

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
                  dE, dcol, dalpha, dCout, dPhOut, tiny):
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
        of dE and dalpha) are the caller's; so are then P̂'s (dPhOut (N,S,Q,Lr*Q) gets the
        gradient of PhT, and the pop part of dE, dalpha and dcol is left out).
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
        xs = np.empty(K, dt)
        wd = -(-max(Lr * K, 1) // _LANES) * _LANES  # dpop's rows: whole vectors, zeros past column Lr K
        dpop = np.zeros((Q, wd), dt)
        Lc = col.shape[1]
        colT = np.empty((K, Lw * K), dt)  # a string's columns [d, d + Lw) transposed
        dPhat = np.empty(max(Lr * K * Q, 1), dt)
        WpoT = np.empty((Q, K), dt)
        nk = max(Lw * K, K)
        kK = np.arange(nk) * K  # row k of a flat (., K) array
        kQ = np.arange(nk) * Q
        LrQ = Lr * Q
        P = pk.shape[2]
        rows = np.empty(max(LrQ, 1), np.int64)  # start of row (c, u) of the triangle
        for c in range(Lr):
            for u in range(Q):
                rows[c * Q + u] = _row_start(roff, rj0, pbase, loT, c, u, K, Q)
        dPh = np.empty((S, Q, max(Lr, 1) * Q), dt)
        L3 = Lw + 1 - (adj_j - jb)   # deferred rows: push times adj_j..T (buffer index)
        accu = np.empty((Q, max(L3, 1) * K), dt)
        adj = adj_hi > adj_lo
        n_ph = PH.shape[2]
        PD = DP.shape[2]
        t_full = adj_lo  # steps t' in [adj_lo, t_full) hold dpop for every push time from adj_j on
        while t_full < adj_hi and dj0[t_full] <= adj_j:
            t_full += 1
        qrows = np.empty(Q, np.int64)
        drows = np.empty(max((t_full - adj_lo) * Q, 1), np.int64)  # start of row (t', r) at push time adj_j
        for tq in range(adj_lo, t_full):
            for r in range(Q):
                drows[(tq - adj_lo) * Q + r] = doff[tq] + (r * dlen[tq] + adj_j - dj0[tq]) * K
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
                    # steps whose rows cover all push times adj_j..tb: tiles over (t', r) ascending
                    phb = ((i * S + y) * n_ph + tb) * Q * n_ph * Q
                    _rows_seq(accu, 0, accu.shape[1], PH, phb + adj_lo * Q, n_ph * Q, DP, drows, 0,
                              (i * S + y) * PD, (t_full - adj_lo) * Q, L3 * K, Q, 4)
                    for tq in range(t_full, adj_hi):  # later ones (windowed): their rows start later
                        j0q = dj0[tq]
                        jlo = max(adj_j, j0q)  # push times before the window of step tq: zero there
                        for r in range(Q):
                            qrows[r] = doff[tq] + (r * dlen[tq] + jlo - j0q) * K
                        _rows_seq(accu, (jlo - adj_j) * K, accu.shape[1], PH, phb + tq * Q, n_ph * Q, DP, qrows, 0,
                                  (i * S + y) * PD, Q, (tb - jlo + 1) * K, Q, 4)
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
                for b in range(K):  # xs[b] = sum_{j, a} dMe[j, a, b] newcol[j, a, b], (j, a) ascending:
                    xs[b] = zero    # the K sums side by side (not K chains of dependent additions)
                for j in range(Lw + 1):
                    for a in range(K):
                        for b in range(uK):
                            xs[b] += dMe[j, a, b] * newcol[i, j, a, b]
                for b in range(K):
                    if a_in[i, b] > tiny:
                        da[b] -= xs[b] / ahat[i, b]
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
            for j in range(Lw):
                for a in range(K):
                    for c in range(uK):
                        dcol[i, d + j, a, c] = 0
                    if gemm:
                        for b in range(uK):
                            dCout[i, j, a, b] = dC[j, a, b]
            if not gemm:  # dcol[j] = dC[j] @ Wre^T, dWre += col[j]^T @ dC[j]: register tiles, sums in order
                _rows_acc(dcol, (i * Lc + d) * K * K, K, dC, 0, K, WreT, kK, 0, 0, K, K, Lw * K)
                for j in range(Lw):  # colT[c, (j, a)] = col[j][a, c]
                    for a in range(K):
                        for c in range(K):
                            colT[c, j * K + a] = col[i, d + j, a, c]
                _rows_acc(dWre, 0, K, colT, 0, Lw * K, dC, kK, 0, 0, Lw * K, K, K)
            for c in range(K):
                for b in range(K):
                    dW[c, K + b] = dWre[c, b]
            if Lr > 0:
                for y in range(S):
                    for j in range(Lr):  # dpop[r, (j,a)] = dC[j][a, (r,y)]
                        for a in range(K):
                            for r in range(Q):
                                dpop[r, j * K + a] = dC[j, a, r * S + y]
                    if Q <= 4:
                        _tri_dots_tiled(dpop, pk, rows, (i * S + y) * P, Lr, K, Q, dPh, y * Q * LrQ, LrQ)
                    else:
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
                if gemm:  # P̂'s products left to the caller too: dPh handed over
                    for y in range(S):
                        for r in range(Q):
                            for e in range(np.uint64(LrQ)):
                                dPhOut[i, y, r, e] = dPh[y, r, e]
                # P̂[c+1][(u,y), r] = sum_c' col[c+1][(u,y), c'] W[c', 2K + r]: with dPhat[(c, u, y), r] its
                # gradient, dcol[c+1] += dPhat Wpo^T and dWpo += col[c+1]^T dPhat (register tiles)
                if not gemm:
                    for c in range(Lr):
                        for u in range(Q):
                            for y in range(S):
                                for r in range(Q):
                                    dPhat[((c * Q + u) * S + y) * Q + r] = dPh[y, r, c * Q + u]
                    for r in range(Q):
                        for cp in range(K):
                            WpoT[r, cp] = W[cp, 2 * K + r]
                    _rows_acc(dcol, (i * Lc + d + 1) * K * K, K, dPhat, 0, Q, WpoT, kK, 0, 0, Q, K, Lr * K)
                    _rows_acc(dW, 2 * K, A, colT, K, Lw * K, dPhat, kQ, 0, 0, Lr * K, Q, K)
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
        pk[:, y, off + u*(ln*K + PAD) + j*K + a] = col[:, r0 + j, a, (u, y)], j < ln, each row
        followed by ``PAD`` zeros."""
        N, _, K, _ = col.shape
        S = pk.shape[1]
        Q = K // S
        for i in range(N):
            for y in range(S):
                for u in range(Q):
                    o = off + u * (ln * K + PAD)
                    for j in range(ln):
                        for a in range(K):
                            pk[i, y, o + j * K + a] = col[i, r0 + j, a, u * S + y]
                    for e in range(ln * K, ln * K + PAD):
                        pk[i, y, o + e] = 0

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
                        a0 = roff[ri] + u * (lenc * K + PAD) + (jl - j0) * K
                        b0 = o + u * (ln * K + PAD)
                        for e in range(ln * K + PAD):  # the row's suffix and its zeros
                            dst[i, y, b0 + e] = src[i, y, a0 + e]
            o += Q * (ln * K + PAD)
        return o


def _positions(kernel, names: str) -> frozenset:
    params = list(inspect.signature(kernel.py_func).parameters)
    return frozenset(params.index(n) for n in names.split())


if AVAILABLE:
    # the per-string arguments (first axis N): a block of strings is these sliced, the rest as is
    FORWARD_ROWS = _positions(_forward, "E alpha col pk Cre vec_old v newcol a_out s_out z0_out alphaT ahat PhT w "
                                        "vec_new reading")
    BACKWARD_ROWS = _positions(_backward, "E alpha col pk PhT z0 a_in s_in alphaT ahat newcol vec w reading dR "
                                          "dalphaT dM DP PH dV dE dcol dalpha dCout dPhOut")


def usable(device, dtype) -> bool:
    """Whether the compiled step applies: Numba present, CPU, float32 / float64."""
    import torch

    on_cpu = device is None or torch.device(device).type == "cpu"
    return AVAILABLE and on_cpu and dtype in (torch.float32, torch.float64)
