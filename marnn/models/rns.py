r"""Renormalizing nondeterministic stack (RNS) and vector RNS (VRNS).

What it is
----------
The RNS (DuSell & Chiang 2022/2023) is a differentiable simulation of a
nondeterministic pushdown automaton with ``Q`` states and ``S`` stack symbols
(state 0 = start state, symbol 0 = bottom symbol) that sums over *all* runs.
At each step ``t = 1..n`` the controller emits, for every (state q, top symbol x),
unnormalised positive weights (``exp`` of logits) for

* push (r, y)    -- go to state r and push y on top of x          [Q*S]
* replace (r, y) -- go to state r and replace the top x by y       [Q*S]
* pop r          -- go to state r and pop x (needs a symbol below) [Q]

so ``num_actions = Q*S*(2*Q*S + Q)`` (layout per (q, x): push | replace | pop).
The stack is *read* as the distribution over (current state, top symbol),
``Q*S`` values; the VRNS additionally attaches a vector in (0, 1)^m to every
stack element (pushed vector ``v_t`` at a push, learned ``bottom`` vector for
the bottom element) and reads the expected top vector for every (state, top
symbol): ``Q*S*m`` values.

Recurrences (docs: book/reference/models.md)
--------------------------------------------
With ``gamma[i->t][q,x->r,y]`` (top symbol y in state r at time t was pushed at
time i+1 on top of x in state q at time i; everything below untouched)::

    gamma[-1->0][q0,⊥->q0,⊥] = 1
    gamma[i->t][q,x->r,y] = [i = t-1] Push_t[q,x->r,y]
                          + Σ_{s,z} gamma[i->t-1][q,x->s,z] Repl_t[s,z->r,y]
                          + Σ_{k=i+1}^{t-2} Σ_u gamma[i->k][q,x->u,y] P_t[k][u,y->r]
    P_t[k][u,y->r]        = Σ_{s,z} gamma[k->t-1][u,y->s,z] Pop_t[s,z->r]
    alpha[t][r,y]         = Σ_{i=-1}^{t-1} Σ_{q,x} alpha[i][q,x] gamma[i->t][q,x->r,y]
    alpha[-1] = alpha[0]  = one-hot(q0, ⊥)
    reading_t             = alpha[t] / Σ alpha[t]

VRNS: ``zeta`` follows gamma's recurrence with ``v_t`` multiplied into the push
term, ``zeta[-1->0] = bottom``; ``eta[t] = Σ alpha[i] zeta[i->t]``; reading =
``eta[t] / Σ alpha[t]``.  Because a replace keeps the vector and a pop restores
the element pushed at i+1, ``zeta[i->t] = gamma[i->t] ⊗ v_{i+1}`` exactly
(``v_0 = bottom``), so the VRNS reading costs only ``O(n Q S m)`` on top of the
RNS: ``eta[t][b] = Σ_i (Σ_a alpha[i][a] gamma[i->t][a,b]) v_{i+1}``.

Windowed (limited) variant, window ``D``: ``gamma[i->t] = 0`` for ``i < t - D``
(only the last ``D`` push times ``j = i+1 ∈ [t-D+1, t]`` are tracked).  The state
carried between chunks is: alpha[t], the column gamma[·->t] (D push times), the
triangle of older columns the pop term still needs (D-1 rows and columns), and
for the VRNS the pushed vectors of those push times.  Note the convention: at
time t the window holds push times ``t-D+1..t``; the bottom element (push time
0) leaves it at ``t = D``, so windowed == unwindowed for ``D >= n + 1`` (and for
``D = n`` everywhere except the bottom-only runs at the very last step).

Numerics: the renormalised ("hat") representation
--------------------------------------------------
Every term of alpha[t] contains exactly one weight of every step 1..t, and every
term of gamma[i->t] exactly one weight of every step i+1..t.  Hence scaling all
of step t's weights by one positive constant scales alpha[t'] (t' >= t) by that
constant and leaves every reading unchanged.  More generally the quantities are
invariant under a *diagonal gauge* per time step.  We store, in real arithmetic,

    Ĝ[j, t][a, b] = alpha[j-1][a] gamma[j-1 -> t][a, b] / alpha[t][b],   j = i+1

(alpha normalised to sum 1 at every step; ``Ĝ`` = the posterior share of
configuration b at time t owed to runs whose top was pushed at time j from
configuration a).  All entries lie in [0, 1] and Σ_{j,a} Ĝ[j,t][a,b] = 1, so
nothing can overflow however extreme the logits, and the alphas of different
push times never need a common scale: it cancels analytically.  One step
(``W = alpha[t-1][s,z] * exp(logits - max)`` per (s,z) row)::

    C[j][a,b] = [j = t] Wpush[a,b]
              + Σ_c Ĝ[j,t-1][a,c] Wrepl[c,b]
              + Σ_{c'} Σ_u Ĝ[j, c'][a,(u,y)] P̂[c'+1][(u,y), r]     (b = (r,y))
    P̂[j'][(u,y), r] = Σ_c Ĝ[j', t-1][(u,y), c] Wpop[c, r]
    a'[b] = Σ_{j,a} C[j][a,b]      alpha[t] = a' / Σ a'      Ĝ[·,t] = C / a'

(``C`` is first divided by its detached total so its scale is O(1); exact by
the argument above).  The only place precision can be lost is in
configurations whose relative weight drops below the floating-point range
(~1e-38 in float32, ~e^-87) -- a run that is that unlikely at some time is
dropped, exactly as underflow would in any real-space code; a log-space float64
reference agrees on length-400 strings with logits in [-30, 30] (see tests).

Autograd: a hand-written backward on a tape
-------------------------------------------
Recording the pop term with autograd would save a copy of the O(t^2) triangle
at every step (O(n^3) memory).  Instead every ``step`` is one
``torch.autograd.Function`` whose state lives in a shared ``_Tape``; a dummy
"token" tensor chains the steps so autograd runs their backward in reverse
time order.  The backward of the pop term is deferred: ``dpop_t`` and ``P̂_t``
are stored, and the adjoint of column c (rows j) is computed once, when step c
is reached, as one GEMM over all later steps:
``dĜ[j,c][a,(u,y)] = Σ_{t,r} dpop_t[j,a,(r,y)] P̂_t[c+1][(u,y),r]``.
Memory is O(n^2 Q^2 S^2) per string (O(D n Q^2 S^2) windowed).  One backward
pass per forward (calling backward again after ``retain_graph=True`` is
supported when the new pass covers the same or fewer steps).  Stepping the same
state twice is refused (the tape is shared); use ``detach_state`` to fork.

Cost per step ``t`` (window ``L = min(t, D)``): pop term ``O(L^2 Q^3 S^2)``
(a batched GEMM over the triangle: memory-bound, arithmetic intensity Q; the
triangle is stored transposed, ``((c,u), (j,a))``, because MKL's skinny-GEMM
path is ~3x slower the other way round, and for L >= 32 it is split into 4 row
blocks that skip most of the zero half j > c), replace/P̂ ``O(L Q^3 S^3)``;
backward about twice the forward.  Everything else is O(L Q^2 S^2) per step, so
small problems are bound by Python/dispatch overhead (~25 ops per step).
On a shared 2-core CPU, ``torch.set_num_threads(1)`` is usually faster (OpenMP
spin-waiting when cores are oversubscribed); that choice is left to the caller.

Compiled step (CPU)
-------------------
On the CPU in float32 / float64 with Numba installed, ``forward_step`` and
``backward_step`` run as two compiled kernels (:mod:`marnn.models.rns_compiled`):
each string goes through the whole step in one loop nest, the triangle is kept
*packed* (each column's rows one after the other, only the push times still in
the window) instead of in ``buf``, DP likewise, and blocks of strings run in
parallel threads when torch may use several. The replace products and ``P̂``
(``O(L K^3)``, small GEMMs) stay batched ``torch.bmm`` calls once a column holds
``_GEMM_MIN`` push times; the kernels do the pop term (sweeps of the packed
triangle, the lower half only), the normalisation and their adjoints. The torch code above stays as the
reference it is tested against (``tests/test_rns_compiled.py``: values and every
gradient equal to float64 rounding); ``RNSCore(compiled=False)``, the model
option ``fused=False`` or ``$MARNN_FUSED_BACKEND`` = ``numpy`` / ``torch`` select it.

Shapes (N = batch with replicas flattened, K = Q*S)::

    action_logits (N, K*(2K+Q)) -> view (N, Q, S, 2K+Q) -> (N, K, 2K+Q)
    col           (N, L, K, K)       Ĝ[j, t] for push times j = lo..t
    buf           (N, S, cap, K, cap, Q)   buf[:, y, j, a, c, u] = Ĝ[j, c][a, (u, y)]
    reading       (N, K)  or (N, K*m) laid out (q, x, m)
"""
from __future__ import annotations

