"""The superposition stack of Joulin & Mikolov (2015), as a functional core.

A stack is a tensor ``S`` of shape ``(..., L, M)``: cell ``S[..., 0, :]`` is the
top, empty cells are 0. ``k`` stacks of sizes ``m_1 .. m_k`` (``M = sum m_j``)
live side by side in the feature dimension, each with its own action
distribution ``a = softmax(W_a h + b_a)`` over (push, no-op, pop)
(:data:`ACTIONS`, the order of the logits: action ``j`` reads cell ``i - 1 + j``).
One update, for every feature of stack ``j``:

.. math::
    S'[0] = a_{push} v + a_{noop} S[0] + a_{pop} S[1], \\qquad
    S'[i] = a_{push} S[i-1] + a_{noop} S[i] + a_{pop} S[i+1] \\quad (i \\ge 1),

with ``v = sigmoid(W_v h + b_v)`` ("learned") or ``v = h`` ("hidden"), and
reading ``r = S'[0]`` (the initial reading is 0).

Height (exact; docs: book/reference/models.md, "Superposition stack"). After the ``u``-th update of a
string whose ``n`` steps perform ``n - 1`` updates, a cell at depth ``i`` can
only reach the top through ``i`` more pops, and at most ``u`` cells have ever
been pushed, so only ``min(u, n - u)`` cells can still influence a reading:
:func:`stack_heights` keeps exactly those (``prune``), which keeps the stack at
most ``n / 2`` deep; a depth limit ``D`` (PTB: 10) truncates the bottom.
Dropping cells that can never return to the top changes no reading, so the
pruned stack is exact, not an approximation.

:class:`SuperpositionCore` implements the stack-core interface used by
:class:`marnn.models.stack_rnn.StackRNN` (``initial_state``, ``step``,
``initial_reading``, ``detach_state``). The kernel that runs the whole
controller + stack recurrence as one autograd function with a hand-written
backward pass is :func:`marnn.kernels.fused_lstm.fused_stack_lstm` (on the CPU a
compiled Numba loop for formal-size models, :mod:`marnn.kernels.fused_lstm_numba`);
``tests/test_superposition.py`` checks it against this module, step by step.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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

    def snapshot_state(self, state: SuperpositionState) -> dict:
        """The state as plain tensors and numbers (a PTB group's state saved inside an epoch)."""
        return {"stack": state.stack.detach().cpu().clone(), "updates": int(state.updates), "length": state.length}

    def restore_state(self, snap: dict, device=None) -> SuperpositionState:
        return SuperpositionState(snap["stack"].to(device), snap["updates"], snap["length"])
