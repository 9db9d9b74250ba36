"""Analytic floating-point operation counts of every model, per step.

Conventions (the ones ``marnn bench`` uses to say how far a time is from what
the machine can do):

* one multiply-add = 2 FLOP; the count is of the *algorithm* (the products of
  the generic per-step formulation in :mod:`marnn.models.stack_rnn`), not of a
  kernel's implementation: the fused kernel merges products and the RNS kernel
  multiplies some zero blocks, neither changes the count;
* counted: every matrix product (embedding-to-gates, ``W_hh h``, the stack
  reading ``W_ir r``, the action and push layers, the classifier), the
  superposition update (3 multiply-adds per kept cell and feature) and the RNS
  recurrences (replace, pop weights ``P̂``, the pop term over the pairs of push
  times ``j <= c`` only, the VRNS reading); not counted: elementwise gate
  nonlinearities, softmax, loss, lookups, the optimiser. So the count is a
  lower bound on the arithmetic, and ``FLOPs / peak`` a lower bound on time;
* a training step (forward + backward) = **3 x forward** (the backward of a
  product ``Y = X W`` is two products of the same size; the RNS backward also
  does two pop-term-sized products per pop term: ``_tri_right`` and the
  deferred triangle adjoint);
* counts are per replica; a batch of ``R`` replicas costs ``R`` times as much.

Checked in ``tests/test_flops.py`` against :class:`torch.utils.flop_counter.FlopCounterMode`
on the generic (unfused) forward pass, and the RNS pop term against an
enumeration of the sum in the recurrence (``marnn/models/rns.py``).

>>> from marnn import flops, models
>>> cfg = models.make_config("lstm-256", vocab_size=10001)
>>> round(flops.train_flops(cfg, batch=32, steps=35, fresh=False) / 1e9, 1)
20.7
"""
from __future__ import annotations

TRAIN_FACTOR = 3  # training step = forward + backward = 3 x forward (see the module docstring)


def _lo(t: int, window: int | None) -> int:
    return 0 if window is None else max(0, t - window + 1)


def rns_step_flops(Q: int, S: int, m: int | None, window: int | None, t: int) -> dict[str, float]:
    """FLOPs of one (V)RNS stack step taken at time ``t`` (the stack holds times 0..t; the
    step makes time ``t + 1``), one string. Keys: ``replace`` (incl. the push column),
    ``pop_weights`` (``P̂``), ``pop`` (the triangle, pairs ``j <= c``), ``reading`` (VRNS)."""
    K = Q * S
    T = t + 1
    lw = t - _lo(T, window) + 1  # push times kept [lo_T, t]
    lr = lw - 1  # those with a pop term
    out = {"replace": 2.0 * lw * K * K * K, "pop_weights": 0.0, "pop": 0.0, "reading": 0.0}
    if lr > 0:
        out["pop_weights"] = 2.0 * Q * K * lr * K
        out["pop"] = 2.0 * S * Q * Q * K * lr * (lr + 1) / 2
    if m:
        out["reading"] = 2.0 * (lw + 1) * K * m
    return out


def rns_pop_macs_enumerated(Q: int, S: int, n: int, window: int | None = None) -> int:
    """Multiply-adds of the pop term, one string of ``n`` steps, by walking the sum of the
    recurrence (a check of :func:`rns_step_flops`, slow): at step ``T`` for every start
    ``i`` in the window, middle time ``k`` with ``i < k <= T - 2`` and every ``(q, x)``,
    ``(u, y)``, ``r``: ``gamma[i->k][q,x->u,y] * P_T[k][u,y->r]``."""
    K = Q * S
    count = 0
    for t in range(n):  # the step from time t to T = t + 1
        T = t + 1
        lo = _lo(T, window)  # push times j = i + 1 in [lo, t]
        for j in range(lo, t + 1):
            for _k in range(j, T - 1):  # tri column c = k with j <= c <= t - 1
                for _a in range(K):
                    for _uy in range(K):
                        count += Q  # r
    return count