import functools

import numpy as np
import torch

Tensor = torch.Tensor
_NP = {torch.float32: np.float32, torch.float64: np.float64}
_GEMM_MIN = 4  # compiled step: push times from which the replace products go to torch.bmm
_SPLIT_WORK = 200_000  # N (L+1)^2 K Q below this: one thread (a hand-off costs more than it saves)

__all__ = ["RNSCore", "RNSState", "rns_readings", "BOTTOM_LAYOUTS"]


def _kernels():
    """The compiled step (:mod:`marnn.models.rns_compiled`) or None (no Numba, or this file
    loaded on its own, outside the package)."""
    try:
        from . import rns_compiled
    except ImportError:  # pragma: no cover - standalone load or no numba
        return None
    return rns_compiled if rns_compiled.AVAILABLE else None


def compiled_default() -> bool:
    """Whether cores built with ``compiled=None`` use the compiled step where it applies:
    yes unless ``$MARNN_FUSED_BACKEND`` / ``superposition.FUSED_BACKEND`` asks for a
    reference backend ("numpy" or "torch"), the same switch as the fused LSTM kernel."""
    try:
        from .superposition import FUSED_BACKEND
    except ImportError:  # pragma: no cover - standalone load
        import os
        FUSED_BACKEND = os.environ.get("MARNN_FUSED_BACKEND", "auto")
    return FUSED_BACKEND == "auto"


def _lo(t: int, window: int | None) -> int:
    """First push time kept at time t."""
    return 0 if window is None else max(0, t - window + 1)


class RNSState:
    """Opaque handle: a tape (shared, advanced in place) and the time it refers to."""

    __slots__ = ("tape", "t", "token", "reading0", "published")

    def __init__(self, tape, t, token, reading0=None, published=None):
        self.tape, self.t, self.token, self.reading0 = tape, t, token, reading0
        self.published = published  # _PublishedBottom while its term is non-zero, else None


BOTTOM_LAYOUTS = ("equations", "published")


class _PublishedBottom:
    r"""VRNS with ``bottom="published"``: the term the published implementation adds.

    The written equations put the bottom vector only at
    ``zeta[-1->0][(q0,⊥) -> (q0,⊥)]``; the published implementation writes it into
    the whole ``Q·S x Q·S`` block ``zeta[-1->0]``. Only row ``(q0,⊥)`` is read
    (``alpha[-1]`` is one-hot), and zeta of push times ``i >= 0`` is unchanged, so
    the published reading is the equations' reading plus
    ``h[t][b] / Σ alpha[t] ⊗ bottom``, where ``h`` follows the recurrence of the
    row ``gamma[-1->·][(q0,⊥), ·]`` (replace and pop terms) from
    ``h[0] = 1 - onehot(q0,⊥)``: runs that start, at time 0, in every other
    configuration with weight 1 and have popped everything above the bottom.
    Its pop term needs ``gamma[0->·]`` for configurations that ``alpha[0]``
    gives weight 0, which the renormalised tape never forms, so this term is
    computed here with plain autograd, in float64, from the full ``gamma``
    columns (``O(t^2)`` small operations per step). Windowed (``D``), ``h[t] = 0``
    from ``t = D`` on and the object is dropped: on PTB it costs only the first
    ``D - 1`` steps of a fresh state. Each step divides everything by the new
    ``Σ alpha`` (detached; the ratio is exact).
    """

    def __init__(self, core: RNSCore, bottom: Tensor, device):
        N, K = bottom.shape[0], core.K
        self.core, self.bottom, self.t = core, bottom, 0
        f = torch.float64
        e0 = torch.zeros(N, K, dtype=f, device=device)
        e0[:, 0] = 1
        self.alphas = [e0, e0]                                   # alpha[-1], alpha[0]
        self.cols = [e0[:, None, :, None] * e0[:, None, None, :]]  # cols[t]: gamma[i->t], i = -1..t-1
        self.h = [1 - e0]

    def detached(self) -> _PublishedBottom:
        new = object.__new__(_PublishedBottom)
        new.core, new.bottom, new.t = self.core, self.bottom.detach(), self.t
        new.alphas = [a.detach() for a in self.alphas]
        new.cols = [c.detach() for c in self.cols]
        new.h = [h.detach() for h in self.h]
        return new

    def step(self, x: Tensor, kind: str) -> tuple[Tensor | None, bool]:
        """Advance with this step's action logits / weights: ``(term, done)``, the
        reading term ``(N, K*m)`` (None when zero) and whether every later one is zero."""
        core = self.core
        K, Q, S = core.K, core.Q, core.S
        if core.window is not None and self.t + 1 >= core.window:
            return None, True
        E = _weights(x.to(torch.float64), kind)                 # (N, K, 2K+Q), one scale per step
        N = E.shape[0]
        push, repl, pop = E[..., :K], E[..., K:2 * K], E[..., 2 * K:]
        t = self.t + 1
        prev = self.cols[-1]                                     # (N, t, K, K): gamma[i->t-1], i = -1..t-2
        new = torch.cat([torch.einsum("niac,ncb->niab", prev, repl), push[:, None]], dim=1)  # (N, t+1, K, K)
        hn = torch.einsum("nc,ncb->nb", self.h[-1], repl)
        if t >= 2:
            # P[k][(u,y), r] = Σ_c gamma[k->t-1][(u,y), c] Pop[c, r], k = 0..t-2
            P = torch.einsum("nkac,ncr->nkar", prev[:, 1:], pop).reshape(N, t - 1, Q, S, Q)
            pops = [torch.einsum("niauy,nuyr->niary", self.cols[k].reshape(N, k + 1, K, Q, S), P[:, k])
                    .reshape(N, k + 1, K, K) for k in range(t - 1)]  # onto rows i = -1..k-1
            add = [torch.cat([p, p.new_zeros(N, t + 1 - (k + 1), K, K)], dim=1) for k, p in enumerate(pops)]
            new = new + torch.stack(add, 0).sum(0)
            hs = torch.stack(self.h[:t - 1], 1).reshape(N, t - 1, Q, S)
            hn = hn + torch.einsum("nkuy,nkuyr->nry", hs, P).reshape(N, K)
        alpha = torch.einsum("nia,niab->nb", torch.stack(self.alphas, 1), new)
        c = alpha.sum(-1).detach().clamp_min(torch.finfo(torch.float64).tiny)
        new, alpha, hn = new / c[:, None, None, None], alpha / c[:, None], hn / c[:, None]
        self.t = t
        self.cols.append(new)
        self.alphas.append(alpha)
        self.h.append(hn)
        done = core.window is not None and t + 1 >= core.window  # h[t'] = 0 from t' = D on
        term = (hn / alpha.sum(-1, keepdim=True))[:, :, None] * self.bottom.to(torch.float64)[:, None, :]
        return term.reshape(N, -1), done


