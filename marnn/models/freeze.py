"""Freeze modes per replica (docs: book/reference/models.md, "Freeze modes").

A freeze mode names the groups that stay at their random initialisation
(:data:`marnn.models.base.FREEZE_MODES`): ``none``, ``m`` (memory), ``c``
(controller), ``cm`` (both). The classifier always trains; the PTB embedding
follows the model's ``embedding_group``. Because replicas share one parameter
tensor, freezing is a per-replica mask: ``mask[r]`` is True where replica ``r``
trains the parameter. A trainer enforces it by zeroing the masked gradient
slices before the optimiser step (:func:`apply_masks`); with Adam a zero
gradient on a slice whose moments are zero leaves that slice bitwise unchanged
(no weight decay), which :func:`check_frozen` verifies.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..registry import lookup
from .base import FREEZE_MODES


def trainable_groups(mode: str) -> set[str]:
    """Groups trained in ``mode`` (an unknown mode lists the valid ones)."""
    frozen = lookup("freeze mode", mode, FREEZE_MODES)
    return {"controller", "memory", "classifier", "embedding"} - set(frozen)


def freeze_masks(model, modes: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{param_name: BoolTensor[R]}`` for one mode per replica (True = trainable)."""
    modes = [modes] * model.replicas if isinstance(modes, str) else list(modes)
    if len(modes) != model.replicas:
        raise ValueError(f"got {len(modes)} freeze modes for {model.replicas} replicas")
    trained = [trainable_groups(m) for m in modes]
    masks = {}
    for name, p in model.named_parameters():
        group = model.group_of(name)
        masks[name] = torch.tensor([group in t for t in trained], dtype=torch.bool, device=p.device)
    return masks


@torch.no_grad()
def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradient slices of frozen (parameter, replica) pairs, in place."""
    for name, p in model.named_parameters():
        m = masks.get(name)
        if p.grad is None or m is None or bool(m.all()):
            continue
        p.grad.mul_(m.to(p.grad.dtype).view(-1, *([1] * (p.dim() - 1))))


def snapshot(model) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter (for :func:`check_frozen`)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def check_frozen(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                 masks: dict[str, torch.Tensor]) -> list[str]:
    """Problems found: frozen slices that changed at all, trainable ones that never moved.

    ``before`` / ``after``: :func:`snapshot` results (or ``model``s). An empty
    list means every frozen replica slice is bitwise identical and every
    trainable one changed.
    """
    if not isinstance(before, dict):
        before = snapshot(before)
    if not isinstance(after, dict):
        after = snapshot(after)
    problems = []
    for name, mask in masks.items():
        for r, trainable in enumerate(mask.tolist()):
            same = torch.equal(before[name][r], after[name][r])
            if not trainable and not same:
                problems.append(f"{name}[{r}] is frozen but changed")
            elif trainable and same:
                problems.append(f"{name}[{r}] is trainable but did not move")
    return problems
