r"""The RNS / VRNS step on a renormalised tape, with a hand-written backward pass.

The maths is :mod:`marnn.models.rns` (the recurrences and their renormalised
form, in its docstring); :class:`marnn.models.rns.RNSCore` keeps one
:class:`Tape` per batch of stacks and advances it one step at a time
(:class:`StepFn`). ``forward_step`` / ``backward_step`` in torch are the reference
that the compiled kernels (:mod:`marnn.kernels.rns_numba`) are tested against.

Autograd: a hand-written backward on a tape
-------------------------------------------
Recording the pop term with autograd would save a copy of the O(t^2) triangle
at every step (O(n^3) memory).  Instead every ``step`` is one
``torch.autograd.Function`` whose state lives in a shared :class:`Tape`; a dummy
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
``backward_step`` run as two compiled kernels (:mod:`marnn.kernels.rns_numba`):
each string goes through the whole step in one loop nest, the triangle is kept
*packed* (each column's rows one after the other, only the push times still in
the window) instead of in ``buf``, DP likewise, and blocks of strings run in
parallel threads when torch may use several. The replace products and ``P̂``
(``O(L K^3)``, small GEMMs), forward and backward, stay batched ``torch.bmm`` calls
once a column holds ``_GEMM_MIN`` push times; the kernels do the pop term (sweeps of
the packed triangle, the lower half only), the normalisation and their adjoints. The torch
code of ``forward_step`` / ``backward_step`` stays as the reference it is tested
against (``tests/test_rns_compiled.py``: values and every gradient equal to
float64 rounding); ``RNSCore(compiled=False)``, the model
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

from . import arrays, backend, rns_numba
from .backend import parallel

Tensor = torch.Tensor
_NP = {torch.float32: np.float32, torch.float64: np.float64}
_GEMM_MIN = 4  # compiled step: push times from which the replace products go to torch.bmm
_SPLIT_WORK = 200_000  # N (L+1)^2 K Q below this: one thread (a hand-off costs more than it saves)


def _kernels():
    """The compiled step (:mod:`marnn.kernels.rns_numba`) or None (no Numba)."""
    return rns_numba if rns_numba.AVAILABLE else None


def compiled_default() -> bool:
    """Whether cores built with ``compiled=None`` use the compiled step where it applies:
    yes unless :data:`marnn.kernels.backend.FUSED_BACKEND` (``$MARNN_FUSED_BACKEND``) asks
    for a reference backend ("numpy" or "torch"), the same switch as the fused LSTM kernel."""
    return backend.FUSED_BACKEND == "auto"


def step_kernels(compiled: bool | None, device, dtype):
    """The compiled step module for a tape on ``device`` / ``dtype``, or None (the torch reference).
    ``compiled``: the core's choice (None: :func:`compiled_default`; False: always the reference)."""
    use = compiled_default() if compiled is None else compiled
    if not use:
        return None
    kern = _kernels()
    return kern if kern is not None and kern.usable(device, dtype) else None


def _row_block(core, ln):
    """Elements of one row block of the packed triangle holding ``ln`` push times
    (:func:`marnn.kernels.rns_numba._row_start`): Q rows of ln K numbers and their zeros."""
    return core.Q * (ln * core.K + rns_numba.PAD)


def window_lo(t: int, window: int | None) -> int:
    """First push time kept at time t."""
    return 0 if window is None else max(0, t - window + 1)