class _Tape:
    """Forward state of one (batched) stack plus what the backward needs."""

    def __init__(self, core: RNSCore, N: int, device, dtype, alpha, col, vec, t, base):
        self.core, self.N, self.device, self.dtype = core, N, device, dtype
        self.t = t
        self.lo = _lo(t, core.window)
        self.t0_lo = self.lo        # first push time whose vector this tape holds
        self.alpha = alpha          # (N, K)
        self.col = col              # (N, L, K, K) push times [lo, t]
        self.vec = vec              # (N, L, m) | None
        self.base = base            # absolute time of buffer index 0
        self.cap = 0
        self.buf: Tensor | None = None  # (N, S, cap, Q, cap, K): buf[:, y, c, u, j, a] = Ĝ[j, c][a, (u, y)]
        self.rec: dict[int, dict] = {}  # T -> saved tensors of step T
        self.kern = core.kernels(device, dtype)  # the compiled step, or None: the torch reference
        # compiled step: the triangle packed row block after row block (rns_compiled._row_start)
        self.pk: Tensor | None = None            # (N, S, P)
        self.roff = np.zeros(0, dtype=np.int64)  # row table: offset and first push time of the
        self.rj0 = np.zeros(0, dtype=np.int64)   # row block of push time pbase + index
        self.pbase = self.nrows = self.pused = 0
        self.reset_backward()

    def reset_backward(self):
        self.dalpha, self.dcol = {}, {}
        self.DP = self.PH = self.dV = None
        self.bwd_T = None
        self.bwd_top = 0

    # --------------------------------------------------------------- buffer
    def _ensure(self, hi: int, keep_lo: int):
        """Make absolute indices [keep_lo, hi) addressable in the triangle buffer."""
        core = self.core
        if self.buf is not None and hi - self.base <= self.cap:
            return
        if self.rec and self.buf is not None:      # recorded steps refer to absolute indices
            newbase = self.base
            cap = max(hi - newbase, 2 * self.cap, 8)
        else:                                      # free to drop rows/cols older than keep_lo
            newbase = keep_lo
            need = hi - newbase
            cap = max(2 * need, 8) if core.window is None else max(need, 2 * core.window + 2)
        new = torch.zeros(self.N, core.S, cap, core.Q, cap, core.K, device=self.device, dtype=self.dtype)
        if self.buf is not None:
            o0 = max(newbase, self.base)
            o1 = min(self.base + self.cap, hi)
            if o1 > o0:
                a0, a1 = o0 - self.base, o1 - self.base
                b0, b1 = o0 - newbase, o1 - newbase
                new[:, :, b0:b1, :, b0:b1] = self.buf[:, :, a0:a1, :, a0:a1]
        self.buf, self.base, self.cap = new, newbase, cap

    @staticmethod
    def region(buf, base, lo: int, hi: int):
        """Triangle columns c and push times j in [lo, hi): (N*S, (c,u), (j,a)) strided view."""
        N, S, cap, Q, _, K = buf.shape
        v = buf.view(N * S, cap * Q, cap * K)
        r0, r1 = lo - base, hi - base
        return v[:, r0 * Q:r1 * Q, r0 * K:r1 * K]

    # --------------------------------------------------------------- forward
    def forward_step(self, E: Tensor, v: Tensor | None, record: bool):
        """Advance by one step. E: (N, K, 2K+Q) weights (any positive per-row scale)."""
        if self.kern is not None:
            return self._forward_compiled(E, v, record)
        core = self.core
        K, Q, S, N = core.K, core.Q, core.S, self.N
        tiny = torch.finfo(self.dtype).tiny
        t, lo = self.t, self.lo
        T = t + 1
        loT = _lo(T, core.window)
        d = loT - lo
        Lw = t - loT + 1                                         # push times [loT, t]
        Lr = Lw - 1                                              # rows with a pop term [loT, t-1]
        col = self.col
        alpha = self.alpha
        W = alpha[:, :, None] * E                                # (N, K, 2K+Q)
        Wre = W[..., K:2 * K]
        Wpo = W[..., 2 * K:]
        colw = col[:, d:].reshape(N, Lw * K, K)                  # (N, (j,a), c)
        C = torch.cat([torch.bmm(colw, Wre).view(N, Lw, K, K),  # replace
                       W[:, None, :, :K]], dim=1)                # push at time T -> (N, Lw+1, K, K)
        PhT = None
        if Lr > 0:
            # P̂[c+1][(u,y), r] for c in [loT, t-1], transposed: (N*S, r, (c,u))
            PhT = torch.bmm(Wpo.transpose(1, 2), col[:, d + 1:].reshape(N, Lr * K, K).transpose(1, 2))
            PhT = PhT.view(N, Q, Lr, Q, S).permute(0, 4, 1, 2, 3).reshape(N * S, Q, Lr * Q)
            tri = self.region(self.buf, self.base, loT, t)                        # (N*S, (c,u), (j,a))
            popT = _tri_left(PhT, tri, Lr, Q, K).view(N, S, Q, Lr, K)            # (N, y, r, j, a)
            C[:, :Lr] += popT.permute(0, 3, 4, 2, 1).reshape(N, Lr, K, K)
        Z0 = C.sum(dim=(1, 2, 3)).clamp_min(tiny)                # detached scale (no grad here)
        C /= Z0[:, None, None, None]
        a = C.sum(dim=(1, 2))                                    # (N, K)
        s = a.sum(-1)                                            # (N,)
        alphaT = a / s[:, None]
        ahat = a.clamp_min(tiny)
        newcol = C / ahat[:, None, None, :]                      # (N, Lw+1, K, K)
        vec = w = None
        if self.vec is not None:
            assert v is not None, "forward_step: a stack with vectors needs the pushed vector v"
            vec = torch.cat([self.vec[:, d:], v.to(self.dtype)[:, None]], dim=1)  # (N, Lw+1, m)
            w = C.sum(2)                                         # (N, Lw+1, K)
            reading = torch.einsum("njb,njm->nbm", w, vec) / s[:, None, None]
            reading = reading.reshape(N, -1)
        else:
            reading = alphaT.clone()
        if record:
            self.rec[T] = dict(E=E, alpha=alpha, col=col, d=d, Wre=Wre, Wpo=Wpo, PhT=PhT,
                               buf=self.buf, base=self.base, cap=self.cap,
                               Z0=Z0, a=a, s=s, alphaT=alphaT, ahat=ahat, newcol=newcol,
                               vec=vec, w=w,
                               # detached: an output kept on the tape would make a
                               # tensor <-> grad_fn cycle that no garbage collector frees
                               reading=reading.detach() if vec is not None else None)
        # column t is needed by the pop term from step T+1 on (rows [lo_{T+1}, t])
        lo2 = _lo(T + 1, core.window)
        if t >= lo2:
            self._ensure(t + 1, lo2)
            assert self.buf is not None  # _ensure allocated it
            r0 = max(lo2, lo)
            blk = col[:, r0 - lo:].reshape(N, t + 1 - r0, K, Q, S).permute(0, 4, 3, 1, 2)  # (N, y, u, j, a)
            self.buf[:, :, t - self.base, :, r0 - self.base:t + 1 - self.base, :] = blk
        self.t, self.lo, self.alpha, self.col, self.vec = T, loT, alphaT, newcol, vec
        return reading

    # --------------------------------------------------------------- backward
    def backward_step(self, T: int, dR: Tensor):
        """Reverse of forward_step at time T. Returns (dE, dv)."""
        core = self.core
        K, Q, S, N = core.K, core.Q, core.S, self.N
        if self.bwd_T is not None and T >= self.bwd_T:
            self.reset_backward()                                 # a new backward pass
        self.bwd_T = T
        if self.kern is not None:
            return self._backward_compiled(T, dR)
        r = self.rec[T]
        tiny = torch.finfo(self.dtype).tiny
        t = T - 1
        loT = _lo(T, core.window)
        d = r["d"]
        Lw = t - loT + 1
        Lr = Lw - 1
        Tend = max(self.rec)
        if self.DP is None:
            self._alloc_backward(Tend)
        s, a, ahat, alphaT, newcol, Z0 = r["s"], r["a"], r["ahat"], r["alphaT"], r["newcol"], r["Z0"]
        dC = torch.zeros(N, Lw + 1, K, K, device=self.device, dtype=self.dtype)
        dalphaT = self.dalpha.pop(T, None)
        ds = torch.zeros(N, device=self.device, dtype=self.dtype)
        dv = None
        if r["vec"] is not None:
            m = core.m
            assert m is not None  # a recorded vec means the core stores vectors
            vec, w = r["vec"], r["w"]
            drho = dR.reshape(N, K, m)
            dC += (torch.einsum("nbm,njm->njb", drho, vec) / s[:, None, None])[:, :, None, :]
            j0 = loT - self.vbase
            self.dV[:, j0:j0 + Lw + 1] += torch.einsum("nbm,njb->njm", drho, w) / s[:, None, None]
            ds -= (drho.reshape(N, -1) * r["reading"]).sum(-1) / s
            dv = self.dV[:, T - self.vbase].clone()
            self.dV[:, T - self.vbase] = 0
        else:
            dalphaT = dR if dalphaT is None else dalphaT + dR
        # adjoint of the column Ĝ[., T]: direct use at step T+1 plus pop-term uses at steps >= T+2
        dM = self.dcol.pop(T, None)
        lo3 = max(_lo(T + 2, core.window), self.base)
        if Tend >= T + 2 and T >= lo3:
            L3 = T + 1 - lo3
            b = self.base
            PHc = self.PH.view(N * S, self.Jn, Q, self.Tn * Q)[
                :, T - b, :, (T + 2 - b) * Q:(Tend + 1 - b) * Q]                    # (N*S, u, (t',r))
            DPm = self.DP.view(N * S, self.Tn * Q, self.Jn * K)[
                :, (T + 2 - b) * Q:(Tend + 1 - b) * Q, (lo3 - b) * K:(T + 1 - b) * K]  # ((t',r), (j,a))
            tri_adj = torch.bmm(PHc, DPm).view(N, S, Q, L3, K).permute(0, 3, 4, 2, 1).reshape(N, L3, K, K)
            if dM is None:
                dM = torch.zeros_like(newcol)
            dM[:, lo3 - loT:] += tri_adj
        if dalphaT is not None:
            ds -= (dalphaT * alphaT).sum(-1) / s
            da = dalphaT / s[:, None] + ds[:, None]
        else:
            da = ds[:, None].expand(N, K).clone()
        if dM is not None:
            dC += dM / ahat[:, None, None, :]
            dahat = -(dM * newcol).sum(dim=(1, 2)) / ahat
            da += torch.where(a > tiny, dahat, torch.zeros_like(dahat))
        dC += da[:, None, None, :]
        dC /= Z0[:, None, None, None]
        # split into push / replace / pop contributions
        col, Wre, Wpo, E, alpha = r["col"], r["Wre"], r["Wpo"], r["E"], r["alpha"]
        dCrep = dC[:, :Lw].reshape(N, Lw * K, K)
        colw = col[:, d:].reshape(N, Lw * K, K)
        dWre = torch.bmm(colw.transpose(1, 2), dCrep)
        dcolw = torch.bmm(dCrep, Wre.transpose(1, 2))             # (N, (j,a), c)
        if Lr > 0:
            PhT = r["PhT"]
            dpopT = dC[:, :Lr].reshape(N, Lr, K, Q, S).permute(0, 4, 3, 1, 2).reshape(N * S, Q, Lr * K)
            tri = self.region(r["buf"], r["base"], loT, t)                         # (N*S, (c,u), (j,a))
            dPhT = _tri_right(dpopT, tri, Lr, Q, K)                                # (N*S, r, (c,u))
            dPhat = dPhT.view(N, S, Q, Lr, Q).permute(0, 3, 4, 1, 2).reshape(N, Lr * K, Q)
            colp = col[:, d + 1:].reshape(N, Lr * K, K)
            dWpo = torch.bmm(colp.transpose(1, 2), dPhat)
            dcolw[:, K:] += torch.bmm(dPhat, Wpo.transpose(1, 2))
            # deferred pop-term adjoint of the triangle: store dpop_T and P̂_T
            jb = loT - self.base
            self.DP[:, :, T - self.base, :, jb:jb + Lr, :] = dpopT.view(N, S, Q, Lr, K)
            self.PH[:, :, jb:jb + Lr, :, T - self.base, :] = PhT.view(N, S, Q, Lr, Q).permute(0, 1, 3, 4, 2)
        else:
            dWpo = dC.new_zeros(N, K, Q)
        dW = torch.cat([dC[:, Lw], dWre, dWpo], dim=-1)            # (N, K, 2K+Q)
        dcol = dcolw.view(N, Lw, K, K)
        if d:
            dcol = torch.cat([dcol.new_zeros(N, d, K, K), dcol], dim=1)
        dalpha = (dW * E).sum(-1)
        if t in self.dalpha:
            self.dalpha[t] = self.dalpha[t] + dalpha
        else:
            self.dalpha[t] = dalpha
        self.dcol[t] = dcol
        dE = dW * alpha[:, :, None]
        return dE, dv

    # ------------------------------------------------------- compiled step
    def _rows(self, kernel, L: int, args: tuple, per_row: frozenset):
        """Call a compiled kernel on all N strings, or on blocks of them in parallel threads (the
        kernels release the GIL; strings never interact, so the split changes no number) when
        torch may use several threads and the step is large enough to pay for the hand-off."""
        N, core = self.N, self.core
        n = min(torch.get_num_threads(), N)
        if n < 2 or N * (L + 1) ** 2 * core.K * core.Q < _SPLIT_WORK:
            kernel(*args)
            return
        from .superposition import _parallel

        edges = [round(k * N / n) for k in range(n + 1)]

        def part(a, b):
            kernel(*(x[a:b] if k in per_row else x for k, x in enumerate(args)))
        _parallel(part, list(zip(edges[:-1], edges[1:], strict=True)))

    def _pk_grow(self, need: int, keep_lo: int):
        """Room for ``need`` more elements and one more row in the packed triangle. Without
        recorded steps, rows older than ``keep_lo`` and push times before it are dropped
        (a long no-grad stream keeps O(D) rows); with them nothing moves (records refer
        to the rows by offset; the old arrays stay valid for them)."""
        N, S, K = self.N, self.core.S, self.core.K
        k0 = 0
        if not self.rec and self.nrows:
            k0 = min(max(keep_lo - self.pbase, 0), self.nrows)
        rows = max(2 * (self.nrows - k0 + 1), 64)
        roff, rj0 = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        if k0 or self.pk is None:  # compact (or start): rows [pbase + k0, ...) restricted to j >= keep_lo
            live = 0
            P = max(2 * need + 1024, self.core.pk_hint)  # the size earlier tapes of this core reached
            if self.pk is not None and self.nrows > k0:
                jlo = max(keep_lo, int(self.rj0[k0]))
                c = np.arange(self.pbase + k0, self.pbase + self.nrows)
                kept = int((c - np.maximum(jlo, self.rj0[k0:self.nrows]) + 1).sum()) * self.core.Q * K
                P = max(P, 2 * (kept + need))
                pk = torch.empty(N, S, P, dtype=self.dtype, device=self.device)
                c0 = self.pbase + k0
                live = int(self.kern._pk_copy(self.pk.numpy(), self.roff, self.rj0, self.pbase, c0,
                                              self.pbase + self.nrows, jlo, pk.numpy(), roff, rj0, K))
            else:
                pk = torch.empty(N, S, P, dtype=self.dtype, device=self.device)
            self.pbase += k0
            self.nrows -= k0
            self.pused = live
        else:                      # grow in place of nothing: copy the prefix
            P = max(2 * (self.pused + need), 1024)
            assert self.pk is not None
            pk = torch.empty(N, S, P, dtype=self.dtype, device=self.device)
            pk[:, :, :self.pused] = self.pk[:, :, :self.pused]
            roff[:self.nrows], rj0[:self.nrows] = self.roff[:self.nrows], self.rj0[:self.nrows]
        self.pk, self.roff, self.rj0 = pk, roff, rj0
        self.core.pk_hint = max(self.core.pk_hint, pk.shape[2])

    def _insert_column(self, col, t, lo):
        """Column t of the triangle (needed by the pop term from step t+2 on) as the next packed row block."""
        core = self.core
        lo2 = _lo(t + 2, core.window)
        if t < lo2:
            return
        r0 = max(lo2, lo)
        ln = t - r0 + 1
        need = core.Q * ln * core.K
        if self.nrows == 0:
            self.pbase = t
        if self.pk is None or self.pused + need > self.pk.shape[2]:
            self._pk_grow(need, lo2)
            if self.nrows == 0:
                self.pbase = t
        if self.nrows >= len(self.roff):  # a longer row table (the triangle itself stays)
            rows = max(2 * len(self.roff), 64)
            self.roff = np.concatenate([self.roff[:self.nrows], np.zeros(rows - self.nrows, dtype=np.int64)])
            self.rj0 = np.concatenate([self.rj0[:self.nrows], np.zeros(rows - self.nrows, dtype=np.int64)])
        assert self.pk is not None and t == self.pbase + self.nrows
        self.roff[self.nrows], self.rj0[self.nrows] = self.pused, r0
        self.kern._pk_insert(col.numpy(), r0 - lo, self.pk.numpy(), self.pused, ln)
        self.nrows += 1
        self.pused += need

    def _forward_compiled(self, E: Tensor, v: Tensor | None, record: bool):
        """:meth:`forward_step` by the compiled kernel (same state, same records' meaning)."""
        core = self.core
        K, Q, S, N, m = core.K, core.Q, core.S, self.N, core.m or 0
        t, lo = self.t, self.lo
        T = t + 1
        loT = _lo(T, core.window)
        d = loT - lo
        Lw = t - loT + 1
        Lr = Lw - 1
        E = E.detach().contiguous()
        new = functools.partial(torch.empty, dtype=self.dtype, device=self.device)
        newcol, a, s, Z0 = new(N, Lw + 1, K, K), new(N, K), new(N), new(N)
        alphaT, ahat = new(N, K), new(N, K)
        PhT = new(N, S, Q, max(Lr, 0) * Q)
        if m:
            assert v is not None, "forward_step: a stack with vectors needs the pushed vector v"
            vec, w, reading = new(N, Lw + 1, m), new(N, Lw + 1, K), new(N, K * m)
            vold, vin = self.vec.contiguous(), v.detach().to(self.dtype).contiguous()
        else:
            vec = w = vold = vin = new(0, 0, 0)
            reading = new(N, K)
        pk = self.pk if self.pk is not None else new(N, S, 0)
        tiny = np.array(torch.finfo(self.dtype).tiny, dtype=_NP[self.dtype]).item()
        if Lw >= _GEMM_MIN:  # replace term and P̂ as batched GEMMs (faster than the loops for long columns)
            W = self.alpha[:, :, None] * E[..., K:]
            Cre = torch.bmm(self.col[:, d:].reshape(N, Lw * K, K), W[..., :K]).view(N, Lw, K, K)
            if Lr > 0:  # PhT[:, y, r, c*Q + u] = P̂[c+1][(u,y), r]
                Ph = torch.bmm(self.col[:, d + 1:].reshape(N, Lr * K, K), W[..., K:]).view(N, Lr, Q, S, Q)
                PhT.view(N, S, Q, Lr, Q).copy_(Ph.permute(0, 3, 4, 1, 2))
        else:
            Cre = new(0, 0, 0, 0)
        self._rows(self.kern._forward, Lw, (
            E.numpy(), self.alpha.numpy(), self.col.numpy(), d, pk.numpy(), self.roff, self.rj0, self.pbase, loT, Lw,
            Cre.numpy(), vold.numpy(), vin.numpy() if m else vin.view(0, 0).numpy(), m, newcol.numpy(),
            a.numpy(), s.numpy(), Z0.numpy(), alphaT.numpy(), ahat.numpy(), PhT.numpy(),
            w.numpy(), vec.numpy(), reading.numpy(), _NP[self.dtype](tiny)), self.kern.FORWARD_ROWS)
        if record:
            self.rec[T] = dict(E=E, alpha=self.alpha, col=self.col, d=d, PhT=PhT, pk=pk, roff=self.roff,
                               rj0=self.rj0, pbase=self.pbase,
                               Z0=Z0, a=a, s=s, alphaT=alphaT, ahat=ahat, newcol=newcol,
                               vec=vec if m else None, w=w, reading=reading.clone() if m else None)
        self._insert_column(self.col, t, lo)
        self.t, self.lo, self.alpha, self.col, self.vec = T, loT, alphaT, newcol, (vec if m else None)
        return reading

    def _backward_compiled(self, T: int, dR: Tensor):
        """:meth:`backward_step` by the compiled kernel (called by it, after the new-pass check)."""
        core = self.core
        K, Q, N, m = core.K, core.Q, self.N, core.m or 0
        r = self.rec[T]
        t = T - 1
        loT = _lo(T, core.window)
        Lw = t - loT + 1
        Tend = max(self.rec)
        if self.DP is None:
            self._alloc_backward(Tend, fill=False)  # the kernel writes every entry it reads
            self.bwd_top = T                        # the last step of this pass
            self._pack_dp(T)
        new = functools.partial(torch.empty, dtype=self.dtype, device=self.device)
        dalphaT = self.dalpha.pop(T, None)
        dM = self.dcol.pop(T, None)
        b = self.base
        lo3 = max(_lo(T + 2, core.window), b)
        # later steps t' whose pop term used column T: t' in [T + 2, top], lo_t' <= T
        top = self.bwd_top if core.window is None else min(self.bwd_top, T + core.window - 1)
        adj = top >= T + 2 and T >= lo3
        adj_lo, adj_hi = (T + 2 - b, top + 1 - b) if adj else (0, 0)
        col = r["col"]
        dE, dcol, dalpha = new(N, K, 2 * K + Q), new(col.shape), new(N, K)
        gemm = Lw >= _GEMM_MIN
        dCre = new(N, Lw, K, K) if gemm else new(0, 0, 0, 0)
        empty = new(0, 0)
        if m:
            dV, j0 = self.dV, loT - self.vbase
        else:
            dV, j0 = new(0, 0, 0), 0
        tiny = np.array(torch.finfo(self.dtype).tiny, dtype=_NP[self.dtype]).item()
        vec = r["vec"] if m else new(0, 0, 0)
        self._rows(self.kern._backward, Lw, (
            r["E"].numpy(), r["alpha"].numpy(), col.numpy(), r["d"], r["pk"].numpy(), r["roff"], r["rj0"],
            r["pbase"], loT, Lw,
            r["PhT"].numpy(), r["Z0"].numpy(), r["a"].numpy(), r["s"].numpy(), r["alphaT"].numpy(),
            r["ahat"].numpy(), r["newcol"].numpy(), vec.numpy(), r["w"].numpy(),
            (r["reading"] if m else empty).numpy(), m, dR.detach().contiguous().numpy(),
            (empty if dalphaT is None else dalphaT.contiguous()).numpy(), dalphaT is not None,
            (new(0, 0, 0, 0) if dM is None else dM.contiguous()).numpy(), dM is not None,
            self.DP.numpy(), self.doff, self.dj0, self.dlen, self.PH.numpy(), T - b, loT - b,
            adj_lo, adj_hi, lo3 - b, dV.numpy(), j0, dE.numpy(), dcol.numpy(), dalpha.numpy(), dCre.numpy(),
            _NP[self.dtype](tiny)), self.kern.BACKWARD_ROWS)
        if gemm:  # the replace products as batched GEMMs: dcol += dC Wre^T, dWre = col^T dC
            E, alpha, d = r["E"], r["alpha"], r["d"]
            Wre = alpha[:, :, None] * E[..., K:2 * K]
            dC2 = dCre.view(N, Lw * K, K)
            dcol[:, d:].view(N, Lw * K, K).add_(torch.bmm(dC2, Wre.transpose(1, 2)))
            dWre = torch.bmm(col[:, d:].reshape(N, Lw * K, K).transpose(1, 2), dC2)
            dE[..., K:2 * K] = dWre * alpha[:, :, None]
            dalpha += (dWre * E[..., K:2 * K]).sum(-1)
        dv = None
        if m:
            dv = self.dV[:, T - self.vbase].clone()
            self.dV[:, T - self.vbase] = 0
        if t in self.dalpha:
            self.dalpha[t] = self.dalpha[t] + dalpha
        else:
            self.dalpha[t] = dalpha
        self.dcol[t] = dcol
        return dE, dv

    def _pack_dp(self, top: int):
        """Compiled backward: DP packed, the row block of step t' (Q rows of its Lr push times
        from lo_t') for t' = top, top - 1, ... one after the other (the order they are written)."""
        core = self.core
        b, n = self.base, self.Tn
        self.doff, self.dj0, self.dlen = (np.zeros(n, dtype=np.int64) for _ in range(3))
        off = 0
        for tq in range(top, b - 1, -1):
            lo = _lo(tq, core.window)
            Lr = max(tq - 1 - lo, 0)
            self.doff[tq - b], self.dj0[tq - b], self.dlen[tq - b] = off, lo - b, Lr
            off += core.Q * Lr * core.K
        self.DP = torch.empty(self.N, core.S, max(off, 1), device=self.device, dtype=self.dtype)

    def _alloc_backward(self, Tend: int, fill: bool = True):
        core = self.core
        N, S, K, Q = self.N, core.S, core.K, core.Q
        n = Tend + 1 - self.base
        self.Jn = self.Tn = n
        # DP[:, y, t', r, j, a] = dpop_t'[j][a, (r, y)];  PH[:, y, c, u, t', r] = P̂_t'[c+1][(u, y), r]
        make = torch.zeros if fill else torch.empty
        if fill:  # (the compiled backward packs DP: _pack_dp)
            self.DP = torch.zeros(N, S, n, Q, n, K, device=self.device, dtype=self.dtype)
        self.PH = make(N, S, n, Q, n, Q, device=self.device, dtype=self.dtype)
        if core.m:
            self.vbase = self.t0_lo                  # vectors of push times >= t0_lo live here
            self.dV = torch.zeros(N, Tend + 1 - self.vbase, core.m, device=self.device, dtype=self.dtype)


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, token, tape, kind):
        E = _weights(x, kind)
        ctx.tape, ctx.T, ctx.kind = tape, tape.t + 1, kind
        reading = tape.forward_step(E, v, record=True)
        ctx.has_v = v is not None
        ctx.save_for_backward(x) if kind == "weights" else None
        return reading, reading.new_zeros(())

    @staticmethod
    def backward(ctx, dR, dtoken):
        tape = ctx.tape
        dE, dv = tape.backward_step(ctx.T, dR.contiguous())
        E = tape.rec[ctx.T]["E"]
        if ctx.kind == "logits":
            dx = dE * E
        else:
            (x,) = ctx.saved_tensors
            dx = dE / _wscale(x)
        return dx, (dv if ctx.has_v else None), None, None, None


