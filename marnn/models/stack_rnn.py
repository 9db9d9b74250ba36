"""One model class for every architecture: LSTM controller + optional stack core.

Wiring (docs: book/reference/models.md, "Wiring a stack to the controller"), one timestep:

.. math::
    a_t = A(h_{t-1}) \\text{ applied to the stack (not at the first step)},\\quad
    r_t = \\mathrm{read}(\\text{stack}_t),\\quad
    (h_t, c_t) = \\mathrm{LSTM}([x_t ; r_t], (h_{t-1}, c_{t-1})),\\quad
    y_t = W_y h_t + b_y.

A *stack core* (``SuperpositionCore`` here, ``RNSCore`` in ``rns.py``) owns the
stack arithmetic behind four methods, on ``N = R * B`` flattened rows:
``initial_state(N, device, dtype, **extra)``, ``step(state, action_logits
(N, num_actions), pushed (N, pushed_size) | None) -> (reading (N, reading_size),
state)``, ``initial_reading(state)``, ``detach_state(state)``. The model owns
the parameters: the action layer ``memory.action`` (H -> num_actions), the push
layer ``memory.push`` (H -> pushed_size, sigmoid) unless the hidden state itself
is pushed, and the VRNS bottom vector ``memory.bottom``.

Plain LSTMs and superposition stacks take a fused path
(:func:`marnn.kernels.fused_lstm.fused_stack_lstm`, hand-written backward);
everything else, and ``return_stack=True``, takes the generic per-step loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..kernels import rns_sequence, rns_tape
from ..kernels.fused_lstm import fused_stack_lstm
from ..kernels.loss import token_nll
from ..registry import DEFAULT_EMBEDDING_GROUP, EMBEDDING_GROUPS, UnknownNameError
from .base import Output
from .lstm import ReplicaEmbedding, ReplicaLinear, ReplicaLSTM, init_replicas, replica_param
from .superposition import SuperpositionCore, SuperpositionState, stack_heights


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model; defaults are the paper's formal-language values."""

    name: str
    input_size: int  # formal: |alphabet| (one-hot); PTB: vocabulary size (embedding)
    output_size: int  # formal: |alphabet| + 1 (EOS); PTB: vocabulary size
    hidden_size: int = 20  # 1-layer LSTM, 20 units (PTB: 256, jm-hidden-247: 247); docs: book/reference/models.md
    memory: str | None = None  # None | "superposition" | "rns" | "vrns"
    stack_sizes: tuple[int, ...] = ()  # superposition: vector size of each of the k stacks
    push: str = "learned"  # superposition: "learned" sigmoid(W_v h + b_v) | "hidden" (push h)
    depth: int | None = None  # superposition depth limit (PTB: 10)
    prune: bool = True  # exact height pruning min(u, n - u) on whole strings (formal)
    states: int = 0  # RNS / VRNS: PDA states Q
    symbols: int = 0  # RNS / VRNS: stack symbols S
    vector_size: int | None = None  # VRNS: stack vector size m
    window: int | None = None  # RNS / VRNS window D (PTB: 35)
    embedding: bool = False  # PTB: learned input embedding of size hidden_size
    include_initial: bool = True  # formal: logits from h_0 .. h_n; PTB: h_1 .. h_n
    init: str = "formal"  # "formal" (per group) | "ptb" (all U(-0.05, 0.05)); docs: book/reference/models.md
    fused: bool = True  # use the fused / compiled kernels where available (tests compare both)
    bottom: str = "equations"  # VRNS: bottom vector at (q0, ⊥) only, or "published" (rns.py, _PublishedBottom)


class ModelState(NamedTuple):
    """Carried state: LSTM ``h``, ``c`` (R, B, H), the stack core's state and the core.

    A state from a pruned whole-string pass (formal setting, ``prune=True``) has
    dropped the cells that cannot return to the top before the string ends; it
    is exact for that string only (build with ``prune=False`` to continue).
    """

    h: torch.Tensor
    c: torch.Tensor
    memory: Any = None
    core: Any = None


