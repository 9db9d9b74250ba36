"""Freeze modes, stated and enforced in one place (docs: book/reference/models.md, "Freeze modes").

What a mode freezes is data in the registry (:data:`marnn.registry.FREEZE_MODES`):
``none``, ``m`` (memory), ``c`` (controller), ``cm`` (both); the classifier
always trains, and the PTB embedding joins the group its model's
``embedding_group`` names. This module is everything else:

1. :func:`group_of`: the group of a parameter, from its name;
2. :func:`freeze_masks`: one mode per replica -> ``{param_name: BoolTensor[R]}``,
   ``mask[r]`` True where replica ``r`` trains the parameter (replicas share
   one parameter tensor, so freezing is per replica slice);
3. :func:`apply_masks`: zero the gradient of every frozen slice. The
   optimisers (:class:`marnn.train.optim.ReplicaOptimizer`) take the masks,
   call it before clipping on every step, and write their update through the
   same mask, so a frozen slice is never written and stays bitwise equal to
   its initial value;
4. :func:`snapshot` / :func:`check_frozen`: verify exactly that after training.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..registry import EMBEDDING_GROUPS, FREEZE_MODES, GROUPS, UnknownNameError, lookup


def trainable_groups(mode: str) -> set[str]:
    """Groups trained in ``mode`` (an unknown mode lists the valid ones)."""
    frozen = lookup("freeze mode", mode, FREEZE_MODES)
    return set(GROUPS) - set(frozen)


def group_of(param_name: str, embedding_group: str) -> str:
    """``controller`` | ``memory`` | ``classifier`` | ``embedding``: the first part of the name.

    The input embedding (PTB) joins the group named by ``embedding_group``
    ("controller" by default, "memory", or "trained" = its own group
    ``embedding``, never frozen).
    """
    if embedding_group not in EMBEDDING_GROUPS:
        raise UnknownNameError("embedding group", embedding_group, EMBEDDING_GROUPS)
    head = param_name.split(".", 1)[0]
    if head == "embedding":
        return "embedding" if embedding_group == "trained" else embedding_group
    if head in GROUPS:
        return head
    raise KeyError(f"{param_name!r} is not a parameter of this model")


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
def apply_masks(params, masks: Mapping[str, torch.Tensor], active: torch.Tensor | None = None,
                small: int = 1 << 16) -> None:
    """Zero the gradient slices of frozen (parameter, replica) pairs, in place.

    ``params``: a model or ``{name: parameter}``; ``masks``: :func:`freeze_masks`
    (a missing name trains in every replica); ``active``: optional ``(R,)``
    bool, False for replicas that must not move at all (early stopped,
    diverged). Slices are overwritten with zeros (never multiplied, so a NaN
    gradient of a diverged replica is cleared too); gradients with more than
    ``small`` elements are zeroed one replica slice at a time (no full-size
    temporary).
    """
    named = params.named_parameters() if hasattr(params, "named_parameters") else params.items()
    for name, p in named:
        g = p.grad
        m = masks.get(name)
        if m is None:
            if active is None:
                continue
            keep = active
        else:
            keep = m if active is None else m & active
        if g is None or bool(keep.all()):
            continue
        if g.numel() <= small:
            g.copy_(torch.where(keep.view(-1, *([1] * (g.dim() - 1))), g,
                                torch.zeros((), dtype=g.dtype, device=g.device)))
        else:
            for r in torch.nonzero(~keep).flatten().tolist():
                g[r].zero_()


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