class Tape:
    """Forward state of one (batched) stack plus what the backward needs."""

    def __init__(self, core, N: int, device, dtype, alpha, col, vec, t, base):
        self.core, self.N, self.device, self.dtype = core, N, device, dtype
        self.t = t
        self.lo = window_lo(t, core.window)
        self.t0_lo = self.lo        # first push time whose vector this tape holds
        self.alpha = alpha          # (N, K)
        self.col = col              # (N, L, K, K) push times [lo, t]
        self.vec = vec              # (N, L, m) | None
        self.base = base            # absolute time of buffer index 0
        self.cap = 0
        self.buf: Tensor | None = None  # (N, S, cap, Q, cap, K): buf[:, y, c, u, j, a] = Ĝ[j, c][a, (u, y)]
        self.rec: dict[int, dict] = {}  # T -> saved tensors of step T
        self.kern = step_kernels(core.compiled, device, dtype)  # the compiled step, or None: the torch reference
        # compiled step: the triangle packed row block after row block (rns_numba._row_start)
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

    def detached(self) -> Tape:
        """A new tape that continues from this one's current time with no graph behind it
        (what ``RNSCore.detach_state`` hands on to the next chunk)."""
        core, t = self.core, self.t
        lo1 = window_lo(t + 1, core.window)
        new = Tape(core, self.N, self.device, self.dtype, self.alpha.detach(), self.col.detach(),
                   None if self.vec is None else self.vec.detach(), t, lo1)
        new.kern = self.kern  # a continuation keeps its path (the two keep the triangle differently)
        if self.buf is not None and t - 1 >= lo1:
            new._ensure(t, lo1)
            assert new.buf is not None  # _ensure allocated it
            new.buf[:, :, :t - lo1, :, :t - lo1] = self.buf[
                :, :, lo1 - self.base:t - self.base, :, lo1 - self.base:t - self.base]  # same layout
        if self.pk is not None and t - 1 >= lo1:  # compiled: rows [lo1, t) from push time lo1 on
            rows = max(2 * (t - lo1 + 1), 16)
            new.roff, new.rj0 = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
            size = sum(_row_block(core, c - lo1 + 1) for c in range(lo1, t))
            new.pk = arrays.empty(self.N, core.S, max(2 * size, 1024), dtype=self.dtype, device=self.device)
            new.pused = int(self.kern._pk_copy(self.pk.numpy(), self.roff, self.rj0, self.pbase, lo1, t, lo1,
                                               new.pk.numpy(), new.roff, new.rj0, core.K))
            new.pbase, new.nrows = lo1, t - lo1
        return new

    def snapshot(self) -> dict:
        """This tape as plain tensors and numbers (``torch.save(..., weights_only=True)`` takes
        them), for a PTB group's state saved inside an epoch: only a tape that
        :meth:`detached` made and nothing has advanced since (no graph, no backward
        state). The triangle is kept as far as it is used; :meth:`restore` gives it back
        with the same capacity, so the continuation's numbers are the same bit for bit."""
        if self.rec or self.dalpha or self.dcol or self.bwd_T is not None:
            raise ValueError("Tape.snapshot: only a detached tape that has not advanced can be saved")
        snap: dict = {"N": self.N, "dtype": str(self.dtype).removeprefix("torch."), "t": self.t, "base": self.base,
                      "alpha": self.alpha.detach().cpu().clone(), "col": self.col.detach().cpu().clone(),
                      "vec": None if self.vec is None else self.vec.detach().cpu().clone(),
                      "compiled": self.kern is not None, "cap": self.cap, "buf": None, "pk": None}
        if self.buf is not None:  # the reference path: rows and columns [base, t) are all it holds
            n = self.t - self.base
            snap["buf"] = self.buf[:, :, :n, :, :n].cpu().clone()
        if self.pk is not None:   # the compiled path: the packed triangle up to pused, its row table
            snap.update(pk=self.pk[..., :self.pused].cpu().clone(), pk_cap=int(self.pk.shape[-1]),
                        roff=torch.from_numpy(self.roff.copy()), rj0=torch.from_numpy(self.rj0.copy()),
                        pbase=int(self.pbase), nrows=int(self.nrows), pused=int(self.pused))
        return snap

    @classmethod
    def restore(cls, core, snap: dict, device=None) -> Tape:
        """The tape a :meth:`snapshot` holds, for ``core`` on ``device``."""
        dtype = getattr(torch, snap["dtype"])
        vec = None if snap["vec"] is None else snap["vec"].to(device)
        tape = cls(core, snap["N"], device, dtype, snap["alpha"].to(device), snap["col"].to(device), vec,
                   snap["t"], snap["base"])
        if snap["compiled"] and tape.kern is None:
            raise ValueError("this saved RNS state comes from the compiled step, which is not available here "
                             "(Numba missing or $MARNN_FUSED_BACKEND set); resume where it was saved")
        if not snap["compiled"]:
            tape.kern = None
        if snap["buf"] is not None:
            n, cap = snap["buf"].shape[2], snap["cap"]
            tape.buf = torch.zeros(tape.N, core.S, cap, core.Q, cap, core.K, device=device, dtype=dtype)
            tape.buf[:, :, :n, :, :n] = snap["buf"].to(device)
            tape.cap = cap
        if snap["pk"] is not None:
            used = snap["pused"]
            tape.pk = arrays.empty(tape.N, core.S, snap["pk_cap"], dtype=dtype, device=device)
            tape.pk[..., :used] = snap["pk"].to(device)
            tape.roff, tape.rj0 = snap["roff"].numpy().copy(), snap["rj0"].numpy().copy()
            tape.pbase, tape.nrows, tape.pused = snap["pbase"], snap["nrows"], used
        return tape

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
        loT = window_lo(T, core.window)
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
        lo2 = window_lo(T + 1, core.window)
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
        loT = window_lo(T, core.window)
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
        lo3 = max(window_lo(T + 2, core.window), self.base)
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
        edges = [round(k * N / n) for k in range(n + 1)]

        def part(a, b):
            kernel(*(x[a:b] if k in per_row else x for k, x in enumerate(args)))
        parallel(part, list(zip(edges[:-1], edges[1:], strict=True)))

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
                kept = int(_row_block(self.core, c - np.maximum(jlo, self.rj0[k0:self.nrows]) + 1).sum())
                P = max(P, 2 * (kept + need))
                pk = arrays.empty(N, S, P, dtype=self.dtype, device=self.device)
                c0 = self.pbase + k0
                live = int(self.kern._pk_copy(self.pk.numpy(), self.roff, self.rj0, self.pbase, c0,
                                              self.pbase + self.nrows, jlo, pk.numpy(), roff, rj0, K))
            else:
                pk = arrays.empty(N, S, P, dtype=self.dtype, device=self.device)
            self.pbase += k0
            self.nrows -= k0
            self.pused = live
        else:                      # grow in place of nothing: copy the prefix
            P = max(2 * (self.pused + need), 1024)
            assert self.pk is not None
            pk = arrays.empty(N, S, P, dtype=self.dtype, device=self.device)
            pk[:, :, :self.pused] = self.pk[:, :, :self.pused]
            roff[:self.nrows], rj0[:self.nrows] = self.roff[:self.nrows], self.rj0[:self.nrows]
        self.pk, self.roff, self.rj0 = pk, roff, rj0
        self.core.pk_hint = max(self.core.pk_hint, pk.shape[2])

    def _insert_column(self, col, t, lo):
        """Column t of the triangle (needed by the pop term from step t+2 on) as the next packed row block."""
        core = self.core
        lo2 = window_lo(t + 2, core.window)
        if t < lo2:
            return
        r0 = max(lo2, lo)
        ln = t - r0 + 1
        need = _row_block(core, ln)
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
        loT = window_lo(T, core.window)
        d = loT - lo
        Lw = t - loT + 1
        Lr = Lw - 1
        E = E.detach().contiguous()
        new = functools.partial(arrays.empty, dtype=self.dtype, device=self.device)
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
        loT = window_lo(T, core.window)
        Lw = t - loT + 1
        Tend = max(self.rec)
        if self.DP is None:
            self._alloc_backward(Tend, fill=False)  # the kernel writes every entry it reads
            self.bwd_top = T                        # the last step of this pass
            self._pack_dp(T)
        new = functools.partial(arrays.empty, dtype=self.dtype, device=self.device)
        dalphaT = self.dalpha.pop(T, None)
        dM = self.dcol.pop(T, None)
        b = self.base
        lo3 = max(window_lo(T + 2, core.window), b)
        # later steps t' whose pop term used column T: t' in [T + 2, top], lo_t' <= T
        top = self.bwd_top if core.window is None else min(self.bwd_top, T + core.window - 1)
        adj = top >= T + 2 and T >= lo3
        adj_lo, adj_hi = (T + 2 - b, top + 1 - b) if adj else (0, 0)
        col = r["col"]
        dE, dcol, dalpha = new(N, K, 2 * K + Q), new(col.shape), new(N, K)
        gemm = Lw >= _GEMM_MIN
        Lr = Lw - 1
        dCre = new(N, Lw, K, K) if gemm else new(0, 0, 0, 0)
        dPh = new(N, core.S, Q, Lr * Q) if gemm else new(0, 0, 0, 0)
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
            dPh.numpy(), _NP[self.dtype](tiny)), self.kern.BACKWARD_ROWS)
        if gemm:  # the replace and P̂ products as batched GEMMs: dcol += dC Wre^T + dP̂ Wpo^T, ...
            E, alpha, d = r["E"], r["alpha"], r["d"]
            W = alpha[:, :, None] * E[..., K:]
            dC2 = dCre.view(N, Lw * K, K)
            dcol[:, d:].view(N, Lw * K, K).add_(torch.bmm(dC2, W[..., :K].transpose(1, 2)))
            dWre = torch.bmm(col[:, d:].reshape(N, Lw * K, K).transpose(1, 2), dC2)
            dWo = [dWre]
            if Lr > 0:  # dPhat[(c, u, y), r]: the gradient of P̂[c+1][(u,y), r] (PhT's layout permuted)
                dPhat = dPh.view(N, core.S, Q, Lr, Q).permute(0, 3, 4, 1, 2).reshape(N, Lr * K, Q)
                dcol[:, d + 1:].view(N, Lr * K, K).baddbmm_(dPhat, W[..., K:].transpose(1, 2))
                dWo.append(torch.bmm(col[:, d + 1:].reshape(N, Lr * K, K).transpose(1, 2), dPhat))
            else:
                dWo.append(dE.new_zeros(N, K, Q))
            dWg = torch.cat(dWo, -1)  # (N, K, K + Q): replace and pop columns
            dE[..., K:] = dWg * alpha[:, :, None]
            dalpha += (dWg * E[..., K:]).sum(-1)
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
            lo = window_lo(tq, core.window)
            Lr = max(tq - 1 - lo, 0)
            self.doff[tq - b], self.dj0[tq - b], self.dlen[tq - b] = off, lo - b, Lr
            off += core.Q * Lr * core.K
        self.DP = arrays.empty(self.N, core.S, max(off, 1), device=self.device, dtype=self.dtype)

    def _alloc_backward(self, Tend: int, fill: bool = True):
        core = self.core
        N, S, K, Q = self.N, core.S, core.K, core.Q
        n = Tend + 1 - self.base
        self.Jn = self.Tn = n
        # DP[:, y, t', r, j, a] = dpop_t'[j][a, (r, y)];  PH[:, y, c, u, t', r] = P̂_t'[c+1][(u, y), r]
        make = torch.zeros if fill else arrays.empty
        if fill:  # (the compiled backward packs DP: _pack_dp)
            self.DP = torch.zeros(N, S, n, Q, n, K, device=self.device, dtype=self.dtype)
        self.PH = make(N, S, n, Q, n, Q, device=self.device, dtype=self.dtype)
        if core.m:
            self.vbase = self.t0_lo                  # vectors of push times >= t0_lo live here
            self.dV = torch.zeros(N, Tend + 1 - self.vbase, core.m, device=self.device, dtype=self.dtype)


class StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, token, tape, kind):
        E = step_weights(x, kind)
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


class InitFn(torch.autograd.Function):
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


def step_weights(x, kind):
    """The step's weights ``(N, K, 2K+Q)`` from its logits (``exp``) or from positive weights, scaled
    per row (any positive scale leaves every reading unchanged)."""
    if kind == "logits":
        return torch.exp(x - x.amax(dim=(1, 2), keepdim=True))
    return x / _wscale(x)
