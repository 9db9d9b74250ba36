"""The superposition stack of Joulin & Mikolov (2015), as a functional core.

A stack is a tensor ``S`` of shape ``(..., L, M)``: cell ``S[..., 0, :]`` is the
top, empty cells are 0. ``k`` stacks of sizes ``m_1 .. m_k`` (``M = sum m_j``)
live side by side in the feature dimension, each with its own action
distribution ``a = softmax(W_a h + b_a)`` over (push, no-op, pop)
(:data:`ACTIONS`, the order of the logits: action ``j`` reads cell ``i - 1 + j``). One update, for every feature of stack ``j``:

.. math::
    S'[0] = a_{push} v + a_{noop} S[0] + a_{pop} S[1], \\qquad
    S'[i] = a_{push} S[i-1] + a_{noop} S[i] + a_{pop} S[i+1] \\quad (i \\ge 1),

with ``v = sigmoid(W_v h + b_v)`` ("learned") or ``v = h`` ("hidden"), and
reading ``r = S'[0]`` (the initial reading is 0).

Height (exact, MODELS.md "Exact shortcuts"). After the ``u``-th update of a
string whose ``n`` steps perform ``n - 1`` updates, a cell at depth ``i`` can
only reach the top through ``i`` more pops, and at most ``u`` cells have ever
been pushed, so only ``min(u, n - u)`` cells can still influence a reading:
:func:`stack_heights` keeps exactly those (``prune``), which keeps the stack at
most ``n / 2`` deep; a depth limit ``D`` (PTB: 10) truncates the bottom.
Dropping cells that can never return to the top changes no reading, so the
pruned stack is exact, not an approximation.

:class:`SuperpositionCore` implements the stack-core interface used by
:class:`marnn.models.stack_rnn.StackRNN` (``initial_state``, ``step``,
``initial_reading``, ``detach_state``). :func:`fused_stack_lstm` runs the whole
controller + stack recurrence as one autograd function with a hand-written
backward pass (``superposition_lstm_kernel.py``-style fusion kept in this file):
about 35 small tensor operations per timestep instead of ~120 autograd nodes.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

ACTIONS = ("push", "no-op", "pop")  # order of the logits of each stack (= shift of the cell read)


def stack_heights(steps: int, *, start: int = 0, fresh: bool = True, prune: bool = True,
                  depth: int | None = None) -> list[int]:
    """Stack height after each of ``steps`` timesteps.

    ``fresh``: the sequence starts the string (no update at its first step; the
    stack is empty). ``prune`` (only with ``fresh``; ``steps`` is then the string
    length ``n``): after the ``u``-th update keep ``min(u, n - u)`` cells.
    Otherwise the stack grows by one per update from ``start`` cells.
    ``depth`` caps every height.
    """
    heights, h = [], start
    for t in range(steps):
        if fresh and t == 0:
            h = 0
        elif fresh and prune:
            h = min(t, steps - t)
        else:
            h = h + 1
        if depth is not None:
            h = min(h, depth)
        heights.append(h)
    return heights


def feature_actions(actions: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Per-stack action probabilities ``(..., k, 3)`` -> per-feature ``(..., M, 3)``."""
    if len(sizes) == 1:
        return actions.expand(*actions.shape[:-2], sizes[0], 3)
    reps = torch.tensor(list(sizes), device=actions.device)
    return actions.repeat_interleave(reps, dim=-2)


def superposition_step(stack: torch.Tensor, actions: torch.Tensor, pushed: torch.Tensor,
                       sizes: Sequence[int], height: int) -> torch.Tensor:
    """One stack update (equation above) keeping ``height`` cells.

    ``stack``: ``(..., L, M)``; ``actions``: ``(..., k, 3)`` probabilities in
    :data:`ACTIONS` order; ``pushed``: ``(..., M)``. Returns ``(..., height, M)``.
    """
    *lead, L, M = stack.shape
    keep = min(L, height + 1)
    pad = stack.new_zeros(*lead, height + 1 - keep, M)
    buf = torch.cat([pushed.unsqueeze(-2), stack[..., :keep, :], pad], dim=-2)  # (..., height+2, M)
    a = feature_actions(actions, sizes).unsqueeze(-3)  # (..., 1, M, 3)
    push, noop, pop = a[..., 0], a[..., 1], a[..., 2]
    return push * buf[..., :height, :] + noop * buf[..., 1:height + 1, :] + pop * buf[..., 2:height + 2, :]


