"""Compiled (Numba) form of the fused LSTM + superposition-stack recurrence.

Same inputs, outputs and saved state as the NumPy loop of
:mod:`marnn.kernels.fused_lstm` (``_forward_loop`` / ``_backward_loop``), but
each replica's B strings run through all timesteps together inside one compiled
function: the replica's weights (a few KiB at H = 20) and its stacks stay in the
L1 cache, there is no per-operation call overhead, and the functions release
the GIL, so replica blocks run truly in parallel threads.

The per-step products of a replica ((B x H) @ (H x P), the read's (B x M) @ (M x G),
and backward (B x P) @ (P x H), (B x G) @ (G x M)) run as register tiles of 2 rows x
32 columns (:func:`_gemm_acc`, tiles written as llvmlite intrinsics: Numba's loop
vectoriser cannot keep accumulators in registers across the inner sum, and its
SLP vectoriser is off), on weight copies padded with zero columns to a multiple
of 8. Each product entry is still ``acc = fma(x_j, w_j, acc)`` for j ascending:
the numbers are bit for bit those of the earlier row-at-a-time loop
(benchmarks/numba_ab.py checks), only faster (about 1.6-3x, benchmarks/README.md).

The superposition stacks of a replica's B strings are stored row-interleaved (one
stack cell of all strings in one row of ``pad8(B m)`` lanes, see the comment above
``_make_tile``), so that the update ``S_t[i] = a0 B[i] + a1 B[i+1] + a2 B[i+2]``, its
backward recursion and the three dot products of the action gradients run as 8-lane
vectors over whole rows (:func:`_mix3_rows`, :func:`_dot3_rows`, llvmlite intrinsics
like the tiles): per lane the same operations in the same order as the per-string
loops before (same numbers bit for bit; the dot products keep one accumulator per
(string, feature) lane summed over the cells in order, then over the features).

Arithmetic (documented because it differs from the NumPy loop by rounding only):

* gates as in the NumPy loop: ``act = 1 / (1 + exp(z))`` with ``z = -s x``
  (s = 1, 1, 2, 1), ``tanh(x) = 2 sigmoid(2x) - 1`` for the g gate and for
  ``tanh(c)``;
* float64 uses ``math.exp``; float32 uses :func:`exp32`, a vectorisable exp
  (Cody-Waite range reduction, degree-7 Taylor polynomial, exponent built
  from bits; within 1 ulp of the exact exp on [-80, 80], checked in tests), with
  its argument clamped to [-80, 80] so that saturated gates stay normal
  numbers (sigmoid(-80) = 1.8e-35 instead of 0: no denormal slow-downs);
* sums run in a fixed order (no re-association): deterministic.

Used for float32 / float64 on the CPU when Numba is installed and the hidden
size is small (the formal-language models; PTB sizes keep the NumPy loop,
whose matrix products go to BLAS). ``AVAILABLE`` says whether it can be used.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import gate_scale

try:  # optional: without Numba the NumPy loop is used
    import numba
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba
    AVAILABLE = False

MAX_HIDDEN = 64  # larger controllers: the NumPy loop (BLAS products) is faster


def pad8(n: int) -> int:
    """``n`` rounded up to a multiple of 8 (the column counts of the kernels' padded weight copies)."""
    return -(-n // 8) * 8

if AVAILABLE:
    # error_model="numpy": no zero-division checks (they stop vectorisation); only FMA
    # contraction from fastmath: re-association would undo exp32's rounding trick
    _JIT: dict[str, Any] = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})

    @intrinsic
    def _bits_to_float32(typingctx, bits):
        """Reinterpret the low 32 bits of an integer as a float32."""
        def codegen(context, builder, signature, args):
            v = args[0]
            if v.type.width != 32:
                v = builder.trunc(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())
        return types.float32(bits), codegen

    _LOG2E = np.float32(1.4426950408889634)
    _LN2_HI = np.float32(0.693359375)  # ln 2 split so that n * _LN2_HI is exact
    _LN2_LO = np.float32(-2.12194440e-4)
    _ROUND = np.float32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer
    # Taylor coefficients 1/k! of exp on |r| <= ln(2) / 2 (truncation error < 2e-9)
    _C = tuple(np.float32(1.0 / math.factorial(j)) for j in range(8))
    _CLAMP = np.float32(80.0)

    @njit(inline="always", **_JIT)
    def exp32(x):
        """exp of a float32, vectorisable (see the module docstring)."""
        x = min(max(x, -_CLAMP), _CLAMP)
        n = (x * _LOG2E + _ROUND) - _ROUND
        r = (x - n * _LN2_HI) - n * _LN2_LO
        p = _C[7]
        p = p * r + _C[6]
        p = p * r + _C[5]
        p = p * r + _C[4]
        p = p * r + _C[3]
        p = p * r + _C[2]
        p = p * r + _C[1]
        p = p * r + _C[0]
        return p * _bits_to_float32((np.int32(n) + 127) << 23)

    def fexp(x):
        """exp: :func:`exp32` for float32, ``math.exp`` for float64 (chosen when compiling)."""
        return math.exp(x)

    @numba.extending.overload(fexp, inline="always")
    def _fexp_typed(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: exp32(x)
        return lambda x: math.exp(x)

    @njit(**_JIT)
    def _vexp32(x, out):
        for i in range(x.size):
            out[i] = exp32(x[i])

    def exp32_array(x: np.ndarray) -> np.ndarray:
        """:func:`exp32` over a float32 array (for tests and the docs)."""
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        out = np.empty_like(x)
        _vexp32(x, out)
        return out

    # The kernels index arrays directly (no views inside loops: every Numba view
    # costs two atomic reference-count updates). Stack history Z (R, k, total * w),
    # w = pad8(B m): per (replica, stack) the slots of all steps one after the other,
    # slot t at row zoff[t] holding the rows [v_t, S_{t-1}[0], ..., S_{t-1}[sh_t - 1], 0, 0]
    # (sh_t = height of S_{t-1}); one row holds that cell of all B strings, feature f of
    # string b at lane b m + f, lanes B m, ..., w - 1 zero. The superposition and its
    # backward then run over whole rows, the same per-lane coefficients (the strings'
    # action weights, ``cf``) for every row: 8-lane vectors (:func:`_mix3`, :func:`_dot3x2`),
    # each lane computed as the per-string loop computed it. Inner loops index
    # with unsigned offsets (uH, um, ...): a signed index that may be negative gets
    # Python's wrap-around test, which stops LLVM from vectorising the loop (5x).

    def _make_tile(rows, nv, lanes):
        """Intrinsic ``tile(X, xo, ldx, W, wo, ldw, Y, oo, ldo, K)``: for the ``rows`` rows b and the
        ``nv * lanes`` columns c of one output tile (flat element offsets into C-contiguous arrays),
        ``Y[oo + b ldo + c] += sum_j X[xo + b ldx + j] W[wo + j ldw + c]``, j = 0, ..., K - 1 in
        that order, each step one fused multiply-add (``llvm.fmuladd``, as ``contract`` makes of
        ``out += x * w``): the same numbers as the plain loop ``for j: for c: Y[.., c] += X[.., j] W[j, c]``, but the
        tile's ``rows * nv`` accumulators stay in vector registers across the K steps and each
        weight vector loaded feeds ``rows`` rows."""
        @intrinsic
        def tile(typingctx, X, xo, ldx, W, wo, ldw, Y, oo, ldo, K):
            def codegen(context, builder, sig, args):
                xa, xo, ldx, wa, wo, ldw, oa, oo, ldo, K = args
                xp = context.make_array(sig.args[0])(context, builder, xa).data
                wp = context.make_array(sig.args[3])(context, builder, wa).data
                op = context.make_array(sig.args[6])(context, builder, oa).data
                et = context.get_data_type(sig.args[6].dtype)
                suffix = "f32" if et == ir.FloatType() else "f64"
                i64 = ir.IntType(64)
                if lanes > 1:
                    vt = ir.VectorType(et, lanes)
                    fname = f"llvm.fmuladd.v{lanes}{suffix}"
                else:
                    vt, fname = et, f"llvm.fmuladd.{suffix}"
                fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), fname)

                def const(v):
                    return ir.Constant(i64, v)

                def vptr(base, off):
                    ptr = builder.gep(base, [off])
                    return builder.bitcast(ptr, vt.as_pointer()) if lanes > 1 else ptr

                optr = [[vptr(op, builder.add(oo, builder.add(builder.mul(const(r), ldo), const(lanes * v))))
                         for v in range(nv)] for r in range(rows)]
                init = [[builder.load(optr[r][v], align=4) for v in range(nv)] for r in range(rows)]
                entry = builder.block
                loop = builder.append_basic_block("tile.loop")
                done = builder.append_basic_block("tile.done")
                builder.cbranch(builder.icmp_signed(">", K, const(0)), loop, done)
                builder.position_at_end(loop)
                j = builder.phi(i64)
                acc = [[builder.phi(vt) for _ in range(nv)] for _ in range(rows)]
                wrow = builder.add(wo, builder.mul(j, ldw))
                wv = [builder.load(vptr(wp, builder.add(wrow, const(lanes * v))), align=4) for v in range(nv)]
                new = []
                for r in range(rows):
                    x = builder.load(builder.gep(xp, [builder.add(builder.add(xo, builder.mul(const(r), ldx)), j)]))
                    if lanes > 1:
                        x = builder.insert_element(ir.Constant(vt, ir.Undefined), x, const(0))
                        x = builder.shuffle_vector(x, ir.Constant(vt, ir.Undefined),
                                                   ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
                    new.append([builder.call(fma, [x, wv[v], acc[r][v]]) for v in range(nv)])
                jn = builder.add(j, const(1))
                body = builder.block
                j.add_incoming(const(0), entry)
                j.add_incoming(jn, body)
                for r in range(rows):
                    for v in range(nv):
                        acc[r][v].add_incoming(init[r][v], entry)
                        acc[r][v].add_incoming(new[r][v], body)
                builder.cbranch(builder.icmp_signed("<", jn, K), loop, done)
                builder.position_at_end(done)
                out = [[builder.phi(vt) for _ in range(nv)] for _ in range(rows)]
                for r in range(rows):
                    for v in range(nv):
                        out[r][v].add_incoming(init[r][v], entry)
                        out[r][v].add_incoming(new[r][v], body)
                for r in range(rows):
                    for v in range(nv):
                        builder.store(out[r][v], optr[r][v], align=4)
                return context.get_dummy_value()
            i = types.int64
            return types.void(X, i, i, W, i, i, Y, i, i, i), codegen
        return tile

    _LANES = 8  # columns per vector (float32: a ymm register; float64: two)
    _tile2x4, _tile2x3, _tile2x2, _tile2x1 = (_make_tile(2, nv, _LANES) for nv in (4, 3, 2, 1))
    _tile1x4, _tile1x3, _tile1x2, _tile1x1 = (_make_tile(1, nv, _LANES) for nv in (4, 3, 2, 1))
    _tile_scalar = _make_tile(1, 1, 1)

    def _vec_ptr(builder, base, off, vt):
        return builder.bitcast(builder.gep(base, [off]), vt.as_pointer())

    def _make_mix3(lanes):
        """Intrinsic ``mix3(Y, yo, X, x0, x1, x2, C, co, w)``: for the ``lanes`` columns c of one vector,
        ``Y[yo + c] = C[co + c] X[x0 + c] + C[co + w + c] X[x1 + c] + C[co + 2 w + c] X[x2 + c]``
        (flat offsets; multiplications and additions in that order, as ``a0 * x0 + a1 * x1 + a2 * x2``
        compiles to in the scalar loop: same instructions with ``contract``, so the same numbers)."""
        @intrinsic
        def mix3(typingctx, Y, yo, X, x0, x1, x2, C, co, w):
            def codegen(context, builder, sig, args):
                ya, yo, xa, x0, x1, x2, ca, co, w = args
                yp = context.make_array(sig.args[0])(context, builder, ya).data
                xp = context.make_array(sig.args[2])(context, builder, xa).data
                cp = context.make_array(sig.args[6])(context, builder, ca).data
                vt = ir.VectorType(context.get_data_type(sig.args[0].dtype), lanes)
                fl = ("contract",)

                def ld(base, off):
                    return builder.load(_vec_ptr(builder, base, off, vt), align=4)
                c1o = builder.add(co, w)
                t = builder.fadd(builder.fmul(ld(cp, co), ld(xp, x0), flags=fl),
                                 builder.fmul(ld(cp, c1o), ld(xp, x1), flags=fl), flags=fl)
                t = builder.fadd(t, builder.fmul(ld(cp, builder.add(c1o, w)), ld(xp, x2), flags=fl), flags=fl)
                builder.store(t, _vec_ptr(builder, yp, yo, vt), align=4)
                return context.get_dummy_value()
            i = types.int64
            return types.void(Y, i, X, i, i, i, C, i, i), codegen
        return mix3

    def _make_dot3(nv, lanes):
        """Intrinsic ``dot3(Acc, ao, w, G, go, X, xo, nr)``: for the ``nv * lanes`` columns c of a
        block and j = 0, 1, 2, ``Acc[ao + j w + c] += sum_i G[go + i w + c] X[xo + (i + j) w + c]``,
        i = 0, ..., nr - 1 in that order, one fused multiply-add per term (as ``acc += g * x``
        contracts to): column by column the numbers of that plain loop, with the ``3 nv``
        accumulators in registers across the sum."""
        @intrinsic
        def dot3(typingctx, Acc, ao, w, G, go, X, xo, nr):
            def codegen(context, builder, sig, args):
                aa, ao, w, ga, go, xa, xo, nr = args
                ap = context.make_array(sig.args[0])(context, builder, aa).data
                gp = context.make_array(sig.args[3])(context, builder, ga).data
                xp = context.make_array(sig.args[5])(context, builder, xa).data
                et = context.get_data_type(sig.args[0].dtype)
                vt = ir.VectorType(et, lanes)
                suffix = "f32" if et == ir.FloatType() else "f64"
                fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                                     f"llvm.fmuladd.v{lanes}{suffix}")
                i64 = ir.IntType(64)

                def const(v):
                    return ir.Constant(i64, v)
                aptr = [[_vec_ptr(builder, ap, builder.add(builder.add(ao, builder.mul(const(j), w)),
                                                            const(lanes * v)), vt) for v in range(nv)]
                        for j in range(3)]
                init = [[builder.load(aptr[j][v], align=4) for v in range(nv)] for j in range(3)]
                entry = builder.block
                loop = builder.append_basic_block("dot3.loop")
                done = builder.append_basic_block("dot3.done")
                builder.cbranch(builder.icmp_signed(">", nr, const(0)), loop, done)
                builder.position_at_end(loop)
                i = builder.phi(i64)
                acc = [[builder.phi(vt) for _ in range(nv)] for _ in range(3)]
                iw = builder.mul(i, w)
                grow = builder.add(go, iw)
                xrow = builder.add(xo, iw)
                new = [[None] * nv for _ in range(3)]
                for v in range(nv):
                    g = builder.load(_vec_ptr(builder, gp, builder.add(grow, const(lanes * v)), vt), align=4)
                    for j in range(3):
                        xoff = builder.add(builder.add(xrow, builder.mul(const(j), w)), const(lanes * v))
                        x = builder.load(_vec_ptr(builder, xp, xoff, vt), align=4)
                        new[j][v] = builder.call(fma, [g, x, acc[j][v]])
                inext = builder.add(i, const(1))
                body = builder.block
                i.add_incoming(const(0), entry)
                i.add_incoming(inext, body)
                for j in range(3):
                    for v in range(nv):
                        acc[j][v].add_incoming(init[j][v], entry)
                        acc[j][v].add_incoming(new[j][v], body)
                builder.cbranch(builder.icmp_signed("<", inext, nr), loop, done)
                builder.position_at_end(done)
                out = [[builder.phi(vt) for _ in range(nv)] for _ in range(3)]
                for j in range(3):
                    for v in range(nv):
                        out[j][v].add_incoming(init[j][v], entry)
                        out[j][v].add_incoming(new[j][v], body)
                for j in range(3):
                    for v in range(nv):
                        builder.store(out[j][v], aptr[j][v], align=4)
                return context.get_dummy_value()
            i = types.int64
            return types.void(Acc, i, i, G, i, X, i, i), codegen
        return dot3

    _mix3 = _make_mix3(_LANES)
    _dot3x2, _dot3x1 = _make_dot3(2, _LANES), _make_dot3(1, _LANES)

    @njit(inline="always", **_JIT)
    def _mix3_rows(Y, yo, X, x0, x1, x2, C, w, nr):
        """Rows i < nr of width w (a multiple of _LANES): ``Y[yo + i w + c] = C[c] X[x0 + i w + c]
        + C[w + c] X[x1 + i w + c] + C[2 w + c] X[x2 + i w + c]``."""
        for i in range(nr):
            iw = i * w
            for c in range(0, w, _LANES):
                _mix3(Y, yo + iw + c, X, x0 + iw + c, x1 + iw + c, x2 + iw + c, C, c, w)

    @njit(inline="always", **_JIT)
    def _dot3_rows(Acc, w, G, go, X, xo, nr):
        """``Acc[j w + c] += sum_{i < nr} G[go + i w + c] X[xo + (i + j) w + c]`` (j < 3, c < w, w a
        multiple of _LANES; i ascending, fused multiply-adds)."""
        c = 0
        while c + 2 * _LANES <= w:
            _dot3x2(Acc, c, w, G, go + c, X, xo + c, nr)
            c += 2 * _LANES
        if c < w:
            _dot3x1(Acc, c, w, G, go + c, X, xo + c, nr)

    @njit(**_JIT)
    def _gemm_acc(X, xo, ldx, W, wo, ldw, Y, oo, ldo, nr, K, N):
        """``Y[oo + b ldo + c] += sum_j X[xo + b ldx + j] W[wo + j ldw + c]`` for b < nr, c < N
        (flat offsets into C-contiguous arrays), j ascending with fused multiply-adds: the
        numbers of that plain loop, row by row. Tiles of 2 rows x 32 columns (then 8, 16 or
        24 columns; a last odd row alone); columns beyond a multiple of 8 one at a time (the
        kernels pad their weight copies so that this never happens in them)."""
        N32 = N - N % 32
        N8 = N - N % 8
        tail = (N8 - N32) // 8
        b = 0
        while b < nr:
            two = b + 1 < nr
            x0 = xo + b * ldx
            o0 = oo + b * ldo
            for c in range(0, N32, 32):
                if two:
                    _tile2x4(X, x0, ldx, W, wo + c, ldw, Y, o0 + c, ldo, K)
                else:
                    _tile1x4(X, x0, ldx, W, wo + c, ldw, Y, o0 + c, ldo, K)
            if tail == 3:
                if two:
                    _tile2x3(X, x0, ldx, W, wo + N32, ldw, Y, o0 + N32, ldo, K)
                else:
                    _tile1x3(X, x0, ldx, W, wo + N32, ldw, Y, o0 + N32, ldo, K)
            elif tail == 2:
                if two:
                    _tile2x2(X, x0, ldx, W, wo + N32, ldw, Y, o0 + N32, ldo, K)
                else:
                    _tile1x2(X, x0, ldx, W, wo + N32, ldw, Y, o0 + N32, ldo, K)
            elif tail == 1:
                if two:
                    _tile2x1(X, x0, ldx, W, wo + N32, ldw, Y, o0 + N32, ldo, K)
                else:
                    _tile1x1(X, x0, ldx, W, wo + N32, ldw, Y, o0 + N32, ldo, K)
            for bb in range(b, b + 2 if two else b + 1):
                for c in range(N8, N):
                    _tile_scalar(X, xo + bb * ldx, ldx, W, wo + c, ldw, Y, oo + bb * ldo + c, ldo, K)
            b += 2 if two else 1

    @njit(**_JIT)
    def _forward(gx, WT, bz, RwT, h0, c0, Z, zoff, heights, fresh, push_hidden, k, m, save,
                 Hs, C, ACT, TC, A, READ, cT, one, two):
        """Replica by replica; the B strings of a replica step through time together.

        gx (R,T,B,G) input half of the gates (unscaled, no bias); WT (R,H,Pp) = [-s W_hh; W_a; W_v]^T
        with zero columns up to Pp = pad8(P); bz (R,Pp) the matching bias; RwT (R,M,Gp) = (-s W_ir)^T
        (Gp = pad8(G)); Z (R,B,k,total) the stack history (slots at ``zoff``, see the comment
        above; S0 in slot 0 with zero padding; T + 1 slots when ``save``, else 2 reused ones).
        Outputs: Hs (R,T+1,B,H), C (R,T+1,B,H) (the cell before each step and after the last;
        only when ``save``), ACT (R,Ta,B,G), TC (R,Ta,B,H), A (R,Ta,B,k,3), READ (R,Ta,B,M)
        (Ta = T when ``save``, else 1), cT (R,B,H). The products of a step are one
        (B x H) @ (H x Pp) and one (B x M) @ (M x Gp) per replica (:func:`_gemm_acc`); every
        number is computed as by the row-at-a-time loop (same operations, same order).
        """
        R, T, B, G = gx.shape
        H = G // 4
        Pp = WT.shape[2]
        Gp = RwT.shape[2]
        M = k * m
        stack = k > 0
        uH = np.uint64(H)
        uH2 = uH + uH
        uH3 = uH2 + uH
        um = np.uint64(m)
        w = (B * m + 7) // 8 * 8  # one stack row: feature f of string b at b m + f, zero lanes up to a multiple of 8
        uw = np.uint64(w)
        uw2 = uw + uw
        ZE = Z.shape[2]
        Zf = Z.reshape(Z.size)
        cf = np.zeros(3 * w, gx.dtype)  # the action weights per lane: a0 | a1 | a2
        p = np.zeros((B, Pp), gx.dtype)
        c = np.empty((B, H), gx.dtype)
        h = np.empty((B, H), gx.dtype)
        z = np.zeros((B, Gp), gx.dtype)
        rd = np.zeros((B, max(M, 1)), gx.dtype)
        for r in range(R):
            for b in range(B):
                for j in range(H):
                    h[b, j] = h0[r, b, j]
                    Hs[r, 0, b, j] = h[b, j]
                    c[b, j] = c0[r, b, j]
                    if save:
                        C[r, 0, b, j] = c[b, j]
            for t in range(T):
                first = fresh and t == 0
                ti = t if save else 0
                for b in range(B):
                    for q in range(Pp):
                        p[b, q] = bz[r, q]
                if not first:
                    _gemm_acc(h, 0, H, WT, r * H * Pp, Pp, p, 0, Pp, B, H, Pp)
                for b in range(B):
                    for q in range(G):
                        z[b, q] = p[b, q] - gx[r, t, b, q]
                    for j in range(uH):  # the g gate takes -2 gx
                        z[b, uH2 + j] -= gx[r, t, b, uH2 + j]
                if stack and first:  # no update (S0 is empty): the next slot reads as an empty stack
                    for s in range(k):
                        z1 = np.uint64((r * k + s) * ZE + (zoff[1] + 1) * w)
                        for q in range(uw2):
                            Zf[z1 + q] = 0
                if stack and not first:
                    zi = zoff[t if save else t & 1]
                    zo = zoff[t + 1 if save else (t + 1) & 1]
                    L = heights[t]
                    for s in range(k):
                        zs = (r * k + s) * ZE
                        g0 = G + 3 * s
                        v0 = G + 3 * k + s * m
                        for b in range(B):
                            mx = max(p[b, g0], max(p[b, g0 + 1], p[b, g0 + 2]))
                            e0 = fexp(p[b, g0] - mx)
                            e1 = fexp(p[b, g0 + 1] - mx)
                            e2 = fexp(p[b, g0 + 2] - mx)
                            tot = e0 + e1 + e2
                            a0, a1, a2 = e0 / tot, e1 / tot, e2 / tot
                            A[r, ti, b, s, 0] = a0
                            A[r, ti, b, s, 1] = a1
                            A[r, ti, b, s, 2] = a2
                            bm = np.uint64(b * m)
                            for f in range(um):
                                cf[bm + f] = a0
                                cf[uw + bm + f] = a1
                                cf[uw2 + bm + f] = a2
                            zv = np.uint64(zs + zi * w + b * m)
                            if push_hidden:
                                for f in range(m):
                                    Zf[zv + np.uint64(f)] = h[b, s * m + f]
                            else:  # sigmoid(W_v h + b_v)
                                for f in range(m):
                                    Zf[zv + np.uint64(f)] = one / (one + fexp(-p[b, v0 + f]))
                        zv = np.uint64(zs + zi * w)
                        for q in range(np.uint64(B * m), uw):  # the push row's padding lanes
                            Zf[zv + q] = 0
                        # S_t[i] = push B[i] + noop B[i+1] + pop B[i+2], all strings and features of a row at once
                        _mix3_rows(Zf, zs + (zo + 1) * w, Zf, zs + zi * w, zs + (zi + 1) * w, zs + (zi + 2) * w,
                                   cf, w, L)
                        pad = np.uint64(zs + (zo + 1 + L) * w)
                        for q in range(uw2):  # the two rows below the new stack read as empty
                            Zf[pad + q] = 0
                        zr = np.uint64(zs + (zo + 1) * w)
                        for b in range(B):
                            for f in range(m):
                                rd[b, s * m + f] = Zf[zr + np.uint64(b * m + f)]  # r_t = S_t[0]
                                READ[r, ti, b, s * m + f] = rd[b, s * m + f]
                    _gemm_acc(rd, 0, rd.shape[1], RwT, r * M * Gp, Gp, z, 0, Gp, B, M, Gp)
                for b in range(B):
                    for q in range(G):
                        z[b, q] = one / (one + fexp(z[b, q]))
                    for j in range(uH):
                        z[b, uH2 + j] = two * z[b, uH2 + j] - one
                    for q in range(G):
                        ACT[r, ti, b, q] = z[b, q]
                    for j in range(uH):
                        cj = z[b, uH + j] * c[b, j] + z[b, j] * z[b, uH2 + j]
                        c[b, j] = cj
                        tj = two / (one + fexp(-two * cj)) - one
                        TC[r, ti, b, j] = tj
                        h[b, j] = z[b, uH3 + j] * tj
                        Hs[r, t + 1, b, j] = h[b, j]
                    if save:
                        for j in range(H):
                            C[r, t + 1, b, j] = c[b, j]
            for b in range(B):
                for j in range(H):
                    cT[r, b, j] = c[b, j]

    @njit(**_JIT)
    def _backward(dHs, dcT, dST, C, ACT, TC, A, Z, zoff, W_h, W_ir, heights, fresh, push_hidden, k, m, L0,
                  dP, dS0, dh0, dc0, one):
        """Gradients for :func:`_forward` (saved state): writes every entry of dP (R,T,B,P),
        dS0 (R,B,k,L0*m), dh0 and dc0 (R,B,H). W_h (R,P,Hp) and W_ir (R,G,Mp) unscaled, with
        zero columns up to Hp = pad8(H), Mp = pad8(M); dST (R,B,k,hT*m) the gradient of the
        final stack. The B strings of a replica step back together (products as in
        :func:`_forward`); every number as by the row-at-a-time loop."""
        R, T, B, G = ACT.shape
        H = G // 4
        P = dP.shape[3]
        Hp = W_h.shape[2]
        Mp = W_ir.shape[2]
        M = k * m
        stack = k > 0
        width = (zoff[1:] - zoff[:-1]).max()  # widest slot (rows)
        uH = np.uint64(H)
        uH2 = uH + uH
        uH3 = uH2 + uH
        dt = ACT.dtype
        dh = np.zeros((B, Hp), dt)
        dc = np.empty((B, H), dt)
        d = np.zeros((B, P), dt)
        dv = np.zeros((B, max(M, 1)), dt)
        dr = np.zeros((B, Mp), dt)
        w = (B * m + 7) // 8 * 8  # stack rows as in _forward
        um = np.uint64(m)
        uw = np.uint64(w)
        uw2 = uw + uw
        ZE = Z.shape[2]
        Zf = Z.reshape(Z.size)
        cf = np.zeros(3 * w, dt)  # a0 | a1 | a2 per lane
        acc = np.empty(3 * w, dt)  # <dS_t, B[i + j]> per lane, j = 0, 1, 2
        ext = width + 4
        EX = ext * w
        DS = np.zeros((2, max(k, 1), EX), dt)  # [cur, prev]: row 2 + i = dL/dS[i] (lanes as the stack rows)
        DSf = DS.reshape(DS.size)
        for r in range(R):
            for b in range(B):
                for j in range(H):
                    dh[b, j] = 0
                    dc[b, j] = dcT[r, b, j]
            if stack:
                DS[:] = 0
                for s in range(k):
                    for i in range(dST.shape[3] // m):
                        for b in range(B):
                            for f in range(m):
                                DS[0, s, (2 + i) * w + b * m + f] = dST[r, b, s, i * m + f]
            cur = 0
            for t in range(T - 1, -1, -1):
                first = fresh and t == 0
                for b in range(B):
                    for q in range(P):
                        d[b, q] = 0
                    for j in range(uH):
                        dht = dHs[r, t + 1, b, j] + dh[b, j]
                        ij, fj = ACT[r, t, b, j], ACT[r, t, b, uH + j]
                        gj, oj = ACT[r, t, b, uH2 + j], ACT[r, t, b, uH3 + j]
                        tj = TC[r, t, b, j]
                        dcj = dc[b, j] + dht * oj * (one - tj * tj)
                        d[b, j] = dcj * gj * ij * (one - ij)
                        d[b, uH + j] = dcj * C[r, t, b, j] * fj * (one - fj)
                        d[b, uH2 + j] = dcj * ij * (one - gj * gj)
                        d[b, uH3 + j] = dht * tj * oj * (one - oj)
                        dc[b, j] = dcj * fj
                if stack and not first:
                    L = heights[t]
                    Lp = heights[t - 1] if t > 0 else L0
                    nxt = 1 - cur
                    zt = zoff[t]
                    dr[:] = 0
                    _gemm_acc(d, 0, P, W_ir, r * G * Mp, Mp, dr, 0, Mp, B, G, Mp)
                    for s in range(k):
                        zs = (r * k + s) * ZE + zt * w
                        dc_ = (cur * k + s) * EX
                        dn_ = (nxt * k + s) * EX
                        g0 = G + 3 * s
                        for b in range(B):
                            bm = np.uint64(b * m)
                            a0, a1, a2 = A[r, t, b, s, 0], A[r, t, b, s, 1], A[r, t, b, s, 2]
                            for f in range(m):
                                DS[cur, s, 2 * w + b * m + f] += dr[b, s * m + f]  # dL/dr_t enters dS_t[0]
                            for f in range(um):
                                cf[bm + f] = a0
                                cf[uw + bm + f] = a1
                                cf[uw2 + bm + f] = a2
                        for q in range(3 * w):
                            acc[q] = 0
                        # da_j = <dS_t, B[i + j]>: per lane (string, feature) a sum over the rows i
                        _dot3_rows(acc, w, DSf, dc_ + 2 * w, Zf, zs, L)
                        for b in range(B):
                            bi = b * m
                            a0, a1, a2 = A[r, t, b, s, 0], A[r, t, b, s, 1], A[r, t, b, s, 2]
                            d0 = acc[bi]
                            d1 = acc[w + bi]
                            d2 = acc[2 * w + bi]
                            for f in range(1, m):
                                d0 += acc[bi + f]
                                d1 += acc[w + bi + f]
                                d2 += acc[2 * w + bi + f]
                            dot = a0 * d0 + a1 * d1 + a2 * d2
                            d[b, g0] = a0 * (d0 - dot)
                            d[b, g0 + 1] = a1 * (d1 - dot)
                            d[b, g0 + 2] = a2 * (d2 - dot)
                            for f in range(m):
                                dv[b, s * m + f] = a0 * DSf[dc_ + 2 * w + bi + f]
                            if not push_hidden:
                                v0 = G + 3 * k + s * m
                                for f in range(m):
                                    v = Zf[zs + bi + f]
                                    d[b, v0 + f] = dv[b, s * m + f] * v * (one - v)
                        n = min(Lp, L + 1)
                        # dS_{t-1}[j] = push dS_t[j+1] + noop dS_t[j] + pop dS_t[j-1]
                        _mix3_rows(DSf, dn_ + 2 * w, DSf, dc_ + 3 * w, dc_ + 2 * w, dc_ + w, cf, w, n)
                        zz = np.uint64(dn_ + (2 + n) * w)
                        for q in range(np.uint64((min(ext, 4 + max(n, Lp)) - 2 - n) * w)):
                            DSf[zz + q] = 0
                    cur = nxt
                    if t == 0:  # carried stack (not fresh)
                        for s in range(k):
                            for i in range(L0):
                                for b in range(B):
                                    for f in range(m):
                                        dS0[r, b, s, i * m + f] = DS[cur, s, (2 + i) * w + b * m + f]
                for b in range(B):
                    for q in range(P):
                        dP[r, t, b, q] = d[b, q]
                if first:
                    break
                dh[:] = 0
                _gemm_acc(d, 0, P, W_h, r * P * Hp, Hp, dh, 0, Hp, B, P, Hp)
                if stack and push_hidden:
                    for b in range(B):
                        for j in range(H):
                            dh[b, j] += dv[b, j]
            if not fresh:
                for b in range(B):
                    for j in range(H):
                        dh0[r, b, j] = dh[b, j] + dHs[r, 0, b, j]
                        dc0[r, b, j] = dc[b, j]


def usable(dtype, hidden: int) -> bool:
    """Whether the compiled loop applies: Numba present, float32/float64, small controller."""
    return AVAILABLE and dtype in (np.float32, np.float64) and hidden <= MAX_HIDDEN


def _slots(heights, T, L0, fresh, save):
    """Offsets (in stack rows) of the stack-history slots (T + 1 of them when ``save``, else 2 reused ones;
    one more entry: the total) and the stack height before each step (``sh``, T + 1 entries)."""
    sh = [L0]
    for t in range(T):
        sh.append(sh[-1] if (fresh and t == 0) else int(heights[t]))
    widths = [h + 3 for h in sh]
    if not save:
        widths = [max(widths)] * 2
    zoff = np.zeros(len(widths) + 1, dtype=np.int64)
    np.cumsum(widths, out=zoff[1:])
    return zoff, sh


def forward_loop(xp, gx, W_h, b_h, W_ir, h0, c0, S0, k, heights, fresh, push_hidden, save, Hs):
    """Drop-in for the NumPy ``_forward_loop`` (same arguments and results, plus its
    own saved-state layout, which only :func:`backward_loop` reads)."""
    R, T, B, G = gx.shape
    H = G // 4
    dt = gx.dtype.type
    Wz = np.array(W_h)
    Wz[:, :G] = gate_scale(xp, W_h[:, :G], G)
    P = Wz.shape[1]
    WT = np.zeros((R, H, pad8(P)), gx.dtype)  # zero columns: the products run in whole 8-column tiles
    WT[:, :, :P] = Wz.transpose(0, 2, 1)
    bz = np.zeros((R, pad8(P)), gx.dtype)
    bz[:, :P] = b_h[:, 0]
    bz[:, :G] = gate_scale(xp, b_h[:, 0, :G].reshape(R, G, 1), G).reshape(R, G)
    gx = np.ascontiguousarray(gx)
    Ta = T if save else 1
    stack = W_ir is not None
    if stack:
        M = W_ir.shape[2]
        m = M // k
        L0 = S0.shape[3]
        zoff, sh = _slots(heights, T, L0, fresh, save)
        w = pad8(B * m)
        Z = np.empty((R, k, zoff[-1], w), gx.dtype)  # the kernel writes every row it reads, all w lanes
        Z[:, :, :zoff[1]] = 0
        Z[:, :, 1:1 + L0, :B * m] = S0.transpose(0, 2, 3, 1, 4).reshape(R, k, L0, B * m)
        Z = Z.reshape(R, k, zoff[-1] * w)
        RwT = np.zeros((R, M, pad8(G)), gx.dtype)
        RwT[:, :, :G] = gate_scale(xp, W_ir, G).transpose(0, 2, 1)
    else:
        k, m, M, L0 = 0, 1, 0, 0
        Z = np.zeros((R, 1, 8), gx.dtype)
        zoff = np.zeros(2, dtype=np.int64)
        RwT = np.zeros((R, 0, pad8(G)), gx.dtype)
    heights_a = np.asarray(list(heights) or [0], dtype=np.int64)
    C = np.empty((R, T + 1 if save else 1, B, H), gx.dtype)
    ACT = np.empty((R, Ta, B, G), gx.dtype)
    TC = np.empty((R, Ta, B, H), gx.dtype)
    A = np.zeros((R, Ta, B, max(k, 1), 3), gx.dtype)
    READ = np.zeros((R, Ta, B, max(M, 1)), gx.dtype)
    cT = np.empty((R, B, H), gx.dtype)
    _forward(gx, WT, bz, RwT, np.ascontiguousarray(h0), np.ascontiguousarray(c0), Z, zoff,
             heights_a, fresh, push_hidden, k, m, save, Hs, C, ACT, TC, A, READ, cT, dt(1), dt(2))
    S_last, prev = None, 0
    if stack:
        prev = sh[-1]  # the stack's height after the last step
        z = zoff[T if save else T & 1]
        w = pad8(B * m)
        S_last = (Z.reshape(R, k, -1, w)[:, :, z + 1:z + 1 + prev, :B * m].reshape(R, k, prev, B, m)
                  .transpose(0, 3, 1, 2, 4).copy())
    sv = None
    if save:
        sv = dict(C=C, ACT=ACT, TC=TC, A=A, Z=Z, zoff=zoff, READ=READ[..., :M].reshape(R, T, B, M) if stack else None,
                  k=k, m=m, heights=heights_a, L0=L0, hT=prev if stack else 0)
    return cT, S_last, sv


def backward_loop(sv, Hs, dHs, dcT, dST, W_h, W_ir, fresh, push_hidden, dP):
    """Drop-in for the NumPy ``_backward_loop`` on a saved state of :func:`forward_loop`;
    returns the per-step pre-activation gradients in ``dP`` and (dh0, dc0, dS0)."""
    R, T1, B, H = Hs.shape
    dt = Hs.dtype.type
    k, m, L0 = sv["k"], sv["m"], sv["L0"]
    stack = W_ir is not None
    if dHs is None:
        dHs = np.zeros_like(Hs)
    dcT = np.zeros((R, B, H), Hs.dtype) if dcT is None else np.ascontiguousarray(dcT)
    if stack:
        hT = sv["hT"]
        dS = np.zeros((R, B, k, hT, m), Hs.dtype)
        if dST is not None:
            dS[:, :, :, :dST.shape[3]] = dST
        dS = dS.reshape(R, B, k, hT * m)
        dS0 = np.zeros((R, B, k, L0 * m), Hs.dtype)
        M = W_ir.shape[2]
        W_ir_c = np.zeros((R, 4 * H, pad8(M)), Hs.dtype)  # zero columns: whole 8-column tiles
        W_ir_c[..., :M] = W_ir
    else:
        dS = dS0 = np.zeros((R, B, 1, 0), Hs.dtype)
        W_ir_c = np.zeros((R, 4 * H, 0), Hs.dtype)
    W_h_c = np.zeros((R, W_h.shape[1], pad8(H)), Hs.dtype)
    W_h_c[..., :H] = W_h
    dh0 = np.zeros((R, B, H), Hs.dtype)
    dc0 = np.zeros((R, B, H), Hs.dtype)
    _backward(np.ascontiguousarray(dHs), dcT, dS, sv["C"], sv["ACT"], sv["TC"], sv["A"], sv["Z"], sv["zoff"],
              W_h_c, W_ir_c, sv["heights"], fresh, push_hidden, k, m, L0,
              dP, dS0, dh0, dc0, dt(1))
    dS0 = dS0.reshape(R, B, k, L0, m) if stack else None
    return (None if fresh else dh0), (None if fresh else dc0), dS0
