"""Renormalizing nondeterministic stack (RNS) and vector RNS (VRNS).

(Docstring completed below; phase-1 implementation.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class RNSState:
    t: int                    # time of the last reading (0 = initial configuration)
    lo: int                   # first push time j kept in `col` (window), col covers j in [lo, t]
    alpha: Tensor             # (N, K) normalised alpha[t]
    col: Tensor               # (N, L, K, K) hat-gamma[j -> t][a, b], j = lo .. t
    tri: Tensor               # (N, S, L', K, L', Q) triangle, rows j / cols c in [lo_{t+1}, t-1]
    vec: Tensor | None        # (N, L, m) vectors pushed at times lo .. t (v_0 = bottom)


def _lo(t: int, window: int | None) -> int:
    return 0 if window is None else max(0, t - window + 1)


class RNSCore:
    def __init__(self, Q: int, S: int, m: int | None = None, window: int | None = None):
        if Q < 1 or S < 1:
            raise ValueError("Q and S must be positive")
        if window is not None and window < 1:
            raise ValueError("window must be >= 1")
        self.Q, self.S, self.m, self.window = Q, S, m, window
        self.K = Q * S
        self.num_actions = self.K * (2 * self.K + Q)
        self.reading_size = self.K * (m if m else 1)
        self.pushed_size = m if m else 0

    # ------------------------------------------------------------------ state
    def initial_state(self, N, device=None, dtype=torch.float32, bottom=None) -> RNSState:
        K, S, Q = self.K, self.S, self.Q
        alpha = torch.zeros(N, K, device=device, dtype=dtype)
        alpha[:, 0] = 1
        col = torch.zeros(N, 1, K, K, device=device, dtype=dtype)
        col[:, 0, 0, 0] = 1
        tri = torch.zeros(N, S, 0, K, 0, Q, device=device, dtype=dtype)
        vec = None
        if self.m:
            if bottom is None:
                raise ValueError("VRNS needs a bottom vector")
            vec = bottom.to(dtype).reshape(N, 1, self.m)
        return RNSState(0, 0, alpha, col, tri, vec)

    def initial_reading(self, state: RNSState) -> Tensor:
        return self._reading(state.alpha, state.col, state.vec)

    def detach_state(self, state: RNSState) -> RNSState:
        d = (lambda x: None if x is None else x.detach())
        return RNSState(state.t, state.lo, d(state.alpha), d(state.col), d(state.tri), d(state.vec))

    def _reading(self, alpha, col, vec):
        N = alpha.shape[0]
        if vec is None:
            return alpha
        # eta[b] / sum(alpha) = alpha[b] * sum_j (sum_a col[j, a, b]) v_j
        w = col.sum(2)                                           # (N, L, K)
        eta = torch.einsum("njb,njm->nbm", w, vec) * alpha[..., None]
        return eta.reshape(N, -1)

    # ------------------------------------------------------------------ step
    def step(self, state: RNSState, action_logits: Tensor, pushed: Tensor | None = None):
        N = action_logits.shape[0]
        lg = action_logits.reshape(N, self.K, 2 * self.K + self.Q)
        E = torch.exp(lg - lg.detach().amax(dim=(1, 2), keepdim=True))
        return self._step_weights(state, E, pushed)

    def _step_weights(self, state: RNSState, E: Tensor, pushed: Tensor | None):
        """E: (N, K, 2K+Q) step weights, any positive per-example scale."""
        K, Q, S = self.K, self.Q, self.S
        N = E.shape[0]
        t, lo = state.t, state.lo
        T = t + 1
        loT = _lo(T, self.window)
        d = loT - lo
        col = state.col[:, d:]                                   # (N, Lw, K, K) j in [loT, t]
        Lw = col.shape[1]
        W = state.alpha[..., None] * E                           # (N, K, 2K+Q)
        Wpush, Wrepl, Wpop = W[..., :K], W[..., K:2 * K], W[..., 2 * K:]
        C = torch.matmul(col, Wrepl[:, None])                   # (N, Lw, K, K)
        Lr = Lw - 1
        if Lr > 0:
            Phat = torch.matmul(col[:, 1:], Wpop[:, None])      # (N, Lr, K(u,y), Q(r))
            Ph = Phat.reshape(N, Lr, Q, S, Q).permute(0, 3, 1, 2, 4).reshape(N * S, Lr * Q, Q)
            tri = state.tri.reshape(N * S, Lr * K, Lr * Q)
            pop = torch.bmm(tri, Ph).reshape(N, S, Lr, K, Q)     # (N, y, j, a, r)
            pop = pop.permute(0, 2, 3, 4, 1).reshape(N, Lr, K, K)
            C = C + F.pad(pop, (0, 0, 0, 0, 0, 1))
        C = torch.cat([C, Wpush[:, None]], dim=1)               # (N, Lw+1, K, K) j in [loT, T]
        Z0 = C.detach().sum(dim=(1, 2, 3)).clamp_min(torch.finfo(C.dtype).tiny)
        C = C / Z0[:, None, None, None]
        a = C.sum(dim=(1, 2))                                    # (N, K)
        alpha = a / a.sum(-1, keepdim=True)
        newcol = C / a.clamp_min(torch.finfo(C.dtype).tiny)[:, None, :].unsqueeze(1)
        # triangle for step T+1: rows/cols [lo_{T+1}, t]
        lo2 = _lo(T + 1, self.window)
        d2 = lo2 - loT
        L2 = t - lo2 + 1
        if L2 > 0:
            tri = state.tri[:, :, d2:, :, d2:, :]                # rows/cols [lo2, t-1]
            tri = F.pad(tri, (0, 0, 0, 0, 0, 0, 0, 1))           # rows [lo2, t]
            newc = state.col[:, lo2 - lo:].reshape(N, L2, K, Q, S).permute(0, 4, 1, 2, 3)[:, :, :, :, None, :]
            tri = torch.cat([tri, newc], dim=4)                  # (N, S, L2, K, L2, Q)
        else:
            tri = state.tri.new_zeros(N, S, 0, K, 0, Q)
        vec = None
        if state.vec is not None:
            vec = torch.cat([state.vec[:, d:], pushed.to(E.dtype)[:, None]], dim=1)
        new = RNSState(T, loT, alpha, newcol, tri, vec)
        return self._reading(alpha, newcol, vec), new


def _split_logits(push, repl, pop):
    B, n, Q, S = pop.shape[:4]
    K = Q * S
    return torch.cat([push.reshape(B, n, K, K), repl.reshape(B, n, K, K), pop.reshape(B, n, K, Q)], dim=-1)


def rns_readings(push, repl, pop, *, log=False, pushed=None, bottom=None, window=None):
    """Readings of a (V)RNS driven by given action weights.

    push, repl: (B, n, Q, S, Q, S); pop: (B, n, Q, S, Q); positive weights, or
    their logs when ``log=True``. VRNS: pushed (B, n, m), bottom (B, m).
    Returns (B, n+1, Q*S) (VRNS: (B, n+1, Q*S*m)); index 0 is the initial reading.
    """
    B, n, Q, S = pop.shape[:4]
    m = None if pushed is None else pushed.shape[-1]
    core = RNSCore(Q, S, m, window)
    A = _split_logits(push, repl, pop)                        # (B, n, K, 2K+Q)
    if log:
        E = torch.exp(A - A.detach().amax(dim=(2, 3), keepdim=True))
    else:
        E = A / A.detach().amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    state = core.initial_state(B, A.device, A.dtype, bottom)
    out = [core.initial_reading(state)]
    for t in range(n):
        r, state = core._step_weights(state, E[:, t], None if pushed is None else pushed[:, t])
        out.append(r)
    return torch.stack(out, 1)