class _InitFn(torch.autograd.Function):
    """VRNS only: makes the bottom vector part of the graph (reading 0 and v_0)."""

    @staticmethod
    def forward(ctx, bottom, tape):
        ctx.tape = tape
        N, K, m = tape.N, tape.core.K, tape.core.m
        r0 = torch.zeros(N, K, m, device=bottom.device, dtype=tape.dtype)
        r0[:, 0] = bottom
        return r0.reshape(N, K * m), bottom.new_zeros(())

    @staticmethod
    def backward(ctx, dR0, dtoken):
        tape = ctx.tape
        core = tape.core
        g = dR0.reshape(tape.N, core.K, core.m)[:, 0].clone()
        if tape.dV is not None:
            g += tape.dV[:, 0 - tape.vbase]
        return g, None


_BLOCKS = 4          # row blocks used to skip the zero half (j > c) of the triangle
_BLOCK_MIN = 32      # below this many push times one GEMM is cheaper


def _bounds(L):
    nb = _BLOCKS if L >= _BLOCK_MIN else 1
    return [round(L * b / nb) for b in range(nb + 1)]


def _tri_left(X, tri, L, Q, K):
    """X (B, R, L*Q) @ tri (B, L*Q, L*K) where tri[(c,u),(j,a)] = 0 for j > c."""
    bd = _bounds(L)
    if len(bd) == 2:
        return torch.bmm(X, tri)
    out = X.new_zeros(X.shape[0], X.shape[1], L * K)
    for b0, b1 in zip(bd[:-1], bd[1:], strict=True):  # rows c in [b0, b1) only reach j < b1
        out[:, :, :b1 * K] += torch.bmm(X[:, :, b0 * Q:b1 * Q], tri[:, b0 * Q:b1 * Q, :b1 * K])
    return out