class SuperpositionState(NamedTuple):
    stack: torch.Tensor  # (N, L, M)
    updates: int  # updates performed so far
    length: int | None  # string length when pruning, else None


class SuperpositionCore:
    """``k`` superposition stacks behind the stack-core interface.

    ``sizes``: vector size of each stack; ``push``: "learned" (the model pushes
    ``sigmoid(W_v h + b_v)``) or "hidden" (pushes ``h``); ``depth``: optional
    depth limit. ``num_actions = 3 k`` logits, ``reading_size = pushed_size = M``.
    """

    kind = "superposition"

    def __init__(self, sizes: Sequence[int], push: str = "learned", depth: int | None = None):
        if push not in ("learned", "hidden"):
            raise ValueError(f"push must be 'learned' or 'hidden', not {push!r}")
        self.sizes, self.push, self.depth = tuple(int(s) for s in sizes), push, depth
        self.num_actions = 3 * len(self.sizes)
        self.reading_size = self.pushed_size = sum(self.sizes)

    def initial_state(self, N: int, device=None, dtype=None, length: int | None = None, **extra) -> SuperpositionState:
        return SuperpositionState(torch.zeros(N, 0, self.reading_size, device=device, dtype=dtype), 0, length)

    def initial_reading(self, state: SuperpositionState) -> torch.Tensor:
        return state.stack.new_zeros(state.stack.shape[0], self.reading_size)  # (N, M)

    def actions(self, action_logits: torch.Tensor) -> torch.Tensor:
        """``(N, 3k)`` logits -> ``(N, k, 3)`` probabilities (push, no-op, pop)."""
        return torch.softmax(action_logits.view(action_logits.shape[0], -1, 3), dim=-1)

    def step(self, state: SuperpositionState, action_logits: torch.Tensor, pushed: torch.Tensor):
        u = state.updates + 1
        height = state.stack.shape[1] + 1 if state.length is None else min(u, state.length - u)
        if self.depth is not None:
            height = min(height, self.depth)
        height = max(height, 1)
        stack = superposition_step(state.stack, self.actions(action_logits), pushed, self.sizes, height)
        return stack[:, 0], SuperpositionState(stack, u, state.length)  # reading (N, M)

    def detach_state(self, state: SuperpositionState) -> SuperpositionState:
        return state._replace(stack=state.stack.detach())


# ---------------------------------------------------------------------------
# Fused controller + stack recurrence with a hand-written backward pass.
# Stacks are stored as (R, B, L, k, m): k equal-size stacks of m-vectors.
# Z[t] holds [v_t, S_{t-1}[0], S_{t-1}[1], ..., 0, 0]: step t reads its rows
# i, i+1, i+2 with weights (push, no-op, pop) and writes S_t into Z[t+1][1:].
# ---------------------------------------------------------------------------