def forward_flops(config, batch: int, steps: int, fresh: bool = True, start: int = 0) -> dict[str, float]:
    """Forward FLOPs of one replica on ``batch`` strings x ``steps`` timesteps, by component.

    ``config``: a :class:`marnn.models.ModelConfig`. ``fresh``: the steps start a
    string (no update at the first step, zero state); otherwise the state is
    carried and ``start`` is the time the stack has reached (superposition: its
    height; RNS: the tape time, which with a window saturates). Keys:
    ``embedding`` (PTB: embedding to gates), ``recurrent`` (``W_hh h``),
    ``reading`` (``W_ir r``), ``action``, ``push``, ``stack``, ``classifier``,
    and ``total``.
    """
    from .models.superposition import stack_heights

    B, T, H = int(batch), int(steps), config.hidden_size
    if B < 1 or T < 1:
        raise ValueError(f"batch and steps must be positive, got batch={batch}, steps={steps}")
    G = 4 * H
    updates = T - 1 if fresh else T  # steps with W_hh h (and a stack update)
    out = dict.fromkeys(("embedding", "recurrent", "reading", "action", "push", "stack", "classifier"), 0.0)
    if config.embedding:
        out["embedding"] = 2.0 * T * B * H * G
    out["recurrent"] = 2.0 * updates * B * H * G
    rows = T + 1 if config.include_initial else T
    out["classifier"] = 2.0 * rows * B * H * config.output_size
    if config.memory == "superposition":
        M = H if config.push == "hidden" else sum(config.stack_sizes)
        k = 1 if config.push == "hidden" else len(config.stack_sizes)
        out["reading"] = 2.0 * T * B * M * G
        out["action"] = 2.0 * updates * B * H * 3 * k
        if config.push != "hidden":
            out["push"] = 2.0 * updates * B * H * M
        heights = stack_heights(T, start=0 if fresh else int(start), fresh=fresh, prune=config.prune and fresh,
                                depth=config.depth)
        kept = sum(max(h, 1) for t, h in enumerate(heights) if not (fresh and t == 0))
        out["stack"] = 2.0 * 3 * kept * B * M
    elif config.memory in ("rns", "vrns"):
        Q, S = config.states, config.symbols
        K = Q * S
        m = config.vector_size if config.memory == "vrns" else None
        out["reading"] = 2.0 * T * B * K * (m or 1) * G
        out["action"] = 2.0 * updates * B * H * K * (2 * K + Q)
        if m:
            out["push"] = 2.0 * updates * B * H * m
        t0 = 0 if fresh else int(start)
        stack = 0.0
        for t in range(t0, t0 + updates):
            stack += sum(rns_step_flops(Q, S, m, config.window, t).values())
        out["stack"] = stack * B
    elif config.memory is not None:
        raise ValueError(f"unknown memory {config.memory!r}; known: None, superposition, rns, vrns")
    out["total"] = sum(out.values())
    return out


def train_flops(config, batch: int, steps: int, fresh: bool = True, start: int = 0) -> float:
    """FLOPs of one training step of one replica: :data:`TRAIN_FACTOR` x forward."""
    return TRAIN_FACTOR * forward_flops(config, batch, steps, fresh, start)["total"]


def rns_pop_share(config, batch: int, steps: int, fresh: bool = True, start: int = 0) -> float:
    """Share of the RNS pop term in the forward count (0 for other models)."""
    if config.memory not in ("rns", "vrns"):
        return 0.0
    m = config.vector_size if config.memory == "vrns" else None
    t0 = 0 if fresh else int(start)
    updates = steps - 1 if fresh else steps
    pop = sum(rns_step_flops(config.states, config.symbols, m, config.window, t)["pop"]
              for t in range(t0, t0 + updates)) * batch
    return pop / forward_flops(config, batch, steps, fresh, start)["total"]


# ----------------------------------------------------------------------------- memory traffic
WORD = 4  # bytes per number (float32)
OPT_PASSES = {"adam": 7, "sgd": 3}  # optimiser: Adam reads p, g, m, v and writes p, m, v; SGD reads p, g, writes p