def _tri_right(Y, tri, L, Q, K):
    """Y (B, R, L*K) @ tri^T (B, L*K, L*Q), same zero pattern as _tri_left."""
    bd = _bounds(L)
    if len(bd) == 2:
        return torch.bmm(Y, tri.transpose(1, 2))
    return torch.cat([torch.bmm(Y[:, :, :b1 * K], tri[:, b0 * Q:b1 * Q, :b1 * K].transpose(1, 2))
                      for b0, b1 in zip(bd[:-1], bd[1:], strict=True)], dim=2)


def _wscale(x):
    return x.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _weights(x, kind):
    if kind == "logits":
        return torch.exp(x - x.amax(dim=(1, 2), keepdim=True))
    return x / _wscale(x)


class RNSCore:
    """RNS (``m=None``) or VRNS (``m`` = vector size); optional window ``D``."""

    def __init__(self, Q: int, S: int, m: int | None = None, window: int | None = None,
                 bottom: str = "equations", compiled: bool | None = None):
        if Q < 1 or S < 1:
            raise ValueError("Q and S must be positive")
        if bottom not in BOTTOM_LAYOUTS or (bottom == "published" and not m):
            raise ValueError(f"bottom={bottom!r}: valid layouts are {', '.join(BOTTOM_LAYOUTS)} "
                             "('published' only for the VRNS)")
        self.bottom = bottom  # where the bottom vector sits in zeta[-1->0] (see _PublishedBottom)
        if window is not None and window < 1:
            raise ValueError("window must be >= 1")
        if m is not None and m < 1:
            raise ValueError("m must be positive")
        self.Q, self.S, self.m, self.window = Q, S, m, window
        self.compiled = compiled  # None: compiled_default(); False: always the torch reference
        self.pk_hint = 0  # compiled step: packed-triangle size (per string and symbol) a tape reached
        self.K = Q * S
        self.num_actions = self.K * (2 * self.K + Q)
        self.reading_size = self.K * (m if m else 1)
        self.pushed_size = m if m else 0

    def kernels(self, device, dtype):
        """The compiled step module for a tape on ``device`` / ``dtype``, or None (torch reference)."""
        use = compiled_default() if self.compiled is None else self.compiled
        if not use:
            return None
        kern = _kernels()
        return kern if kern is not None and kern.usable(device, dtype) else None

    # ------------------------------------------------------------------ state
    def initial_state(self, N, device=None, dtype=torch.float32, bottom=None) -> RNSState:
        K = self.K
        if bottom is not None and device is None:
            device = bottom.device
        alpha = torch.zeros(N, K, device=device, dtype=dtype)
        alpha[:, 0] = 1
        col = torch.zeros(N, 1, K, K, device=device, dtype=dtype)
        col[:, 0, 0, 0] = 1
        vec = None
        if self.m:
            if bottom is None:
                raise ValueError("VRNS needs a bottom vector (N, m)")
            bottom = bottom.expand(N, self.m)
            vec = bottom.detach().to(dtype).reshape(N, 1, self.m)
        tape = _Tape(self, N, device, dtype, alpha, col, vec, 0, 0)
        token, reading0 = None, None
        if self.m:
            if torch.is_grad_enabled() and bottom.requires_grad:
                reading0, token = _InitFn.apply(bottom, tape)
            else:
                reading0 = torch.zeros(N, K, self.m, device=device, dtype=dtype)
                reading0[:, 0] = bottom.detach()
                reading0 = reading0.reshape(N, -1)
        published = None
        if self.bottom == "published":  # the bottom vector at every (state, symbol) of time 0
            rest = torch.ones(K, device=device, dtype=dtype)
            rest[0] = 0
            reading0 = reading0 + (rest[None, :, None] * bottom.to(dtype)[:, None, :]).reshape(N, -1)
            published = _PublishedBottom(self, bottom, device)
        return RNSState(tape, 0, token, reading0, published)

    def initial_reading(self, state: RNSState) -> Tensor:
        if state.reading0 is not None:
            return state.reading0
        if state.t != 0:
            raise ValueError("initial_reading needs the initial state")
        N, K = state.tape.N, self.K
        r = torch.zeros(N, K, device=state.tape.device, dtype=state.tape.dtype)
        r[:, 0] = 1
        return r

    def detach_state(self, state: RNSState) -> RNSState:
        tape = state.tape
        if tape.t != state.t:
            raise ValueError("detach_state: this state has already been advanced")
        t = tape.t
        lo1 = _lo(t + 1, self.window)
        new = _Tape(self, tape.N, tape.device, tape.dtype, tape.alpha.detach(), tape.col.detach(),
                    None if tape.vec is None else tape.vec.detach(), t, lo1)
        new.kern = tape.kern  # a continuation keeps its path (the two keep the triangle differently)
        if tape.buf is not None and t - 1 >= lo1:
            new._ensure(t, lo1)
            assert new.buf is not None  # _ensure allocated it
            new.buf[:, :, :t - lo1, :, :t - lo1] = tape.buf[
                :, :, lo1 - tape.base:t - tape.base, :, lo1 - tape.base:t - tape.base]  # same layout
        if tape.pk is not None and t - 1 >= lo1:  # compiled: rows [lo1, t) from push time lo1 on
            rows = max(2 * (t - lo1 + 1), 16)
            new.roff, new.rj0 = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
            size = self.Q * self.K * sum(c - lo1 + 1 for c in range(lo1, t))
            new.pk = torch.empty(tape.N, self.S, max(2 * size, 1024), dtype=tape.dtype, device=tape.device)
            new.pused = int(tape.kern._pk_copy(tape.pk.numpy(), tape.roff, tape.rj0, tape.pbase, lo1, t, lo1,
                                               new.pk.numpy(), new.roff, new.rj0, self.K))
            new.pbase, new.nrows = lo1, t - lo1
        published = None if state.published is None else state.published.detached()
        return RNSState(new, t, None, None, published)

    # ------------------------------------------------------------------ step
    def step(self, state: RNSState, action_logits: Tensor, pushed: Tensor | None = None):
        N = action_logits.shape[0]
        x = action_logits.reshape(N, self.K, 2 * self.K + self.Q)
        return self._advance(state, x, pushed, "logits")

    def _advance(self, state: RNSState, x: Tensor, pushed, kind):
        tape = state.tape
        if tape.t != state.t:
            raise ValueError("this RNS state has already been advanced (states are single-use; "
                             "use detach_state to fork)")
        if self.m and pushed is None:
            raise ValueError("VRNS step needs a pushed vector (N, m)")
        if x.dtype != tape.dtype:
            x = x.to(tape.dtype)
        tok = state.token
        need = torch.is_grad_enabled() and (
            x.requires_grad or (pushed is not None and pushed.requires_grad)
            or (tok is not None and tok.requires_grad))
        if need:
            v = pushed if pushed is None else pushed.to(tape.dtype)
            if tok is None:
                tok = x.new_zeros(())
            reading, token = _StepFn.apply(x, v, tok, tape, kind)
        else:
            with torch.no_grad():
                reading = tape.forward_step(_weights(x.detach(), kind),
                                            None if pushed is None else pushed.detach(), record=False)
            token = tok
        published = state.published
        if published is not None:
            term, done = published.step(x, kind)
            if term is not None:
                reading = reading + term.to(reading.dtype)
            published = None if done else published
        return reading, RNSState(tape, tape.t, token, None, published)


