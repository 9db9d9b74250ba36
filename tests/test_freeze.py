"""Freeze modes: per-replica masks keep frozen slices bitwise identical under Adam."""
from __future__ import annotations

import pytest
import torch
from conftest import MODES, TASK

from marnn import models
from marnn.models.freeze import apply_masks, check_frozen, group_of, snapshot, trainable_groups
from marnn.registry import UnknownNameError


def test_trainable_groups():
    assert trainable_groups("none") == {"controller", "memory", "classifier", "embedding"}
    assert trainable_groups("cm") == {"classifier", "embedding"}
    with pytest.raises(UnknownNameError, match="none"):
        trainable_groups("x")


@pytest.mark.parametrize("embedding_group", ["controller", "memory", "trained"])
def test_masks_follow_groups(embedding_group):
    m = models.build("jm-learned-3", vocab_size=12, hidden_size=4, replicas=4, embedding_group=embedding_group)
    masks = m.freeze_masks(MODES)
    assert set(masks) == {n for n, _ in m.named_parameters()}
    assert masks["classifier.weight"].all() and masks["classifier.bias"].all()
    assert masks["controller.weight_hh"].tolist() == [True, True, False, False]
    assert masks["memory.action.weight"].tolist() == [True, False, True, False]
    expected = {"controller": [True, True, False, False], "memory": [True, False, True, False],
                "trained": [True, True, True, True]}[embedding_group]
    assert masks["embedding.weight"].tolist() == expected
    with pytest.raises(ValueError):
        m.freeze_masks(["none"])


@pytest.mark.parametrize("name,setting", [
    ("jm-10", dict(task=TASK)), ("lstm", dict(task=TASK)), ("rns-2-2", dict(task=TASK)),
    ("jm-hidden-4", dict(vocab_size=9, embedding_group="memory")),
])
def test_frozen_slices_stay_bitwise_identical(name, setting):
    m = models.build(name, replicas=4, seeds=[0, 1, 2, 3], **setting)
    masks = m.freeze_masks(MODES)
    before = snapshot(m)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    V = setting.get("vocab_size", 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randint(0, V, (5, 10), generator=gen)
        opt.zero_grad()
        m(x).logits.square().mean().backward()
        apply_masks(m, masks)
        opt.step()
    problems = check_frozen(before, snapshot(m), masks)
    assert problems == [], problems
    # the check itself notices a change to a frozen slice
    with torch.no_grad():
        m.controller.weight_hh[3] += 1
    assert any("frozen but changed" in p for p in check_frozen(before, m, masks))


def test_apply_masks_zeroes_frozen_and_inactive_slices_even_nan():
    m = models.build("jm-10", task=TASK, replicas=3, seeds=[0, 1, 2])
    masks = m.freeze_masks(["none", "m", "none"])
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    m.controller.weight_hh.grad[2] = float("nan")  # a diverged replica
    params = dict(m.named_parameters())
    apply_masks(params, masks, active=torch.tensor([True, True, False]))
    assert m.memory.action.weight.grad[1].eq(0).all()  # frozen memory (mode m)
    assert m.controller.weight_hh.grad[1].eq(1).all()  # mode m trains the controller
    assert m.controller.weight_hh.grad[2].eq(0).all()  # inactive: zeroed, NaN included
    assert m.memory.action.weight.grad[0].eq(1).all()
    # large gradients take the per-slice path: same result
    g = torch.ones(3, 4, 5)
    p = torch.nn.Parameter(torch.zeros(3, 4, 5))
    p.grad = g.clone()
    apply_masks({"w": p}, {"w": torch.tensor([True, False, True])}, small=1)
    assert p.grad[1].eq(0).all() and p.grad[0].eq(1).all() and p.grad[2].eq(1).all()


def test_group_of_names_the_group_and_rejects_unknown_names():
    assert group_of("memory.push.weight", "controller") == "memory"
    assert group_of("embedding.weight", "memory") == "memory"
    assert group_of("embedding.weight", "trained") == "embedding"
    with pytest.raises(UnknownNameError, match="controller, memory, trained"):
        group_of("embedding.weight", "stack")
    with pytest.raises(KeyError, match="decoder.weight"):
        group_of("decoder.weight", "controller")
