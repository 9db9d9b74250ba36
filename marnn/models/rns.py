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

The kernel
----------
The step these formulas describe, with its hand-written backward pass, is
:class:`marnn.kernels.rns_tape.Tape` (``forward_step`` is the torch reference;
on the CPU the Numba kernels of :mod:`marnn.kernels.rns_numba` run it). This
module holds the model's interface (:class:`RNSCore`), the published bottom
layout (:class:`_PublishedBottom`) and :func:`rns_readings`, the functional form
``tests/test_rns.py`` checks against the recurrences followed literally.
"""
from __future__ import annotations

import torch

from ..kernels.rns_tape import InitFn, StepFn, Tape, step_weights

Tensor = torch.Tensor

__all__ = ["RNSCore", "RNSState", "rns_readings", "BOTTOM_LAYOUTS"]


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

    def snapshot(self) -> dict:
        """Plain tensors and numbers (see :meth:`marnn.kernels.rns_tape.Tape.snapshot`)."""
        def cpu(xs):
            return [x.detach().cpu().clone() for x in xs]
        return {"bottom": self.bottom.detach().cpu().clone(), "t": self.t, "alphas": cpu(self.alphas),
                "cols": cpu(self.cols), "h": cpu(self.h)}

    @classmethod
    def restore(cls, core: RNSCore, snap: dict, device=None) -> _PublishedBottom:
        new = object.__new__(cls)
        new.core, new.bottom, new.t = core, snap["bottom"].to(device), snap["t"]
        new.alphas = [a.to(device) for a in snap["alphas"]]
        new.cols = [c.to(device) for c in snap["cols"]]
        new.h = [h.to(device) for h in snap["h"]]
        return new

    def step(self, x: Tensor, kind: str) -> tuple[Tensor | None, bool]:
        """Advance with this step's action logits / weights: ``(term, done)``, the
        reading term ``(N, K*m)`` (None when zero) and whether every later one is zero."""
        core = self.core
        K, Q, S = core.K, core.Q, core.S
        if core.window is not None and self.t + 1 >= core.window:
            return None, True
        E = step_weights(x.to(torch.float64), kind)                 # (N, K, 2K+Q), one scale per step
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
        self.compiled = compiled  # None: rns_tape.compiled_default(); False: always the torch reference
        self.pk_hint = 0  # compiled step: packed-triangle size (per string and symbol) a tape reached
        self.K = Q * S
        self.num_actions = self.K * (2 * self.K + Q)
        self.reading_size = self.K * (m if m else 1)
        self.pushed_size = m if m else 0

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
        tape = Tape(self, N, device, dtype, alpha, col, vec, 0, 0)
        token, reading0 = None, None
        if self.m:
            if torch.is_grad_enabled() and bottom.requires_grad:
                reading0, token = InitFn.apply(bottom, tape)
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
        if state.tape.t != state.t:
            raise ValueError("detach_state: this state has already been advanced")
        published = None if state.published is None else state.published.detached()
        return RNSState(state.tape.detached(), state.t, None, None, published)

    def snapshot_state(self, state: RNSState) -> dict:
        """A state that :meth:`detach_state` gave (nothing advanced it since) as plain tensors and
        numbers, for a PTB group's state saved inside an epoch; :meth:`restore_state` inverts it."""
        if state.token is not None or state.reading0 is not None or state.tape.t != state.t:
            raise ValueError("snapshot_state: only a state from detach_state that has not advanced can be saved")
        return {"t": state.t, "tape": state.tape.snapshot(),
                "published": None if state.published is None else state.published.snapshot()}

    def restore_state(self, snap: dict, device=None) -> RNSState:
        published = snap["published"]
        return RNSState(Tape.restore(self, snap["tape"], device), snap["t"], None, None,
                        None if published is None else _PublishedBottom.restore(self, published, device))

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
            reading, token = StepFn.apply(x, v, tok, tape, kind)
        else:
            with torch.no_grad():
                reading = tape.forward_step(step_weights(x.detach(), kind),
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