def _split_actions(push, repl, pop):
    B, n, Q, S = pop.shape[:4]
    K = Q * S
    return torch.cat([push.reshape(B, n, K, K), repl.reshape(B, n, K, K), pop.reshape(B, n, K, Q)], dim=-1)


def rns_readings(push, repl, pop, *, log=False, pushed=None, bottom=None, window=None, layout="equations"):
    """Readings of a (V)RNS driven by given action weights (functional core).

    push, repl: (B, n, Q, S, Q, S) and pop: (B, n, Q, S, Q): positive weights, or
    their logs when ``log=True`` (weights ``[..., q, x, r, y]`` are for the move
    from (state q, top x) to state r with new top y).  VRNS: ``pushed`` (B, n, m)
    and ``bottom`` (B, m).  ``window``: D of the windowed variant.  ``layout``:
    VRNS bottom vector as the equations place it or as the published code did
    (:data:`BOTTOM_LAYOUTS`, :class:`_PublishedBottom`).
    Returns (B, n+1, Q*S) -- VRNS (B, n+1, Q*S*m) -- index 0 is the initial reading.
    """
    B, n, Q, S = pop.shape[:4]
    m = None if pushed is None else pushed.shape[-1]
    core = RNSCore(Q, S, m, window, bottom=layout)
    A = _split_actions(push, repl, pop)                        # (B, n, K, 2K+Q)
    state = core.initial_state(B, A.device, A.dtype, bottom)
    out = [core.initial_reading(state)]
    kind = "logits" if log else "weights"
    for t in range(n):
        r, state = core._advance(state, A[:, t], None if pushed is None else pushed[:, t], kind)
        out.append(r)
    return torch.stack(out, 1)


