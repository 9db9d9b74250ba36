"""Fused controller + superposition-stack recurrence with a hand-written backward pass.

The maths is :mod:`marnn.models.superposition` (the stack update) and the LSTM
of :mod:`marnn.models.lstm`; :func:`fused_stack_lstm` runs the whole
recurrence over a chunk as one autograd function, which
:class:`marnn.models.stack_rnn.StackRNN` calls for plain LSTMs and
superposition stacks of equal sizes. ``tests/test_superposition.py`` checks
every backend against the step-by-step autograd model, in values and every
gradient.

Three backends, one contract (tests check each against the autograd loop):
* compiled (CPU, float32/float64, H <= fused_lstm_numba.MAX_HIDDEN; backend.FUSED_BACKEND "auto"):
  marnn/kernels/fused_lstm_numba.py runs each (replica, string) row through all steps
  in one Numba function that releases the GIL; the weight gradients are the
  same products over all steps as for the array loop (``_weight_grads``).
* numpy (CPU otherwise): per timestep ~15 array operations forward and ~25
  backward instead of ~120 autograd nodes, on NumPy views of the tensors
  (zero-copy; NumPy's per-call overhead is a third of PyTorch's).
* torch: the same array loop on any device and for the 16-bit formats.

Layout: replica first, then time (R, T, B, .) for everything that crosses the
torch boundary (input gates, hidden states, gradients of the gates), so that
the parameter gradients are single products over (R, T B, .) views and no
transposing copies are needed; per-step scratch is (T, R, B, .).
Stacks are stored as (R, B, k, L, m): k equal-size stacks of m-vectors.
Z[t] holds [v_t, S_{t-1}[0], S_{t-1}[1], ..., 0, 0]: step t reads its rows
i, i+1, i+2 with weights (push, no-op, pop) and writes S_t into Z[t+1][1:].

Gates: sigma(x) = 1 / (1 + exp(-x)) and tanh(x) = 2 sigma(2x) - 1, so all four
gates take one exp of z = -s x (s = 1, 1, 2, 1 for i, f, g, o): the gate rows of
the recurrent weights are scaled by -s once per call, and the input half enters
as z -= s * gx. One exp, an add and a reciprocal replace a (twice as slow)
tanh and three broadcast multiplies.

Replica threads: with ``threads`` > 1 and enough work, the replicas are split
into contiguous blocks that run the same loop in parallel threads (NumPy and
torch release the GIL inside every array operation). Replicas never interact,
so the numbers do not depend on the split (tests check bitwise equality).
"""
from __future__ import annotations

import torch

from ..registry import UnknownNameError
from . import backend, fused_lstm_numba
from .arrays import Numpy, Torch, gate_scale

# Split the replicas over this many threads when there is enough work (None: torch.get_num_threads()).
FUSED_THREADS: int | None = None
MIN_ROWS_PER_THREAD = 100  # R * B / threads below this: thread hand-offs cost more than they save
PREP_ELEMENTS = 1 << 16  # backward computes the gates' local derivatives for blocks of this many numbers
SMALL_ELEMENTS = 1024  # R * B * H up to this: fewer, broadcasting array operations per step