def num_parameters(config) -> int:
    """Parameters of one replica (the layers of :class:`marnn.models.StackRNN`), analytically."""
    H, G = config.hidden_size, 4 * config.hidden_size
    x = H if config.embedding else config.input_size
    M, actions, pushed = _stack_sizes(config)
    n = G * (x + M + H) + 2 * G                       # controller: W_ih (input + reading), W_hh, two biases
    n += (H + 1) * config.output_size                 # classifier
    if config.embedding:
        n += config.input_size * H
    n += (H + 1) * actions                            # action layer
    if pushed and not (config.memory == "superposition" and config.push == "hidden"):
        n += (H + 1) * pushed                         # push layer
    if config.memory == "vrns":
        n += pushed                                   # bottom vector
    return n


def _stack_sizes(config) -> tuple[int, int, int]:
    """(reading size, actions per step, pushed size) of the stack (zeros without one)."""
    if config.memory == "superposition":
        M = config.hidden_size if config.push == "hidden" else sum(config.stack_sizes)
        k = 1 if config.push == "hidden" else len(config.stack_sizes)
        return M, 3 * k, M
    if config.memory in ("rns", "vrns"):
        K = config.states * config.symbols
        m = config.vector_size if config.memory == "vrns" else 0
        return K * (m or 1), K * (2 * K + config.states), m
    return 0, 0, 0


def step_bytes(config, batch: int, steps: int, fresh: bool = True, start: int = 0, train: bool = True,
               optimizer: str = "adam") -> dict[str, float]:
    """The bytes one step of one replica must move at least, by component (``total``).

    The memory-traffic counterpart of :func:`forward_flops` (``marnn bench`` divides it by
    the bandwidth of a STREAM-like triad measured in the same run): what the generic
    formulation moves *between its passes*, each tensor once, as if every pass ran
    from a cache that holds its own working set but nothing across passes:

    * ``params``: every parameter read once; training also writes its gradient once and
      runs the optimiser over it (:data:`OPT_PASSES` parameter-sized arrays);
    * ``logits``: the classifier's output written and read by the loss (training: its
      gradient written and read too);
    * ``saved`` (training only): the state the backward pass needs, written once in the
      forward pass and read once in the backward pass: per string and step the LSTM's
      gates, cell and hidden state (6H) and the stack reading, plus the stack's own state
      -- the kept superposition cells, or the RNS column ``Ĝ[., t]`` (``L K^2``) and
      ``alpha``;
    * ``inputs``: token ids and targets (8 bytes each).

    Not counted: re-reading a state within a pass (the RNS pop term sweeps its whole
    triangle at every step, about 1.5 FLOP per byte: a kernel that keeps one string's
    triangle in cache need not re-read it from memory). So the count is a lower bound
    on the traffic, and ``bytes / bandwidth`` a lower bound on time. Numbers are
    float32 (:data:`WORD` bytes).
    """
    from .models.superposition import stack_heights

    B, T, H = int(batch), int(steps), config.hidden_size
    rows = T + 1 if config.include_initial else T
    out = dict.fromkeys(("params", "logits", "saved", "inputs"), 0.0)
    P = num_parameters(config)
    out["params"] = WORD * P * ((2 + OPT_PASSES[optimizer]) if train else 1)
    out["logits"] = WORD * rows * B * config.output_size * (4 if train else 2)
    out["inputs"] = 8.0 * B * (T + rows)
    if train:
        M = _stack_sizes(config)[0]
        per = (6 * H + M) * T * B                      # controller state and readings
        updates = T - 1 if fresh else T
        if config.memory == "superposition":
            heights = stack_heights(T, start=0 if fresh else int(start), fresh=fresh,
                                    prune=config.prune and fresh, depth=config.depth)
            per += sum(max(h, 1) for t, h in enumerate(heights) if not (fresh and t == 0)) * B * M
        elif config.memory in ("rns", "vrns"):
            K = config.states * config.symbols
            t0 = 0 if fresh else int(start)
            for t in range(t0, t0 + updates):
                lw = t - _lo(t + 1, config.window) + 1
                per += ((lw + 1) * K * K + K) * B
        out["saved"] = 2.0 * WORD * per
    out["total"] = sum(out.values())
    return out