# ----------------------------------------------------------------------------- benchmark
def _benchmark(threads: int = 1, reps: int = 3):  # pragma: no cover - manual tool
    """``python marnn/models/rns.py [threads]``: timings quoted in the report (CPU)."""
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def best(f, r=reps):
        ts = []
        for _ in range(r):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    def stack_fb(Q, S, m, B, n, window=None, grad=True):
        core = RNSCore(Q, S, m, window)
        lg = torch.randn(B, n, core.num_actions, requires_grad=grad)
        v = torch.rand(B, n, m, requires_grad=grad) if m else None
        bt = torch.rand(B, m, requires_grad=grad) if m else None

        def f():
            with torch.set_grad_enabled(grad):
                st = core.initial_state(B, None, torch.float32, bt)
                rs = [core.initial_reading(st)]
                lgs = lg.unbind(1)
                vs = None if v is None else v.unbind(1)
                for t in range(n):
                    r, st = core.step(st, lgs[t], None if v is None else vs[t])
                    rs.append(r)
                out = torch.stack(rs, 1)
                if grad:
                    out.square().sum().backward()
        return f

    def train_step(Q, S, B, n, H=20, V=3):
        core = RNSCore(Q, S)
        cell = torch.nn.LSTMCell(V + core.reading_size, H)
        act = torch.nn.Linear(H, core.num_actions)
        outl = torch.nn.Linear(H, V + 1)
        params = [*cell.parameters(), *act.parameters(), *outl.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3)
        x = torch.nn.functional.one_hot(torch.randint(0, V, (B, n)), V).float()
        y = torch.randint(0, V + 1, (B, n + 1))

        def f():
            opt.zero_grad()
            h = c = torch.zeros(B, H)
            st = core.initial_state(B, None, torch.float32)
            r = core.initial_reading(st)
            logits = [outl(h)]
            for t in range(n):
                if t > 0:
                    r, st = core.step(st, act(h))
                h, c = cell(torch.cat([x[:, t], r], -1), (h, c))
                logits.append(outl(h))
            loss = torch.nn.functional.cross_entropy(torch.stack(logits, 1).reshape(-1, V + 1), y.reshape(-1))
            loss.backward()
            opt.step()
        return f

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, best of {reps}")
    for n in (40, 60, 80):
        print(f"rns-3-3  stack fwd+bwd      B=10 n={n}: {best(stack_fb(3, 3, None, 10, n)):.3f} s")
    for n in (40, 60, 80):
        print(f"rns-3-3  LSTM+stack Adam step B=10 H=20 n={n}: {best(train_step(3, 3, 10, n)):.3f} s")
    print(f"rns-3-3  eval (no grad)  B=1 n=400: {best(stack_fb(3, 3, None, 1, 400, grad=False)):.3f} s")
    print(f"rns-4-5  D=35 stack fwd+bwd 32x35: {best(stack_fb(4, 5, None, 32, 35, 35)):.3f} s")
    print(f"vrns-3-3-5 D=35 stack fwd+bwd 32x35: {best(stack_fb(3, 3, 5, 32, 35, 35)):.3f} s")
    print(f"vrns-2-3-3 stack fwd+bwd B=10 n=60: {best(stack_fb(2, 3, 3, 10, 60)):.3f} s")


if __name__ == "__main__":  # pragma: no cover
    import sys

    _benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