def _forward_loop(gx, W_h, b_h, W_ir, h0, c0, S0, k, heights, fresh, push_hidden, save):
    """``gx``: (R, B, T, 4H) input gates incl. biases; ``W_h``: (R, 4H + 3k [+ M], H)
    = [W_hh; W_a; W_v]; ``b_h``: (R, 1, same) = [0; b_a; b_v]; ``W_ir``: (R, 4H, M)
    or None (plain LSTM); ``S0``: (R, B, L0, k, m). ``save`` keeps what backward needs."""
    R, B, T, G = gx.shape
    H = G // 4
    stack = W_ir is not None
    Hs = gx.new_empty(T + 1, R, B, H)  # h_{-1}, h_0 .. h_{T-1} (0-indexed steps)
    Cs = gx.new_empty(T + 1, R, B, H)
    Hs[0], Cs[0] = h0, c0
    Hl, Cl, gxl = Hs.unbind(0), Cs.unbind(0), gx.unbind(2)
    Hw = W_h.transpose(1, 2)  # (R, H, P)
    if save:
        ACT = gx.new_empty(T, R, B, 4, H)  # sigma(i), sigma(f), tanh(g), sigma(o)
        TC = gx.new_empty(T, R, B, H)  # tanh(c_t)
        ACTl, TCl = ACT.unbind(0), TC.unbind(0)
    prev, As = 0, []
    if stack:
        M = W_ir.shape[2]
        m = M // k
        L0 = prev = S0.shape[2]
        rows = max(max(heights, default=0), L0) + 2
        Z = gx.new_zeros(T + 1 if save else 2, R, B, rows, k, m)
        Z[0, :, :, 1:1 + L0] = S0
        Zl = Z.unbind(0)
        readl = Z[:, :, :, 1].reshape(-1, R, B, M).unbind(0)  # views: r_t = S_t[0]
        pushl = Z[:, :, :, 0].unbind(0)  # (R, B, k, m) slots for v_t
        Rw = W_ir.transpose(1, 2)  # (R, M, 4H)
    for t in range(T):
        first = fresh and t == 0
        if first:
            gates = gxl[0]  # h_{-1} = 0
        else:
            P = torch.baddbmm(b_h, Hl[t], Hw)  # (R, B, P)
            gates = gxl[t] + P[..., :G]
        if stack and not first:
            zi, zo = (t, t + 1) if save else (t & 1, (t + 1) & 1)
            Zt, Zn = Zl[zi], Zl[zo]
            L = prev = heights[t]
            a = torch.softmax(P[..., G:G + 3 * k].view(R, B, k, 3), dim=-1)  # (R, B, k, 3)
            As.append(a)
            if push_hidden:
                pushl[zi].copy_(Hl[t].view(R, B, k, m))
            else:
                torch.sigmoid(P[..., G + 3 * k:].view(R, B, k, m), out=pushl[zi])
            co = a.view(R, B, 1, k, 1, 3)
            out = Zn[:, :, 1:1 + L]  # S_t[i] = push B[i] + noop B[i+1] + pop B[i+2]
            torch.mul(co[..., 0], Zt[:, :, :L], out=out)
            out.addcmul_(co[..., 1], Zt[:, :, 1:L + 1])
            out.addcmul_(co[..., 2], Zt[:, :, 2:L + 2])
            if not save:  # reused buffer: rows below the new stack must read as empty
                Zn[:, :, 1 + L:3 + L].zero_()
            gates = torch.baddbmm(gates, readl[zo], Rw)  # + W_ir r_t
        act = ACTl[t] if save else gx.new_empty(R, B, 4, H)
        g4 = gates.view(R, B, 4, H)
        torch.sigmoid(g4, out=act)
        i, f, g, o = act.unbind(2)
        torch.tanh(g4[:, :, 2], out=g)
        cn = Cl[t + 1]
        torch.mul(f, Cl[t], out=cn)
        cn.addcmul_(i, g)
        tc = TCl[t] if save else torch.empty_like(cn)
        torch.tanh(cn, out=tc)
        torch.mul(o, tc, out=Hl[t + 1])
    S_last = None
    if stack:
        S_last = Zl[T if save else T & 1][:, :, 1:1 + prev].clone()
    sv = None
    if save:
        sv = dict(Hs=Hs, Cs=Cs, ACT=ACT, TC=TC)
        if stack:
            sv.update(Z=Z, A=torch.stack(As) if As else gx.new_zeros(0, R, B, k, 3))
    return Hs[1:], Cs[T].clone(), S_last, sv


