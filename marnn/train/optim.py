"""Optimisers for replica-batched models: one step updates ``R`` independent models.

Every parameter has a leading replica dimension ``R`` (:mod:`marnn.models.base`).
Each replica ``r`` has its own learning rate ``lr[r]``, its own clipping
threshold ``clip[r]`` and its own step counter, and is updated only where it is
*trainable*: ``masks[name][r]`` (its freeze mode, from
:func:`marnn.models.freeze.freeze_masks`, enforced by
:func:`marnn.models.freeze.apply_masks`) and ``active[r]`` (not early
stopped, not diverged). A masked slice is never written: the update is applied
with ``torch.where``, so a frozen or stopped replica stays bitwise identical
whatever its gradient holds (zeros, or NaN from a diverged forward pass).

Per-replica gradient-norm clipping (PyTorch's ``clip_grad_norm_`` rule, but one
norm per replica over that replica's trainable slices only):

.. math:: g_r \\leftarrow g_r \\cdot \\min\\Big(1, \\frac{c_r}{\\lVert g_r\\rVert + 10^{-6}}\\Big)

Adam (PyTorch's default formulation, no weight decay), per replica with step
``t_r``:

.. math:: m \\leftarrow \\beta_1 m + (1-\\beta_1) g,\\quad
          v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
          \\theta \\leftarrow \\theta - \\frac{\\eta_r}{1-\\beta_1^{t_r}}
          \\frac{m}{\\sqrt{v}/\\sqrt{1-\\beta_2^{t_r}} + \\epsilon}

SGD: :math:`\\theta \\leftarrow \\theta - \\eta_r g`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from ..models.freeze import apply_masks

# Parameters with more elements than this are updated in place, one replica
# slice at a time (no full-size temporaries); smaller ones in one batched
# ``torch.where`` (fewer kernel launches). Both leave masked slices untouched.
SMALL = 1 << 16


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(R,)`` -> ``(R, 1, ..., 1)`` broadcastable against ``like`` ``(R, ...)``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class ReplicaOptimizer:
    """Base class: parameters by name, per-replica lr / clip / trainable masks."""

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], lr, clip,
                 masks: Mapping[str, torch.Tensor] | None = None):
        self.params: dict[str, torch.nn.Parameter] = dict(named_params)
        if not self.params:
            raise ValueError("no parameters to optimise")
        first = next(iter(self.params.values()))
        self.R = int(first.shape[0])
        dev = first.device
        self.lr = torch.as_tensor(lr, dtype=torch.float64, device=dev).expand(self.R).clone()  # (R,)
        self.clip = torch.as_tensor(clip, dtype=torch.float64, device=dev).expand(self.R).clone()  # (R,)
        self.masks = {n: (masks[n].to(dev).bool() if masks is not None and n in masks
                          else torch.ones(self.R, dtype=torch.bool, device=dev)) for n in self.params}
        self.active = torch.ones(self.R, dtype=torch.bool, device=dev)  # not stopped, not diverged
        self.steps = torch.zeros(self.R, dtype=torch.long, device=dev)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def _trainable(self, name: str) -> torch.Tensor:
        return self.masks[name] & self.active  # (R,)

    @torch.no_grad()
    def mask_and_clip(self) -> torch.Tensor:
        """Zero the grads of frozen / inactive slices, clip per replica; return ``(R,)`` norms.

        The norm is taken before clipping, over trainable slices only (a frozen
        parameter is not part of that replica's optimisation problem). A
        non-finite norm marks a diverged step for that replica.
        """
        apply_masks(self.params, self.masks, self.active, small=SMALL)  # the freeze modes, and stopped replicas
        sq = torch.zeros(self.R, dtype=torch.float64, device=self.lr.device)
        for p in self.params.values():
            g = p.grad
            if g is None:
                continue
            sq += torch.linalg.vector_norm(g.reshape(self.R, -1), dim=1).double().pow(2)
        norm = sq.sqrt()  # (R,)
        coef = (self.clip / (norm + 1e-6)).clamp(max=1.0)
        coef = torch.where(torch.isfinite(coef), coef, torch.ones_like(coef))
        if bool((coef < 1).any()):
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.mul_(_expand(coef.to(p.grad.dtype), p.grad))
        return norm

    def step(self, skip: torch.Tensor | None = None) -> None:
        """Apply one update to every trainable replica not in ``skip`` (``(R,)`` bool)."""
        raise NotImplementedError

    # ---- keeping a subset of the replicas -----------------------------------
    _PER_PARAM_STATE: tuple[str, ...] = ()

    def subset(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], keep: list[int]) -> ReplicaOptimizer:
        """This optimiser's state for replicas ``keep`` only, over ``named_params``
        (the parameters of a model holding exactly those replicas, in that order)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        idx = torch.tensor(keep, dtype=torch.long, device=self.lr.device)
        new.params = dict(named_params)
        new.R = len(keep)
        for attr in ("lr", "clip", "active", "steps"):
            setattr(new, attr, getattr(self, attr)[idx].clone())
        new.masks = {n: m[idx].clone() for n, m in self.masks.items()}
        for attr in self._PER_PARAM_STATE:
            setattr(new, attr, {n: t[idx.to(t.device)].clone() for n, t in getattr(self, attr).items()})
        return new


class BatchedAdam(ReplicaOptimizer):
    """Adam with one learning rate, clip and step counter per replica."""

    _PER_PARAM_STATE = ("m", "v", "name_steps")

    def __init__(self, named_params, lr, clip=float("inf"), masks=None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(named_params, lr, clip, masks)
        self.betas, self.eps = betas, eps
        self.m = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.name_steps = {n: torch.zeros(self.R, dtype=torch.long, device=p.device) for n, p in self.params.items()}

    @torch.no_grad()
    def step(self, skip: torch.Tensor | None = None) -> None:
        b1, b2 = self.betas
        go = self.active.clone() if skip is None else self.active & ~skip
        self.steps += go.long()
        for name, p in self.params.items():
            if p.grad is None:
                continue
            upd = self._trainable(name) & go  # (R,)
            if not bool(upd.any()):
                continue
            t = self.name_steps[name] + upd.long()  # steps this parameter has taken, per replica
            self.name_steps[name] = t
            g, m, v = p.grad, self.m[name], self.v[name]
            if p.numel() > SMALL:  # large tensors: in place, one replica slice at a time
                for r in torch.nonzero(upd).flatten().tolist():
                    tr = int(t[r])
                    bc1, bc2 = 1 - b1 ** tr, 1 - b2 ** tr
                    m[r].mul_(b1).add_(g[r], alpha=1 - b1)
                    v[r].mul_(b2).addcmul_(g[r], g[r], value=1 - b2)
                    denom = (v[r].sqrt() / math.sqrt(bc2)).add_(self.eps)
                    p[r].addcdiv_(m[r], denom, value=-float(self.lr[r]) / bc1)
                continue
            tf = t.clamp(min=1).double()
            bc1_r = 1 - b1 ** tf  # (R,)
            bc2_r = 1 - b2 ** tf
            m_new = m * b1 + g * (1 - b1)
            v_new = v * b2 + g * g * (1 - b2)
            denom = v_new.sqrt() / _expand(bc2_r.sqrt().to(p.dtype), p) + self.eps
            step_size = _expand((self.lr / bc1_r).to(p.dtype), p)
            keep = _expand(upd, p)
            p.copy_(torch.where(keep, p - step_size * m_new / denom, p))
            self.m[name] = torch.where(keep, m_new, m)
            self.v[name] = torch.where(keep, v_new, v)


class BatchedSGD(ReplicaOptimizer):
    """Plain SGD (no momentum) with one learning rate and clip per replica."""

    @torch.no_grad()
    def step(self, skip: torch.Tensor | None = None) -> None:
        go = self.active.clone() if skip is None else self.active & ~skip
        self.steps += go.long()
        for name, p in self.params.items():
            if p.grad is None:
                continue
            upd = self._trainable(name) & go
            if not bool(upd.any()):
                continue
            if p.numel() > SMALL:  # in place, one replica slice at a time
                for r in torch.nonzero(upd).flatten().tolist():
                    p[r].add_(p.grad[r], alpha=-float(self.lr[r]))
                continue
            new = p - _expand(self.lr.to(p.dtype), p) * p.grad
            p.copy_(torch.where(_expand(upd, p), new, p))