def _backend(gx: torch.Tensor):
    # NumPy (compiled loop for small controllers) for float32 / float64 on the CPU; torch for
    # every other device and for the 16-bit formats (NumPy has no bfloat16, and its float16
    # rounds differently from torch's)
    choice = backend.FUSED_BACKEND
    if choice not in backend.BACKENDS:
        raise UnknownNameError("fused backend", choice, backend.BACKENDS)  # e.g. a bad $MARNN_FUSED_BACKEND
    if gx.device.type == "cpu" and choice != "torch" and gx.dtype in (torch.float32, torch.float64):
        xp = Numpy(gx.detach().numpy().dtype)
        xp.compiled = choice == "auto" and fused_lstm_numba.usable(xp.dtype, gx.shape[-1] // 4)
        return xp
    return Torch(gx.detach())


def _blocks(R: int, B: int, xp) -> list[tuple[int, int]]:
    """Contiguous replica blocks, one per thread."""
    n = FUSED_THREADS if FUSED_THREADS is not None else torch.get_num_threads()
    if not isinstance(xp, Numpy):  # torch on a GPU parallelises by itself
        n = 1
    n = max(1, min(n, R, (R * B) // MIN_ROWS_PER_THREAD))
    edges = [round(i * R / n) for i in range(n + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _forward_loop(xp, gx, W_h, b_h, W_ir, h0, c0, S0, k, heights, fresh, push_hidden, save, Hs):
    """``gx``: (R, T, B, 4H) input half of the gates (no bias); ``W_h``: (R, 4H + 3k [+ M], H)
    = [W_hh; W_a; W_v]; ``b_h``: (R, 1, same) = [b_ih + b_hh; b_a; b_v]; ``W_ir``: (R, 4H, M)
    or None (plain LSTM); ``S0``: (R, B, k, L0, m); ``Hs``: (R, T + 1, B, H) output, receives
    h_0 .. h_T. ``save`` keeps what backward needs."""
    R, T, B, G = gx.shape
    H = G // 4
    stack = W_ir is not None
    Hs[:, 0] = h0
    Hl = xp.unbind1(Hs)
    Cs = xp.empty(T + 1, R, B, H)  # c_{-1}, c_0 .. c_{T-1}
    Cs[0] = c0
    Cl = xp.unbind(Cs)
    gxl = xp.unbind1(gx)
    Wz = xp.copy(W_h)
    Wz[:, :G] = gate_scale(xp, W_h[:, :G], G)
    bz = xp.copy(b_h)
    bz[:, :, :G] = gate_scale(xp, b_h[:, 0, :G].reshape(R, G, 1), G).reshape(R, 1, G)
    Hw = xp.T(Wz)  # (R, H, P)
    ACT = xp.empty(T if save else 1, R, B, 4, H)  # sigma(i), sigma(f), tanh(g), sigma(o)
    TC = xp.empty(T if save else 1, R, B, H)  # tanh(c_t)
    ACTl, TCl = xp.unbind(ACT), xp.unbind(TC)
    P = xp.empty(R, B, W_h.shape[1])
    z = xp.empty(R, B, 4, H)  # -s * (gate pre-activations)
    z3 = z.reshape(R, B, G)
    ig = xp.empty(R, B, H)
    prev, As, READ = 0, [], None
    if stack:
        M = W_ir.shape[2]
        m = M // k
        L0 = prev = S0.shape[3]
        rows = max(max(heights, default=0), L0) + 2
        Z = xp.zeros(T + 1 if save else 2, R, B, k, rows, m)
        Z[0, :, :, :, 1:1 + L0] = S0
        Zl = xp.unbind(Z)
        pushl = xp.unbind(Z[:, :, :, :, 0])  # (R, B, k, m) slots for v_t
        READ = xp.zeros(R, T if save else 1, B, M)  # readings r_t
        READl = xp.unbind1(READ)
        Rw = xp.T(gate_scale(xp, W_ir, G))  # (R, M, 4H), gate columns scaled
        tmp = xp.empty(R, B, k, rows, m)
        rtmp = xp.empty(R, B, G)
    with xp.quiet():
        for t in range(T):
            first = fresh and t == 0
            if first:  # h_{-1} = 0
                xp.subtract(bz[..., :G], gxl[0], out=z3)
            else:
                xp.matmul(Hl[t], Hw, out=P)  # (R, B, P)
                P += bz
                xp.subtract(P[..., :G], gxl[t], out=z3)
            z[:, :, 2] -= gxl[t][..., 2 * H:3 * H]  # the g gate takes -2 gx
            if stack and not first:
                zi, zo = (t, t + 1) if save else (t & 1, (t + 1) & 1)
                Zt, Zn = Zl[zi], Zl[zo]
                L = prev = heights[t]
                lg = P[..., G:G + 3 * k].reshape(R, B, k, 3)
                a = xp.exp(lg - xp.amax(lg, axis=-1, keepdims=True))
                a /= xp.sum(a, axis=-1, keepdims=True)  # softmax (R, B, k, 3)
                As.append(a)
                v = pushl[zi]
                if push_hidden:
                    v[...] = Hl[t].reshape(R, B, k, m)
                else:  # sigmoid(W_v h + b_v)
                    xp.multiply(P[..., G + 3 * k:].reshape(R, B, k, m), 0.5, out=v)
                    xp.tanh(v, out=v)
                    v *= 0.5
                    v += 0.5
                co = a.reshape(R, B, k, 1, 1, 3)
                out, tm = Zn[:, :, :, 1:1 + L], tmp[:, :, :, :L]  # S_t[i] = push B[i] + noop B[i+1] + pop B[i+2]
                xp.multiply(co[..., 0], Zt[:, :, :, :L], out=out)
                xp.multiply(co[..., 1], Zt[:, :, :, 1:L + 1], out=tm)
                out += tm
                xp.multiply(co[..., 2], Zt[:, :, :, 2:L + 2], out=tm)
                out += tm
                if not save:  # reused buffer: rows below the new stack must read as empty
                    Zn[:, :, :, 1 + L:3 + L] = 0
                r = READl[t if save else 0]
                r.reshape(R, B, k, m)[...] = Zn[:, :, :, 1]  # r_t = S_t[0]
                xp.matmul(r, Rw, out=rtmp)  # - s W_ir r_t
                z3 += rtmp
            act = ACTl[t] if save else ACTl[0]
            xp.exp(z, out=act)
            act += 1
            xp.recip(act)  # sigma(s x)
            g = act[:, :, 2]
            g *= 2
            g -= 1  # tanh(x_g)
            i, f, o = act[:, :, 0], act[:, :, 1], act[:, :, 3]
            cn = Cl[t + 1]
            xp.multiply(f, Cl[t], out=cn)
            xp.multiply(i, g, out=ig)
            cn += ig
            tc = TCl[t] if save else TCl[0]
            xp.tanh(cn, out=tc)
            xp.multiply(o, tc, out=Hl[t + 1])
    S_last = xp.copy(Zl[T if save else T & 1][:, :, :, 1:1 + prev]) if stack else None
    sv = None
    if save:
        sv = dict(Cs=Cs, ACT=ACT, TC=TC)
        if stack:
            sv.update(Z=Z, READ=READ, A=xp.stack(As) if As else xp.zeros(0, R, B, k, 3))
    return xp.copy(Cs[T]), S_last, sv


def _backward_loop(xp, sv, Hs, dHs, dcT, dST, W_h, W_ir, k, heights, fresh, push_hidden, L0, dP):
    """Gradients of every input of :func:`_forward_loop`; ``dP`` (R, T, B, P) zeros on entry,
    receives the gradients of the pre-activations [gates; action logits; push]."""
    Cs, ACT, TC = sv["Cs"], sv["ACT"], sv["TC"]
    T, R, B, _, H = ACT.shape
    G = 4 * H
    stack = W_ir is not None
    dhsl = None if dHs is None else xp.unbind1(dHs[:, 1:])
    # local derivatives, computed for blocks of steps that stay in cache (all steps at
    # once for small R B):
    # d(i, f, g, o) = (dc g i', dc c_prev f', dc i g', dh tanh(c) o'), dc += dh o (1 - tanh(c)^2)
    span = max(1, min(T, PREP_ELEMENTS // max(1, R * B * G)))
    Dbuf, Kbuf = xp.empty(span, R, B, 4, H), xp.empty(span, R, B, H)

    def prep(t0, t1):
        a, D, K, tc = ACT[t0:t1], Dbuf[:t1 - t0], Kbuf[:t1 - t0], TC[t0:t1]
        i, g, o = a[:, :, :, 0], a[:, :, :, 2], a[:, :, :, 3]
        xp.subtract(1, a, out=D)
        D *= a  # sigma' = sigma (1 - sigma) for i, f, o
        Dg = D[:, :, :, 2]
        xp.multiply(g, g, out=Dg)
        xp.subtract(1, Dg, out=Dg)  # tanh' = 1 - tanh^2
        D[:, :, :, 0] *= g
        D[:, :, :, 1] *= Cs[t0:t1]
        Dg *= i
        D[:, :, :, 3] *= tc
        xp.multiply(tc, tc, out=K)
        xp.subtract(1, K, out=K)
        K *= o
        return t0

    fl = xp.unbind(ACT[:, :, :, 1])
    dPl = xp.unbind1(dP)
    dG4l = [d[..., :G].reshape(R, B, 4, H) for d in dPl]
    dh = xp.zeros(R, B, H)
    dhn = xp.empty(R, B, H)
    dht = xp.empty(R, B, H)
    tH = xp.empty(R, B, H)
    dc = xp.zeros(R, B, H)
    if dcT is not None:
        dc += dcT
    if stack:
        Z, A, READ = sv["Z"], sv["A"], sv["READ"]
        M = W_ir.shape[2]
        m = M // k
        rows = Z.shape[4]
        Zfl = xp.unbind(Z.reshape(Z.shape[0], R, B, k, rows * m))  # cells flattened
        da4 = xp.empty(R, B, k, 3, 1)
        da = da4[..., 0]  # (R, B, k, 3)
        DZ = xp.zeros(T + 1, R, B, k, rows + 2, m)  # DZ[t+1][:, :, :, 2 + i] = dL/dS_t[i]
        DZl = xp.unbind(DZ)
        Dtopl = xp.unbind(DZ[:, :, :, :, 2])  # (R, B, k, m)
        if dST is not None:
            DZ[T][:, :, :, 2:2 + heights[-1]] += dST
        off = 0 if fresh else 1  # A[j] belongs to step j + 1 - off
        dlogl = [d[..., G:G + 3 * k].reshape(R, B, k, 3) for d in dPl]
        if not push_hidden:
            Vdl = xp.unbind(Z[:T, :, :, :, 0] * (1 - Z[:T, :, :, :, 0]))  # sigmoid' of v_t
            dPvl = [d[..., G + 3 * k:].reshape(R, B, k, m) for d in dPl]
        drt = xp.empty(R, B, M)
        dr4 = drt.reshape(R, B, k, m)
        tmp = xp.empty(R, B, k, rows + 2, m)
    few = R * B * H <= SMALL_ELEMENTS
    t0 = T
    for t in range(T - 1, -1, -1):
        first = fresh and t == 0
        if t < t0:
            t0 = prep(max(0, t + 1 - span), t + 1)
        D, K = Dbuf[t - t0], Kbuf[t - t0]
        if dhsl is None:
            dht[...] = dh
        else:
            xp.add(dhsl[t], dh, out=dht)
        xp.multiply(dht, K, out=tH)
        dc += tH
        dG = dG4l[t]
        if few:  # one broadcast product (per-call overhead dominates)
            xp.multiply(D[:, :, :3], dc[:, :, None], out=dG[:, :, :3])
        else:  # three plain products (a broadcast over the gate axis iterates in runs of H)
            xp.multiply(D[:, :, 0], dc, out=dG[:, :, 0])
            xp.multiply(D[:, :, 1], dc, out=dG[:, :, 1])
            xp.multiply(D[:, :, 2], dc, out=dG[:, :, 2])
        xp.multiply(D[:, :, 3], dht, out=dG[:, :, 3])
        dc *= fl[t]
        if stack and not first:
            L = heights[t]
            Lp = heights[t - 1] if t > 0 else L0
            a = A[t - 1 + off]  # (R, B, k, 3)
            xp.matmul(dPl[t][..., :G], W_ir, out=drt)
            xp.add(Dtopl[t + 1], dr4, out=Dtopl[t + 1])  # dL/dr_t
            Dn = DZl[t + 1]
            dS = Dn[:, :, :, 2:2 + L].reshape(R, B, k, L * m, 1)
            Zf = Zfl[t]
            for j in range(3):  # da_j = <dS_t, B[i + j]>: three dot products per stack
                xp.matmul(Zf[..., None, j * m:(j + L) * m], dS, out=da4[..., j:j + 1, :])
            ada = a * da
            xp.multiply(a, da - xp.sum(ada, axis=-1, keepdims=True), out=dlogl[t])  # softmax backward
            dv = a[..., :1] * Dtopl[t + 1]  # (R, B, k, m): v enters S_t[0] with weight a_push
            n = min(Lp, L + 1)
            if n > 0:  # dS_{t-1}[j] = push dS_t[j+1] + noop dS_t[j] + pop dS_t[j-1]
                co = a.reshape(R, B, k, 1, 1, 3)
                out, tm = DZl[t][:, :, :, 2:2 + n], tmp[:, :, :, :n]
                xp.multiply(co[..., 0], Dn[:, :, :, 3:3 + n], out=out)
                xp.multiply(co[..., 1], Dn[:, :, :, 2:2 + n], out=tm)
                out += tm
                xp.multiply(co[..., 2], Dn[:, :, :, 1:1 + n], out=tm)
                out += tm
            if not push_hidden:
                xp.multiply(dv, Vdl[t], out=dPvl[t])
        if first:
            break
        xp.matmul(dPl[t], W_h, out=dhn)  # (R, B, H)
        dh, dhn = dhn, dh
        if stack and push_hidden:
            dh += dv.reshape(R, B, H)
    dW_h, db_h, dW_ir = _weight_grads(xp, Hs, dP, READ if stack else None)
    dS0 = DZ[0][:, :, :, 2:2 + L0] if stack else None
    dh0 = None
    if not fresh:
        dh0 = dh if dHs is None else dh + dHs[:, 0]
    return dW_h, db_h, dW_ir, dh0, None if fresh else dc, dS0


def _weight_grads(xp, Hs, dP, READ):
    """Parameter gradients from the pre-activation gradients ``dP`` (R, T, B, P): one
    product over all steps (h_{-1} = 0 and r_0 = 0 when fresh). Returns dW_h, db_h, dW_ir."""
    R, T, B, Pn = dP.shape
    H = Hs.shape[3]
    dPr = dP.reshape(R, T * B, Pn)
    dW_h = xp.T(xp.bigmm(xp.T(Hs[:, :T].reshape(R, T * B, H)), dPr))  # (h^T dP)^T: the faster operand order
    db_h = xp.sum(dPr, axis=1, keepdims=True)
    dW_ir = None
    if READ is not None:
        dW_ir = xp.T(xp.bigmm(xp.T(READ.reshape(R, T * B, READ.shape[3])), dPr[..., :4 * H]))
    return dW_h, db_h, dW_ir


def _cat(xp, parts):
    return None if parts[0] is None else (parts[0] if len(parts) == 1 else xp.concatenate(parts, 0))


def _forward_blocks(xp, tensors, opts, save):
    """:func:`_forward_loop` over the replica blocks of :func:`_blocks` (threads when more than one).

    ``tensors`` = (gx, W_h, b_h, W_ir, h0, c0, S0). Returns the arrays, the blocks,
    ``Hs``, ``c_T``, ``S_T`` and each block's saved state (None unless ``save``).
    """
    k, heights, fresh, push_hidden = opts
    args = [xp.arr(a) for a in tensors]
    R, T, B, G = args[0].shape
    Hs = xp.empty(R, T + 1, B, G // 4)
    blocks = _blocks(R, B, xp)

    def run(a, b):
        part = [None if x is None else x[a:b] for x in args]
        if xp.compiled:
            return fused_lstm_numba.forward_loop(xp, *part, k, heights, fresh, push_hidden, save, Hs[a:b])
        return _forward_loop(xp, *part, k, heights, fresh, push_hidden, save=save, Hs=Hs[a:b])

    outs = backend.parallel(run, blocks)
    cT, ST = (_cat(xp, [o[i] for o in outs]) for i in (0, 1))
    return args, blocks, Hs, cT, ST, [o[2] for o in outs]


class _FusedStackLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts, gx, W_h, b_h, W_ir, h0, c0, S0):
        xp = _backend(gx)
        args, ctx.blocks, Hs, cT, ST, ctx.svs = _forward_blocks(xp, (gx, W_h, b_h, W_ir, h0, c0, S0), opts, True)
        ctx.opts, ctx.xp = opts, xp
        ctx.Hs, ctx.weights = Hs, (args[1], args[3])
        ctx.L0 = S0.shape[3] if S0 is not None else 0
        ctx.Pn = W_h.shape[1]
        return xp.tensor(Hs), xp.tensor(cT), xp.tensor(ST)

    @staticmethod
    def backward(ctx, dHs, dcT, dST):
        k, heights, fresh, push_hidden = ctx.opts
        xp, svs, Hs = ctx.xp, ctx.svs, ctx.Hs
        ctx.svs = ctx.Hs = None
        W_h, W_ir = ctx.weights
        R, T1, B, H = Hs.shape
        dP = (xp.empty if xp.compiled else xp.zeros)(R, T1 - 1, B, ctx.Pn)  # the compiled loop writes every entry
        dHs, dcT, dST = xp.arr(dHs), xp.arr(dcT), xp.arr(dST)

        def run(j, a, b):
            cut = [None if x is None else x[a:b] for x in (Hs, dHs, dcT, dST, W_h, W_ir)]
            h, dh, dc, ds, wh, wr = cut
            if xp.compiled:
                dh0, dc0, dS0 = fused_lstm_numba.backward_loop(svs[j], h, dh, dc, ds, wh, wr, fresh, push_hidden,
                                                               dP[a:b])
                return (*_weight_grads(xp, h, dP[a:b], svs[j]["READ"]), dh0, dc0, dS0)
            return _backward_loop(xp, svs[j], h, dh, dc, ds, wh, wr, k, heights, fresh, push_hidden, ctx.L0,
                                  dP[a:b])

        outs = backend.parallel(run, [(j, a, b) for j, (a, b) in enumerate(ctx.blocks)])
        grads = [_cat(xp, [o[i] for o in outs]) for i in range(6)]
        dW_h, db_h, dW_ir, dh0, dc0, dS0 = grads
        return (None, xp.tensor(dP[..., :4 * H]), *(xp.tensor(g) for g in (dW_h, db_h, dW_ir, dh0, dc0, dS0)))


def fused_stack_lstm(gx, W_hh, h0=None, c0=None, *, bias=None, W_ir=None, W_a=None, b_a=None, W_v=None, b_v=None,
                     S0=None, k=1, heights=(), fresh=True, push_hidden=False):
    """The whole LSTM (+ ``k`` equal-size superposition stacks) recurrence over ``T`` steps.

    ``gx``: (R, T, B, 4H) input half of the gates (time-major, no bias); ``W_hh``:
    (R, 4H, H); ``bias``: (R, 4H) = b_ih + b_hh (None: zero); ``h0, c0``: (R, B, H)
    (zero when ``fresh``); ``W_ir``: (R, 4H, M) the reading half of ``W_ih``;
    ``W_a, b_a`` the action layer (3k outputs in :data:`marnn.models.superposition.ACTIONS` order); ``W_v, b_v``
    the push layer (None when pushing h); ``S0``: (R, B, k, L0, M / k) carried stack;
    ``heights`` from :func:`marnn.models.superposition.stack_heights`. Returns the hidden states
    ``(R, T + 1, B, H)`` (index 0 is ``h0``, zeros when ``fresh``), ``c_T`` and the
    final stack (R, B, k, L, M / k) (None without a stack). Differentiable in every
    tensor argument through a hand-written backward pass (checked against the
    autograd loop in tests/test_superposition.py).
    """
    R, T, B, G = gx.shape
    H = G // 4
    if fresh:
        h0 = c0 = gx.new_zeros(R, B, H)
    gate_bias = gx.new_zeros(R, G) if bias is None else bias
    if W_ir is None:
        W_h, b_h, k = W_hh, gate_bias.unsqueeze(1), 0
    else:
        M = W_ir.shape[2]
        if M % k:
            raise ValueError(f"{k} stacks cannot share {M} features equally")
        parts_w, parts_b = [W_hh, W_a], [gate_bias, b_a]
        if not push_hidden:
            parts_w.append(W_v)
            parts_b.append(b_v)
        W_h, b_h = torch.cat(parts_w, dim=1), torch.cat(parts_b, dim=1).unsqueeze(1)
        if S0 is None:
            S0 = gx.new_zeros(R, B, k, 0, M // k)
    opts = (k, list(heights), fresh, push_hidden)
    if torch.is_grad_enabled():
        return _FusedStackLSTM.apply(opts, gx, W_h, b_h, W_ir, h0, c0, S0)
    xp = _backend(gx)
    _, _, Hs, cT, ST, _ = _forward_blocks(xp, (gx, W_h, b_h, W_ir, h0, c0, S0), opts, False)
    return xp.tensor(Hs), xp.tensor(cT), xp.tensor(ST)