class _FusedStackLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts, gx, W_h, b_h, W_ir, h0, c0, S0):
        k, heights, fresh, push_hidden = opts
        hs, cT, ST, sv = _forward_loop(gx, W_h, b_h, W_ir, h0, c0, S0, k, heights, fresh, push_hidden, save=True)
        ctx.opts, ctx.sv = opts, sv
        ctx.save_for_backward(W_h, W_ir)
        ctx.L0 = S0.shape[2] if S0 is not None else 0
        return hs, cT, ST

    @staticmethod
    def backward(ctx, dhs, dcT, dST):
        k, heights, fresh, push_hidden = ctx.opts
        W_h, W_ir = ctx.saved_tensors
        sv, ctx.sv = ctx.sv, None
        Hs, Cs, ACT, TC = sv["Hs"], sv["Cs"], sv["ACT"], sv["TC"]
        T, R, B, _, H = ACT.shape
        G, Pn = 4 * H, W_h.shape[1]
        stack = W_ir is not None
        if dhs is None:
            dhs = Hs.new_zeros(T, R, B, H)
        # local derivatives for all steps at once:
        # d(i,f,g,o) = (dc g i', dc c_prev f', dc i g', dh tanh(c) o'),  dc += dh o (1 - tanh(c)^2)
        i, f, g, o = ACT.unbind(3)
        mult = torch.stack([g * i * (1 - i), Cs[:-1] * f * (1 - f), i * (1 - g * g), TC * o * (1 - o)], dim=3)
        Kl = (o * (1 - TC * TC)).unbind(0)
        m3l, mol, fl, dhsl = mult[:, :, :, :3].unbind(0), mult[:, :, :, 3].unbind(0), f.unbind(0), dhs.unbind(0)
        dP = Hs.new_zeros(T, R, B, Pn)  # gradients of the pre-activations [gates; logits; push]
        dPl, dGl = dP.unbind(0), dP[..., :G].unbind(0)
        dG4 = dP[..., :G].view(T, R, B, 4, H)
        dG3l, dGol = dG4[:, :, :, :3].unbind(0), dG4[:, :, :, 3].unbind(0)
        dh = torch.zeros_like(Hs[0])
        dc = dcT.clone() if dcT is not None else torch.zeros_like(Hs[0])
        if stack:
            Z, A = sv["Z"], sv["A"]
            M = W_ir.shape[2]
            m = M // k
            Zl = Z.unbind(0)
            DZ = Hs.new_zeros(T + 1, R, B, Z.shape[3] + 2, k, m)  # DZ[t+1][:, :, 2 + i] = dL/dS_t[i]
            DZl = DZ.unbind(0)
            Dtopl, Dtopfl = DZ[:, :, :, 2].unbind(0), DZ[:, :, :, 2].reshape(T + 1, R, B, M).unbind(0)
            if dST is not None:
                DZ[T][:, :, 2:2 + heights[-1]] += dST
            off = 0 if fresh else 1  # A[j] belongs to step j + 1 - off
            dlogl = dP[..., G:G + 3 * k].view(T, R, B, k, 3).unbind(0)
            if not push_hidden:
                Vdl = (Z[:T, :, :, 0] * (1 - Z[:T, :, :, 0])).unbind(0)  # sigmoid' of v_t
                dPvl = dP[..., G + 3 * k:].view(T, R, B, k, m).unbind(0)
        for t in range(T - 1, -1, -1):
            first = fresh and t == 0
            dht = dhsl[t] + dh
            dc.addcmul_(dht, Kl[t])
            torch.mul(m3l[t], dc.unsqueeze(2), out=dG3l[t])
            torch.mul(mol[t], dht, out=dGol[t])
            dc = dc * fl[t]
            if stack and not first:
                L = heights[t]
                Lp = heights[t - 1] if t > 0 else ctx.L0
                a = A[t - 1 + off]  # (R, B, k, 3)
                Dtopfl[t + 1].add_(torch.bmm(dGl[t], W_ir))  # dL/dr_t
                D = DZl[t + 1]
                U = Zl[t][:, :, :L + 2].unfold(2, 3, 1)  # (R, B, L, k, m, 3): rows i, i+1, i+2
                da = (D[:, :, 2:2 + L].unsqueeze(-1) * U).sum((2, 4))  # (R, B, k, 3)
                torch.mul(a, da - (a * da).sum(-1, keepdim=True), out=dlogl[t])  # softmax backward
                dv = a[..., :1] * Dtopl[t + 1]  # (R, B, k, m): v enters S_t[0] with weight a_push
                n = min(Lp, L + 1)
                if n > 0:  # dS_{t-1}[j] = push dS_t[j+1] + noop dS_t[j] + pop dS_t[j-1]
                    co = a.view(R, B, 1, k, 1, 3)
                    out = DZl[t][:, :, 2:2 + n]
                    torch.mul(co[..., 0], D[:, :, 3:3 + n], out=out)
                    out.addcmul_(co[..., 1], D[:, :, 2:2 + n])
                    out.addcmul_(co[..., 2], D[:, :, 1:1 + n])
                if not push_hidden:
                    torch.mul(dv, Vdl[t], out=dPvl[t])
            if first:
                break
            dh = torch.bmm(dPl[t], W_h)  # (R, B, H)
            if stack and push_hidden:
                dh = dh + dv.view(R, B, H)
        # parameter gradients: one product over all steps
        s = 1 if fresh else 0
        dPr = dP[s:].transpose(0, 1).reshape(R, -1, Pn)  # (R, T'B, P)
        dW_h = torch.bmm(dPr.transpose(1, 2), Hs[s:T].transpose(0, 1).reshape(R, -1, H))
        db_h = dPr.sum(1, keepdim=True)
        dW_ir = dS0 = None
        if stack:
            reads = Z[1:, :, :, 1].transpose(0, 1).reshape(R, -1, M)  # (R, TB, M) readings r_t
            dW_ir = torch.bmm(dP[..., :G].transpose(0, 1).reshape(R, -1, G).transpose(1, 2), reads)
            dS0 = DZ[0][:, :, 2:2 + ctx.L0]
        dgx = dP[..., :G].permute(1, 2, 0, 3)
        return (None, dgx, dW_h, db_h, dW_ir, None if fresh else dh, None if fresh else dc, dS0)