def detach_state(state):
    """Cut the autograd graph of a carried state (any nesting of tensors)."""
    if state is None:
        return None
    if isinstance(state, ModelState):
        memory = state.memory
        if memory is not None and state.core is not None:
            memory = state.core.detach_state(memory)
        return ModelState(state.h.detach(), state.c.detach(), memory, state.core)
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if hasattr(state, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.replace(state, **{f: detach_state(getattr(state, f)) for f in state.__dataclass_fields__})
    return state


def make_core(config: ModelConfig):
    if config.memory is None:
        return None
    if config.memory == "superposition":
        sizes = (config.hidden_size,) if config.push == "hidden" else config.stack_sizes
        return SuperpositionCore(sizes, config.push, config.depth)
    from . import rns  # written alongside; imported lazily
    compiled = None if config.fused else False  # fused=False: the torch reference step (kernels/rns_tape.py)
    if config.memory == "rns":
        return rns.RNSCore(config.states, config.symbols, window=config.window, compiled=compiled)
    return rns.RNSCore(config.states, config.symbols, m=config.vector_size, window=config.window, bottom=config.bottom,
                       compiled=compiled)


class StackRNN(nn.Module):
    """LSTM language model with an optional stack, ``R`` replicas at once.

    Parameters: ``embedding.weight`` (PTB), ``controller.*`` (the LSTM),
    ``memory.*`` (action / push layers, VRNS bottom), ``classifier.*`` (output).
    """

    def __init__(self, config: ModelConfig, replicas: int = 1, seeds=None,
                 embedding_group: str = DEFAULT_EMBEDDING_GROUP):
        super().__init__()
        if embedding_group not in EMBEDDING_GROUPS:
            raise UnknownNameError("embedding group", embedding_group, EMBEDDING_GROUPS)
        R = int(replicas)
        seeds = list(range(R)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != R:
            raise ValueError(f"got {len(seeds)} seeds for {R} replicas")
        self.config, self.replicas, self.seeds = config, R, seeds
        self.embedding_group = embedding_group
        self.include_initial = config.include_initial
        self.core = make_core(config)
        H = config.hidden_size
        lstm_init = ("uniform", 0.1)
        self.embedding = ReplicaEmbedding(R, config.input_size, H, init=lstm_init) if config.embedding else None
        x_size = H if config.embedding else config.input_size
        reading = self.core.reading_size if self.core else 0
        self.controller = ReplicaLSTM(R, x_size, reading, H, init=lstm_init)
        if self.core is not None:
            # superposition affine layers Xavier; RNS/VRNS layers U(-0.1, 0.1) (docs: book/reference/models.md)
            mem_init = ("xavier",) if config.memory == "superposition" else ("uniform", 0.1)
            self.memory = nn.Module()
            self.memory.action = ReplicaLinear(R, H, self.core.num_actions, init=mem_init)
            pushed = getattr(self.core, "pushed_size", 0) or 0
            if pushed and config.push != "hidden":
                self.memory.push = ReplicaLinear(R, H, pushed, init=mem_init)
            if config.memory == "vrns":
                self.memory.bottom = replica_param(R, pushed, init=("uniform", 0.1))
        self.classifier = ReplicaLinear(R, H, config.output_size, init=("xavier",))
        init_replicas(self, seeds, override=("uniform", 0.05) if config.init == "ptb" else None)

    # ---- parameter groups ---------------------------------------------------
    def group_of(self, param_name: str) -> str:
        """``controller`` | ``memory`` | ``classifier`` | ``embedding`` (:func:`marnn.models.freeze.group_of`)."""
        from .freeze import group_of
        return group_of(param_name, self.embedding_group)

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list] = {}
        for name, p in self.named_parameters():
            groups.setdefault(self.group_of(name), []).append((name, p))
        return groups

    def freeze_masks(self, modes) -> dict[str, torch.Tensor]:
        """``{param_name: BoolTensor[R]}``, True where replica ``r`` trains it."""
        from .freeze import freeze_masks
        return freeze_masks(self, modes)

    def num_parameters(self, per_replica: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total // self.replicas if per_replica else total

    @property
    def uses_fused_kernel(self) -> bool:
        """Whether :meth:`forward` takes the fused kernel (plain LSTM or equal-size
        superposition stacks, ``config.fused``) rather than the generic per-step loop."""
        core = self.core
        return self.config.fused and (
            core is None or (self.config.memory == "superposition" and len(set(core.sizes)) == 1))

    def with_config(self, **changes) -> StackRNN:
        """A copy with the same weights and ``changes`` applied to its config (e.g.
        ``fused=False``, ``prune=False``), in eval mode."""
        import dataclasses

        clone = type(self)(dataclasses.replace(self.config, **changes), replicas=self.replicas, seeds=self.seeds,
                           embedding_group=self.embedding_group)
        p = next(self.parameters())
        clone.to(device=p.device, dtype=p.dtype).load_state_dict(self.state_dict())
        return clone.eval()

    # ---- forward --------------------------------------------------------------
    def initial_state(self, batch: int) -> None:
        """The state at the start of a string: ``None`` (zeros, empty stack)."""
        return None

    def _replicate(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.replicas, *x.shape)
        if x.dim() != 3 or x.shape[0] != self.replicas:
            raise ValueError(f"x must be (B, T) or (R={self.replicas}, B, T), got {tuple(x.shape)}")
        return x

    def forward(self, x: torch.Tensor, state: ModelState | None = None, return_stack: bool = False) -> Output:
        hs, new_state, stack = self._hidden(x, state, return_stack)
        # hs: (R, T + 1, B, H), hs[:, 0] = h_0 (zeros for a fresh string, else the carried h)
        if not self.include_initial:
            # PTB: transpose the small hs, not the large logits, so that the classifier is one
            # GEMM that writes (R, B, T, V) in place and the loss reads it without a copy
            # (forward and backward); its weight gradient sums the rows batch-major
            return Output(self.classifier(hs[:, 1:].transpose(1, 2)), new_state, stack)
        return Output(self.classifier(hs).transpose(1, 2), new_state, stack)  # logits (R, B, T + 1, V)

    def nll(self, x: torch.Tensor, targets: torch.Tensor, state: ModelState | None = None):
        """Per-token NLL ``(R, B, T(+1))`` of ``targets`` and the new state: the same numbers
        as ``token_nll(self(x, state).logits, targets)``. PTB: the classifier and the loss
        fused replica by replica (:func:`marnn.kernels.loss.classifier_nll`), so the
        (R, B, T, V) logits are never stored (at 1 thread the loss and the gradients bit
        for bit; with more threads the GEMMs split differently: float rounding)."""
        hs, new_state, _ = self._hidden(x, state, False)
        if not self.include_initial:
            return self.classifier.nll(hs[:, 1:].transpose(1, 2), targets), new_state
        return token_nll(self.classifier(hs).transpose(1, 2), targets), new_state

    def _hidden(self, x: torch.Tensor, state: ModelState | None, return_stack: bool):
        x = self._replicate(x)
        R, B, T = x.shape
        ctl = self.controller
        xt = x.transpose(1, 2)  # (R, T, B): the recurrence runs time-major
        if self.embedding is not None:
            gx = ctl.input_gates(self.embedding(xt), one_hot=False)  # (R, T, B, 4H)
        else:
            gx = ctl.input_gates(xt, one_hot=True)
        if self.uses_fused_kernel and not return_stack:
            (hs, new_state), stack = self._fused(gx, state), None
        elif state is None and not return_stack and self._whole_strings(gx):
            action: Any = self.memory.action
            weights = (ctl.gate_bias(), ctl.weight_hh, ctl.weight_ir, action.weight, action.bias)
            if torch.is_grad_enabled():
                hs, cT = rns_sequence.strings_with_grad(gx, *weights, self.core.Q, self.core.S)
            else:
                hs, _, cT = rns_sequence.strings(gx, *weights, self.core.Q, self.core.S)
            new_state, stack = ModelState(hs[:, -1], cT, None, self.core), None  # no stack kept: see _generic
        else:
            hs, new_state, stack = self._generic(gx, state, return_stack)
        return hs, new_state, stack

    def _whole_strings(self, gx) -> bool:
        """Whether a fresh pass runs whole strings through the compiled RNS kernel
        (:mod:`marnn.kernels.rns_sequence`): RNS (not VRNS), no window, the compiled step in use."""
        cfg, core = self.config, self.core
        if not (cfg.fused and cfg.memory == "rns" and core.window is None and rns_sequence.AVAILABLE):
            return False
        action: Any = self.memory.action
        return action.bias is not None and rns_tape.step_kernels(core.compiled, gx.device, gx.dtype) is not None

    def _fused(self, gx, state):
        R, T, B, G = gx.shape
        ctl, cfg = self.controller, self.config
        fresh = state is None
        h0, c0 = (None, None) if fresh else (state.h, state.c)
        if self.core is None:
            hs, cT, _ = fused_stack_lstm(gx, ctl.weight_hh, h0, c0, bias=ctl.gate_bias(), fresh=fresh)
            memory = None
        else:
            sizes = self.core.sizes
            k, M = len(sizes), self.core.reading_size
            S0 = None if fresh else state.memory.stack.view(R, B, -1, k, M // k).transpose(2, 3)  # (R, B, k, L, m)
            heights = stack_heights(T, start=0 if fresh else S0.shape[3], fresh=fresh, prune=cfg.prune,
                                    depth=cfg.depth)
            push = getattr(self.memory, "push", None)
            hs, cT, ST = fused_stack_lstm(
                gx, ctl.weight_hh, h0, c0, bias=ctl.gate_bias(), W_ir=ctl.weight_ir, W_a=self.memory.action.weight,
                b_a=self.memory.action.bias, W_v=push.weight if push else None, b_v=push.bias if push else None,
                S0=S0, k=k, heights=heights, fresh=fresh, push_hidden=cfg.push == "hidden")
            done = (0 if fresh else state.memory.updates) + T - (1 if fresh else 0)
            memory = SuperpositionState(ST.transpose(2, 3).reshape(R * B, ST.shape[3], M), done,
                                        T if (fresh and cfg.prune) else None)
        return hs, ModelState(hs[:, -1], cT, memory, self.core)

    def _generic(self, gx, state, return_stack):
        R, T, B, G = gx.shape
        H, N = G // 4, R * B
        ctl, core, cfg = self.controller, self.core, self.config
        fresh = state is None
        if fresh:
            h = gx.new_zeros(R, B, H)
            c = gx.new_zeros(R, B, H)
            mem = None
            if core is not None:
                extra = {}
                if cfg.memory == "superposition" and cfg.prune:
                    extra["length"] = T
                if cfg.memory == "vrns":
                    bottom = torch.sigmoid(self.memory.bottom)  # (R, m)
                    extra["bottom"] = bottom.unsqueeze(1).expand(R, B, -1).reshape(N, -1)
                mem = core.initial_state(N, device=gx.device, dtype=gx.dtype, **extra)
        else:
            h, c, mem, _ = state
            if core is not None and mem is None:
                raise ValueError("this state ends a whole-string pass of the compiled RNS kernel, which keeps no "
                                 "stack; build the model with fused=False (or run with gradients) to continue")
            if isinstance(mem, SuperpositionState):
                mem = mem._replace(length=None)  # a continued stack grows; pruning needs the whole string
        Whh = ctl.weight_hh.transpose(1, 2)  # (R, H, 4H)
        Wir = ctl.weight_ir.transpose(1, 2) if core is not None else None  # (R, reading, 4H)
        push_layer = getattr(self.memory, "push", None) if core is not None else None
        bias = ctl.gate_bias().unsqueeze(1)  # (R, 1, 4H)
        hs, acts, reads = [h], [], []
        gxs = gx.unbind(1)  # one gradient buffer for all steps (gx[:, t] would zero a whole gx per step)
        for t in range(T):
            gates = gxs[t] + bias
            if not (fresh and t == 0):
                gates = torch.baddbmm(gates, h, Whh)
            if core is not None:
                if fresh and t == 0:
                    reading = core.initial_reading(mem)
                    logits = None
                else:
                    logits = self.memory.action(h).reshape(N, -1)  # (N, num_actions)
                    if cfg.push == "hidden" and cfg.memory == "superposition":
                        pushed = h.reshape(N, H)
                    elif push_layer is not None:
                        pushed = torch.sigmoid(push_layer(h)).reshape(N, -1)
                    else:
                        pushed = None
                    reading, mem = core.step(mem, logits, pushed)
                gates = torch.baddbmm(gates, reading.view(R, B, -1), Wir)
                if return_stack:
                    reads.append(reading.view(R, B, -1))
                    if logits is None:
                        acts.append(None)
                    else:
                        shown = core.actions(logits) if hasattr(core, "actions") else logits
                        acts.append(shown.reshape(R, B, *shown.shape[1:]))
            h, c = ReplicaLSTM.cell(gates, c)
            hs.append(h)
        stack = None
        if return_stack and core is not None:
            ref = next(a for a in acts if a is not None) if any(a is not None for a in acts) else None
            if ref is not None:
                acts = [torch.full_like(ref, float("nan")) if a is None else a for a in acts]
                stack = {"actions": torch.stack(acts, 2), "readings": torch.stack(reads, 2)}
            else:
                stack = {"actions": None, "readings": torch.stack(reads, 2)}
        return torch.stack(hs, 1), ModelState(h, c, mem, core), stack  # hs: (R, T + 1, B, H)
