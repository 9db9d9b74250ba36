"""Model registry, shapes, parameter counts, initialisation, replicas, chunking."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import TASK, slices_keep_their_bits  # TASK: marked-copy: alphabet 0 1 #, 3 inputs, 4 outputs

from marnn import models
from marnn.registry import FORMAL_MODELS, PTB_MODELS, UnknownNameError


@pytest.mark.parametrize("name", FORMAL_MODELS + ("lstm-7", "jm-4", "jm-2.2", "jm-learned-3",
                                                        "jm-hidden-6", "vrns-2-2-3"))
def test_formal_names_build_and_shape(name):
    m = models.build(name, task=TASK, replicas=2, seeds=[0, 1])
    x = torch.randint(0, 3, (5, 9))
    out = m(x)
    assert m.include_initial and m.replicas == 2
    assert out.logits.shape == (2, 5, 10, 4)
    assert torch.isfinite(out.logits).all()
    memory = {"memory"} if name.split("-")[0] != "lstm" else set()
    assert set(m.param_groups()) == {"controller", "classifier"} | memory


@pytest.mark.parametrize("name", PTB_MODELS)
def test_ptb_names_build_and_shape(name):
    m = models.build(name, vocab_size=30, hidden_size=8)
    x = torch.randint(0, 30, (3, 6))
    out = m(x)
    assert not m.include_initial
    assert out.logits.shape == (1, 3, 6, 30)
    out2 = m(x, state=models.detach_state(out.state))
    assert out2.logits.shape == (1, 3, 6, 30)


def test_names_and_defaults():
    assert models.names("formal") == ("lstm", "jm-10", "jm-3.3.3", "jm-hidden", "rns-3-3")
    assert models.names("ptb") == ("lstm-256", "jm-hidden-247", "jm-learned-22", "rns-4-5", "vrns-3-3-5")
    with pytest.raises(UnknownNameError):
        models.names("other")
    c = models.make_config("jm-3.3.3", task=TASK)
    assert (c.hidden_size, c.stack_sizes, c.depth, c.include_initial) == (20, (3, 3, 3), None, True)
    c = models.make_config("jm-hidden-247", vocab_size=10001)
    assert (c.hidden_size, c.push, c.depth, c.include_initial, c.embedding) == (247, "hidden", 10, False, True)
    c = models.make_config("jm-learned-22", vocab_size=10001)
    assert (c.hidden_size, c.stack_sizes, c.depth) == (256, (22,), 10)
    assert models.make_config("rns-4-5", vocab_size=10001).window == 35
    assert models.make_config("rns-3-3", task=TASK).window is None
    assert models.make_config("vrns-3-3-5", vocab_size=10).vector_size == 5


@pytest.mark.parametrize("bad", ["gru", "lstm-", "jm", "jm-0", "jm-3..3", "rns-3", "vrns-3-3", "jm-hidden-x", "", None])
def test_malformed_names_list_accepted_forms(bad):
    with pytest.raises(ValueError) as err:
        models.build(bad, task=TASK)
    assert isinstance(err.value, UnknownNameError)
    for form in ("lstm-<H>", "jm-<a>.<b>.<c>", "rns-<Q>-<S>", "vrns-<Q>-<S>-<m>"):
        assert form in str(err.value)


def test_setting_and_override_errors():
    with pytest.raises(ValueError):
        models.build("lstm")
    with pytest.raises(ValueError):
        models.build("lstm", task=TASK, vocab_size=10)
    with pytest.raises(TypeError, match="valid"):
        models.build("lstm", task=TASK, hiden_size=3)
    with pytest.raises(ValueError):
        models.build("lstm", task=TASK, embedding_group="nowhere")


def test_ptb_parameter_counts():
    counts = {name: models.build(name, vocab_size=10001).num_parameters() for name in PTB_MODELS}
    print("PTB parameter counts:", counts)
    assert counts["lstm-256"] == 5_656_849  # docs: book/reference/models.md
    for name, n in counts.items():
        assert 5_600_000 <= n <= 5_950_000, (name, n)


def test_initialisation_rules():
    m = models.build("jm-10", task=TASK, replicas=2)
    c = m.controller
    for p in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh):
        assert p.abs().max() <= 0.1 and p.abs().max() > 0.05
    for layer in (m.classifier, m.memory.action, m.memory.push):
        fan_out, fan_in = layer.weight.shape[1:]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.5 * bound
        assert (layer.bias == 0).all()
    r = models.build("rns-2-2", task=TASK)
    assert 0 < r.memory.action.weight.abs().max() <= 0.1 and (r.memory.action.bias != 0).any()
    p = models.build("jm-learned-4", vocab_size=50, hidden_size=8)
    for name, q in p.named_parameters():
        assert 0 < q.abs().max() <= 0.05, name


@pytest.mark.parametrize("name,kw", [
    ("lstm", {}), ("jm-10", {}), ("jm-3.3.3", {}), ("jm-hidden", {}), ("rns-2-2", {}), ("vrns-2-2-2", {}),
    ("jm-learned-4", {"vocab_size": 20, "hidden_size": 6}), ("jm-hidden-5", {"vocab_size": 20}),
])
def test_replica_equals_single_model(name, kw):
    setting = kw if "vocab_size" in kw else dict(kw, task=TASK)
    seeds = [5, 7, 9]
    big = models.build(name, replicas=3, seeds=seeds, **setting)
    one = models.build(name, replicas=1, seeds=[7], **setting)
    for (n, p), (_, q) in zip(big.named_parameters(), one.named_parameters(), strict=True):
        assert torch.equal(p[1], q[0]), n  # bit-for-bit initialisation
    V = 20 if "vocab_size" in kw else 3
    x = torch.randint(0, V, (4, 11), generator=torch.Generator().manual_seed(0))
    ob, oo = big(x), one(x)
    torch.testing.assert_close(ob.logits[1:2], oo.logits, rtol=1e-5, atol=1e-6)
    ob.logits[1].square().sum().backward()
    oo.logits[0].square().sum().backward()
    for (n, p), (_, q) in zip(big.named_parameters(), one.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad[1:2], q.grad, rtol=1e-4, atol=1e-6, msg=n)
        assert (p.grad[0] == 0).all() and (p.grad[2] == 0).all(), n  # replicas are independent


@pytest.mark.parametrize("name", ["lstm-6", "jm-learned-3", "jm-3.3", "jm-hidden-5", "rns-2-2", "vrns-2-2-3"])
def test_chunked_equals_whole(name):
    """PTB setting: carrying the state across chunks equals one pass over the whole stream."""
    m = models.build(name, vocab_size=13, hidden_size=5, replicas=2, dtype=torch.float64)
    x = torch.randint(0, 13, (3, 12), generator=torch.Generator().manual_seed(1))
    whole = m(x)
    (whole.logits ** 2).sum().backward()
    g_whole = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    o1 = m(x[:, :5])
    o2 = m(x[:, 5:], state=o1.state)  # not detached: full backpropagation through both chunks
    torch.testing.assert_close(torch.cat([o1.logits, o2.logits], 2), whole.logits, rtol=1e-9, atol=1e-11)
    ((o1.logits ** 2).sum() + (o2.logits ** 2).sum()).backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, g_whole[n], rtol=1e-7, atol=1e-9, msg=n)
    # truncated BPTT: same values (RNS states are single-use, so run chunk 1 again)
    o2d = m(x[:, 5:], state=models.detach_state(m(x[:, :5]).state))
    torch.testing.assert_close(o2d.logits, o2.logits, rtol=1e-9, atol=1e-11)


def test_formal_chunked_equals_pruned_whole():
    x = torch.randint(0, 3, (4, 14), generator=torch.Generator().manual_seed(2))
    whole = models.build("jm-10", task=TASK, dtype=torch.float64)(x)  # pruned to min(u, n - u) cells
    m = models.build("jm-10", task=TASK, dtype=torch.float64, prune=False)
    o1 = m(x[:, :6])
    o2 = m(x[:, 6:], state=o1.state)
    torch.testing.assert_close(torch.cat([o1.logits, o2.logits[:, :, 1:]], 2), whole.logits, rtol=1e-10, atol=1e-12)


def test_groups_cover_every_parameter():
    m = models.build("vrns-2-2-2", vocab_size=10, hidden_size=4, embedding_group="memory")
    groups = m.param_groups()
    assert sum(len(v) for v in groups.values()) == len(list(m.parameters()))
    assert m.group_of("embedding.weight") == "memory"
    assert {n for n, _ in groups["memory"]} == {"embedding.weight", "memory.action.weight", "memory.action.bias",
                                                 "memory.push.weight", "memory.push.bias", "memory.bottom"}
    assert models.build("lstm-4", vocab_size=10, embedding_group="trained").group_of("embedding.weight") == "embedding"
    assert m.num_parameters(per_replica=False) == m.num_parameters()


def test_input_shared_or_per_replica():
    m = models.build("jm-10", task=TASK, replicas=2)
    x = torch.randint(0, 3, (3, 8))
    torch.testing.assert_close(m(x).logits, m(torch.stack([x, x])).logits)
    with pytest.raises(ValueError):
        m(torch.stack([x, x, x]))


def test_with_config_keeps_the_weights():
    m = models.build("jm-10", task="marked-copy", replicas=2, seeds=[1, 2], dtype=torch.float64)
    assert m.uses_fused_kernel and not models.build("rns-3-3", task="marked-copy").uses_fused_kernel
    loop = m.with_config(fused=False)
    assert not loop.uses_fused_kernel and not loop.training
    assert next(loop.parameters()).dtype == torch.float64
    x = torch.randint(0, 3, (2, 4, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loop(x).logits, m(x).logits, rtol=1e-10, atol=1e-12)


def test_every_name_list_comes_from_the_registry():
    from marnn import grid, plotting, registry, scales, tasks
    from marnn.tasks import languages

    assert models.names("formal") is registry.FORMAL_MODELS and models.names("ptb") is registry.PTB_MODELS
    assert registry.FORMAL_MODELS == ("lstm", "jm-10", "jm-3.3.3", "jm-hidden", "rns-3-3")
    assert registry.PTB_MODELS == ("lstm-256", "jm-hidden-247", "jm-learned-22", "rns-4-5", "vrns-3-3-5")
    assert registry.PTB_VARIANTS == ("vrns-3-3-5-published",)
    assert registry.PTB_TABLE3 == registry.PTB_MODELS[:4] + registry.PTB_VARIANTS
    # every language class is named in the registry, in the registry's (the paper's) order
    assert tasks.names() == tuple(languages.REGISTRY) == registry.TASKS
    assert set(languages._CLASSES) == set(registry.TASKS)
    assert tuple(scales.SCALES) == registry.SCALES == ("smoke", "quick", "paper-2core", "paper")
    assert grid.formal_grid("smoke", restarts=1, modes=["none"])[0]["task"] == registry.TASKS[0]
    coloured = {name for name, row in registry.MODELS.items() if row.colour is not None}
    assert coloured == set(registry.FORMAL_MODELS + registry.PTB_MODELS)
    assert {row.colour for row in registry.MODELS.values() if row.colour} <= set(plotting.OKABE_ITO)
    for setting in (registry.FORMAL_MODELS, registry.PTB_MODELS):  # a figure shows one setting: colours differ
        assert len({registry.MODELS[m].colour for m in setting}) == len(setting)
    for name, row in registry.MODELS.items():
        assert row.name == name and row.kind in ("formal", "ptb") and row.cost > 0
        assert (row.ptb_epoch_min is not None) == (row.kind == "ptb")
        models.parse_name(name)  # a name models can build
    assert registry.cost("rns-3-3") > registry.cost("lstm") == registry.cost("lstm-64") == registry.DEFAULT_COST
    with pytest.raises(UnknownNameError, match="formal, ptb"):
        models.names("cifar")


@pytest.mark.parametrize("bias", [True, False])
def test_large_replica_linear_equals_autograd_baddbmm(bias):
    """The PTB-size affine map (own backward: weight gradient in the weight's layout)
    against autograd's baddbmm, float64, R = 3 replicas: values and the input and bias
    gradients bit for bit, the weight gradient to rounding (other GEMM operand order)."""
    from marnn.models.lstm import LARGE_AFFINE, ReplicaLinear
    R, H, V = 3, 64, 1100
    assert H * V >= LARGE_AFFINE
    lin = ReplicaLinear(R, H, V, init=("uniform", 0.1), bias=bias).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lin.weight.uniform_(-0.1, 0.1, generator=g)
        if bias:
            lin.bias.uniform_(-0.1, 0.1, generator=g)
    x = torch.randn(R, 2, 5, H, dtype=torch.float64, generator=g)
    up = torch.randn(R, 2, 5, V, dtype=torch.float64, generator=g)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = lin(xa)
    (ya * up).sum().backward()
    ga = {n: p.grad.clone() for n, p in lin.named_parameters()}
    assert lin.weight.grad.is_contiguous()
    lin.zero_grad()
    flat = xb.reshape(R, -1, H)
    yb = (torch.baddbmm(lin.bias.unsqueeze(1), flat, lin.weight.transpose(1, 2)) if bias
          else torch.bmm(flat, lin.weight.transpose(1, 2))).view(R, 2, 5, V)
    (yb * up).sum().backward()
    assert torch.equal(ya, yb)
    assert torch.equal(xa.grad, xb.grad)
    if bias:
        assert torch.equal(ga["bias"], lin.bias.grad)
    torch.testing.assert_close(ga["weight"], lin.weight.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["lstm-256", "jm-hidden-5", "jm-learned-4", "rns-2-2", "vrns-2-2-3"])
def test_ptb_model_nll_equals_logits_then_token_nll(name):
    """``model.nll`` (classifier and loss fused, marnn/kernels/loss.py) against the model's
    logits and ``token_nll``: R = 4 replicas in the four freeze modes, a vocabulary large
    enough for the fused path, carried state, one trainer step (``guarded_step``, SGD with
    per-replica clipping): the new state bit for bit, the loss too where this machine's BLAS
    gives a replica's product the bits of its batched slice (else to float64 rounding), every
    gradient to float64 rounding, frozen slices untouched, and the same parameters after the step."""
    from marnn.kernels.loss import fusable
    from marnn.models.freeze import FREEZE_MODES
    from marnn.train.evaluate import token_nll
    from marnn.train.formal import guarded_step
    from marnn.train.optim import BatchedSGD

    modes = list(FREEZE_MODES)
    kw = {} if name == "lstm-256" else {"hidden_size": 8}
    g = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randint(0, 600, (3, 4), generator=g) for _ in range(2))
    y = torch.randint(0, 600, (3, 4), generator=g)
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = models.build(name, vocab_size=600, replicas=len(modes), **kw).double()
        masks = model.freeze_masks(modes)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = BatchedSGD(model.named_parameters(), lr=[0.5] * len(modes), clip=[0.1] * len(modes), masks=masks)
        state = models.detach_state(model(x0).state)  # carried state, as in the trainer
        if fused:
            assert fusable(torch.zeros((), dtype=torch.float64), model.classifier.weight)
            nll, new_state = model.nll(x1, y, state=state)
        else:
            out = model(x1, state=state)
            nll, new_state = token_nll(out.logits, y), out.state
        loss = nll.mean((1, 2))

        class _Tracker:
            def diverge(self, *args):
                raise AssertionError(args)
        guarded_step(opt, _Tracker(), list(range(len(modes))), loss, 1, 0)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, m in masks.items():
            for r in range(len(modes)):
                if not m[r]:
                    assert torch.equal(params[n][r], before[n][r]), (n, r)
                    assert n not in grads or not grads[n][r].any(), (n, r)
        results.append((nll.detach(), new_state, grads, params))
    (na, sa, ga, pa), (nb, sb, gb, pb) = results
    if slices_keep_their_bits(torch.float64, len(modes), x1.numel(), model.classifier.weight.shape[-1], 600):
        assert torch.equal(na, nb)
    else:  # this machine's BLAS gives a replica's own product other last bits than its batched slice
        torch.testing.assert_close(na, nb, rtol=1e-14, atol=0)
    assert torch.equal(sa.h, sb.h) and torch.equal(sa.c, sb.c)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=1e-10, msg=n)
        torch.testing.assert_close(pa[n], pb[n], rtol=0, atol=1e-10, msg=n)