def fused_stack_lstm(gx, W_hh, h0=None, c0=None, *, W_ir=None, W_a=None, b_a=None, W_v=None, b_v=None,
                     S0=None, k=1, heights=(), fresh=True, push_hidden=False):
    """The whole LSTM (+ ``k`` equal-size superposition stacks) recurrence over ``T`` steps.

    ``gx``: (R, B, T, 4H) input half of the gates plus both biases; ``W_hh``:
    (R, 4H, H); ``h0, c0``: (R, B, H) (zero when ``fresh``); ``W_ir``: (R, 4H, M)
    the reading half of ``W_ih``; ``W_a, b_a`` the action layer (3k outputs in
    :data:`ACTIONS` order); ``W_v, b_v`` the push layer (None when pushing h);
    ``S0``: (R, B, L0, k, M / k) carried stack; ``heights`` from
    :func:`stack_heights`. Returns ``h`` for every step (T, R, B, H), ``c_T`` and
    the final stack (R, B, L, k, M / k) (None without a stack). Differentiable in
    every tensor argument through a hand-written backward pass (checked against
    the autograd loop in tests/test_superposition.py).
    """
    R, B, T, G = gx.shape
    H = G // 4
    if fresh:
        h0 = c0 = gx.new_zeros(R, B, H)
    if W_ir is None:
        W_h, b_h, k = W_hh, gx.new_zeros(R, 1, G), 0
    else:
        M = W_ir.shape[2]
        if M % k:
            raise ValueError(f"{k} stacks cannot share {M} features equally")
        parts_w, parts_b = [W_hh, W_a], [gx.new_zeros(R, G), b_a]
        if not push_hidden:
            parts_w.append(W_v)
            parts_b.append(b_v)
        W_h, b_h = torch.cat(parts_w, dim=1), torch.cat(parts_b, dim=1).unsqueeze(1)
        if S0 is None:
            S0 = gx.new_zeros(R, B, 0, k, M // k)
    opts = (k, list(heights), fresh, push_hidden)
    if torch.is_grad_enabled():
        return _FusedStackLSTM.apply(opts, gx, W_h, b_h, W_ir, h0, c0, S0)
    hs, cT, ST, _ = _forward_loop(gx, W_h, b_h, W_ir, h0, c0, S0, k, list(heights), fresh, push_hidden, save=False)
    return hs, cT, ST
