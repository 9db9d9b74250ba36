"""The superposition stack of Joulin & Mikolov (2015), as a functional core.

A stack is a tensor ``S`` of shape ``(..., L, M)``: cell ``S[..., 0, :]`` is the
top, empty cells are 0. ``k`` stacks of sizes ``m_1 .. m_k`` (``M = sum m_j``)
live side by side in the feature dimension, each with its own action
distribution ``a = softmax(W_a h + b_a)`` over (push, pop, no-op)
(:data:`ACTIONS`). One update, for every feature of stack ``j``:

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

ACTIONS = ("push", "pop", "no-op")  # order of the logits of each stack


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
    push, pop, noop = a[..., 0], a[..., 1], a[..., 2]
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
        """``(N, 3k)`` logits -> ``(N, k, 3)`` probabilities (push, pop, no-op)."""
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
# Fused controller + stack recurrence with a hand-written backward pass
# ---------------------------------------------------------------------------

def _forward_loop(gx, W_h, b_h, W_ir, h0, c0, S0, emat, heights, fresh, push_hidden, save):
    """Run ``T`` steps. ``gx``: (R, B, T, 4H) input gates incl. biases; ``W_h``:
    (R, 4H + 3k + Mv, H) = [W_hh; W_a; W_v]; ``b_h``: (R, 1, same) = [0; b_a; b_v];
    ``W_ir``: (R, 4H, M) or None (plain LSTM). Returns outputs and saved buffers."""
    R, B, T, G = gx.shape
    H = G // 4
    stack = W_ir is not None
    dev, dt = gx.device, gx.dtype
    Hs = gx.new_empty(T + 1, R, B, H)  # h_{-1} .. h_{T-1}
    Cs = gx.new_empty(T + 1, R, B, H)
    Hs[0], Cs[0] = h0, c0
    sv = {}
    if save:
        ACT = gx.new_empty(T, R, B, G)
        TC = gx.new_empty(T, R, B, H)
    if stack:
        M = W_ir.shape[2]
        k = emat.shape[1]
        L0 = S0.shape[2]
        rows = max(heights + [L0]) + 2
        Z = torch.zeros(T + 1 if save else 2, R, B, rows, M, device=dev, dtype=dt)
        Z[0, :, :, 1:1 + L0] = S0
        if save:
            A = gx.new_zeros(T, R, B, k, 3)
    Hw = W_h.transpose(1, 2)  # (R, H, P)
    Rw = W_ir.transpose(1, 2) if stack else None  # (R, M, 4H)
    prev = L0 if stack else 0
    for t in range(T):
        h, c = Hs[t], Cs[t]
        update = stack and not (fresh and t == 0)
        if fresh and t == 0:
            gates = gx[:, :, 0]  # h_{-1} = 0
        else:
            P = torch.baddbmm(b_h, h, Hw)  # (R, B, P)
            gates = gx[:, :, t] + P[..., :G]
        if update:
            Zt, Zn = (Z[t], Z[t + 1]) if save else (Z[t % 2], Z[(t + 1) % 2])
            L = heights[t]
            a = torch.softmax(P[..., G:G + 3 * k].view(R, B, k, 3), dim=-1)  # (R, B, k, 3)
            if save:
                A[t] = a
            if push_hidden:
                Zt[:, :, 0] = h
            else:
                torch.sigmoid(P[..., G + 3 * k:], out=Zt[:, :, 0])
            co = torch.matmul(emat, a)  # (R, B, M, 3) per-feature coefficients
            co = co.unsqueeze(2)  # (R, B, 1, M, 3)
            out = Zn[:, :, 1:1 + L]
            torch.mul(co[..., 0], Zt[:, :, :L], out=out)
            out.addcmul_(co[..., 2], Zt[:, :, 1:L + 1])
            out.addcmul_(co[..., 1], Zt[:, :, 2:L + 2])
            if not save:  # the ping-pong buffer must be zero below the new top cells
                Zn[:, :, 1 + L:3 + L].zero_()
            gates = torch.baddbmm(gates, Zn[:, :, 1], Rw)  # + W_ir r_t
            prev = L
        act = ACT[t] if save else torch.empty_like(gates)
        torch.sigmoid(gates, out=act)
        torch.tanh(gates[..., 2 * H:3 * H], out=act[..., 2 * H:3 * H])
        cn = Cs[t + 1]
        torch.mul(act[..., H:2 * H], c, out=cn)
        cn.addcmul_(act[..., :H], act[..., 2 * H:3 * H])
        tc = TC[t] if save else torch.tanh(cn)
        if save:
            torch.tanh(cn, out=tc)
        torch.mul(act[..., 3 * H:], tc, out=Hs[t + 1])
    S_last = None
    if stack:
        last = Z[T] if save else Z[T % 2]
        S_last = last[:, :, 1:1 + prev].clone()
    if save:
        sv = dict(Hs=Hs, Cs=Cs, ACT=ACT, TC=TC)
        if stack:
            sv.update(Z=Z, A=A)
    return Hs[1:], Cs[T].clone(), S_last, sv


class _FusedStackLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts, gx, W_h, b_h, W_ir, h0, c0, S0, emat):
        heights, fresh, push_hidden = opts
        hs, cT, ST, sv = _forward_loop(gx, W_h, b_h, W_ir, h0, c0, S0, emat, heights, fresh, push_hidden, save=True)
        ctx.opts, ctx.sv = opts, sv
        ctx.save_for_backward(W_h, W_ir, emat)
        ctx.L0 = S0.shape[2] if S0 is not None else 0
        return hs, cT, ST

    @staticmethod
    def backward(ctx, dhs, dcT, dST):
        heights, fresh, push_hidden = ctx.opts
        W_h, W_ir, emat = ctx.saved_tensors
        sv = ctx.sv
        Hs, Cs, ACT, TC = sv["Hs"], sv["Cs"], sv["ACT"], sv["TC"]
        T, R, B, G = ACT.shape
        H = G // 4
        Pn = W_h.shape[1]
        stack = W_ir is not None
        if dhs is None:
            dhs = Hs.new_zeros(T, R, B, H)
        # Vectorised local derivatives (one pass over all steps):
        # d gates = [dc*g*i', dc*c_prev*f', dc*i*g', dh*tanh(c)*o'] and dc += dh*o*(1-tanh(c)^2)
        i, f, g, o = ACT.split(H, dim=-1)
        mult = torch.cat([g * i * (1 - i), Cs[:-1] * f * (1 - f), i * (1 - g * g), TC * o * (1 - o)], dim=-1)
        K = o * (1 - TC * TC)
        dP = Hs.new_zeros(T, R, B, Pn)
        dG = dP[..., :G]
        dh = torch.zeros_like(Hs[0])
        dc = dcT.clone() if dcT is not None else torch.zeros_like(Hs[0])
        if stack:
            Z, A = sv["Z"], sv["A"]
            M = W_ir.shape[2]
            k = emat.shape[1]
            Vd = None if push_hidden else Z[:T, :, :, 0] * (1 - Z[:T, :, :, 0])  # sigmoid' of pushed v
            rows = Z.shape[3] + 2
            DZ = Hs.new_zeros(T + 1, R, B, rows, M)  # DZ[t+1][..., 2 + i, :] = dL/dS_t[i]
            L_last = heights[-1]
            if dST is not None:
                DZ[T][:, :, 2:2 + L_last] += dST
            coef = torch.matmul(emat, A).unsqueeze(3)  # (T, R, B, 1, M, 3)
            dcoef_all = Hs.new_zeros(T, R, B, M, 3)
            idx = torch.tensor([0, 2, 1], device=Hs.device)  # shift order (push, no-op, pop) -> logits order
        W_gr = W_ir  # (R, 4H, M)
        for t in range(T - 1, -1, -1):
            dht = dhs[t] + dh
            dc.addcmul_(dht, K[t])
            dGt = dG[t]
            dGt.view(R, B, 4, H)[:, :, :3] = dc.unsqueeze(2)
            dGt[..., 3 * H:] = dht
            dGt.mul_(mult[t])
            dc = dc * f[t]
            update = stack and not (fresh and t == 0)
            if update:
                L = heights[t]
                Lp = heights[t - 1] if t > 0 else ctx.L0
                dr = torch.bmm(dGt, W_gr)  # (R, B, M)
                D = DZ[t + 1]
                D[:, :, 2] += dr
                dS = D[:, :, 2:2 + L]  # (R, B, L, M)
                U = Z[t][:, :, :L + 2].unfold(2, 3, 1)  # (R, B, L, M, 3): B[i], B[i+1], B[i+2]
                torch.sum(dS.unsqueeze(-1) * U, dim=2, out=dcoef_all[t])  # (R, B, M, 3)
                da = torch.matmul(emat.t(), dcoef_all[t]).index_select(-1, idx)  # (R, B, k, 3)
                a = A[t]
                dlog = dP[t][..., G:G + 3 * k].view(R, B, k, 3)
                torch.mul(a, da - (a * da).sum(-1, keepdim=True), out=dlog)
                co = coef[t]
                dv = co[:, :, 0, :, 0] * D[:, :, 2]  # (R, B, M): d pushed = a_push dS_t[0]
                n = min(Lp, L + 1)
                if n > 0:  # dS_{t-1}[j] = push dS_t[j+1] + noop dS_t[j] + pop dS_t[j-1]
                    out = DZ[t][:, :, 2:2 + n]
                    torch.mul(co[..., 0], D[:, :, 3:3 + n], out=out)
                    out.addcmul_(co[..., 2], D[:, :, 2:2 + n])
                    out.addcmul_(co[..., 1], D[:, :, 1:1 + n])
                if not push_hidden:
                    torch.mul(dv, Vd[t], out=dP[t][..., G + 3 * k:])
            if fresh and t == 0:
                break
            dh = torch.bmm(dP[t], W_h)  # (R, B, H)
            if update and push_hidden:
                dh = dh + dv
        # parameter gradients in one product over all steps
        start = 1 if fresh else 0
        dPr = dP[start:].permute(1, 0, 2, 3).reshape(R, -1, Pn)  # (R, T'B, P)
        Hp = Hs[start:T].permute(1, 0, 2, 3).reshape(R, -1, H)  # (R, T'B, H)
        dW_h = torch.bmm(dPr.transpose(1, 2), Hp)
        db_h = dPr.sum(1, keepdim=True)
        dW_ir = dS0 = None
        if stack:
            reads = Z[1:, :, :, 1].permute(1, 0, 2, 3).reshape(R, -1, M)  # (R, TB, M) readings r_t
            dGr = dG.permute(1, 0, 2, 3).reshape(R, -1, G)
            dW_ir = torch.bmm(dGr.transpose(1, 2), reads)
            dS0 = DZ[0][:, :, 2:2 + ctx.L0]
        dgx = dG.permute(1, 2, 0, 3)
        dh0 = None if fresh else dh
        dc0 = None if fresh else dc
        ctx.sv = None
        return None, dgx, dW_h, db_h, dW_ir, dh0, dc0, dS0, None


def fused_stack_lstm(gx, W_hh, h0, c0, *, W_ir=None, W_a=None, b_a=None, W_v=None, b_v=None,
                     S0=None, sizes=(), heights=(), fresh=True, push_hidden=False):
    """The whole LSTM (+ superposition stack) recurrence for ``T`` steps.

    ``gx``: (R, B, T, 4H) input half of the gates plus both biases; ``W_hh``:
    (R, 4H, H); ``h0, c0``: (R, B, H) (ignored when ``fresh``: then zero);
    stack arguments as in :class:`SuperpositionCore` with ``W_ir`` (R, 4H, M)
    the reading half of ``W_ih`` and ``S0`` (R, B, L0, M) the carried stack;
    ``heights`` from :func:`stack_heights`. Returns ``h_1..h_T`` as (T, R, B, H),
    ``c_T`` and the final stack (R, B, L, M) (None without a stack).
    Differentiable in every tensor argument via a hand-written backward pass
    (checked against autograd in tests/test_superposition.py).
    """
    R, B, T, G = gx.shape
    parts_w, parts_b = [W_hh], [gx.new_zeros(R, G)]
    emat = None
    if W_ir is not None:
        parts_w.append(W_a)
        parts_b.append(b_a)
        if not push_hidden:
            parts_w.append(W_v)
            parts_b.append(b_v)
        M = W_ir.shape[2]
        owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))
        emat = torch.nn.functional.one_hot(owner, len(sizes)).to(device=gx.device, dtype=gx.dtype)  # (M, k)
        if S0 is None:
            S0 = gx.new_zeros(R, B, 0, M)
    W_h = torch.cat(parts_w, dim=1) if len(parts_w) > 1 else W_hh
    b_h = torch.cat(parts_b, dim=1).unsqueeze(1)  # (R, 1, P)
    if fresh:
        h0 = gx.new_zeros(R, B, G // 4)
        c0 = gx.new_zeros(R, B, G // 4)
    opts = (list(heights), fresh, push_hidden)
    if torch.is_grad_enabled():
        return _FusedStackLSTM.apply(opts, gx, W_h, b_h, W_ir, h0, c0, S0, emat)
    hs, cT, ST, _ = _forward_loop(gx, W_h, b_h, W_ir, h0, c0, S0, emat, list(heights), fresh, push_hidden, save=False)
    return hs, cT, ST
