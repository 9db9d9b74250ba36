"""The whole-string RNS kernel (marnn.kernels.rns_sequence) against the per-step paths.

A fresh RNS model runs each string through all its steps in one compiled call, with and
without gradients; its logits and every parameter gradient must equal the torch reference
(``fused=False``) and the per-step compiled path (what VRNS and windowed models run) to
float64 rounding, and it must step aside wherever it does not apply.
"""
from __future__ import annotations

import pytest
import torch
from conftest import REPO

from marnn import models, tasks
from marnn.kernels import rns_sequence

pytestmark = [pytest.mark.skipif(not rns_sequence.AVAILABLE, reason="numba not installed"),
              pytest.mark.usefixtures("one_thread")]

f64 = torch.float64




def _model(name="rns-3-3", task="marked-copy", R=3, seed=0, dtype=f64, **changes):
    torch.manual_seed(seed)
    m = models.build(name, task=tasks.get(task), replicas=R).to(dtype)
    with torch.no_grad():  # larger weights than at initialisation: sharper actions, a busier stack
        for p in m.parameters():
            p.mul_(3.0)
    return m.with_config(**changes) if changes else m.eval()


def _strings(m, B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, m.config.input_size, (m.replicas, B, T), generator=g)


def _whole(m, x):
    with torch.no_grad():
        gx = m.controller.input_gates(x.transpose(1, 2), one_hot=True)
        assert m._whole_strings(gx)
        return m(x).logits


@pytest.mark.parametrize("task,B,T", [("marked-copy", 4, 13), ("count-3", 2, 1), ("count-3", 3, 2),
                                      ("unmarked-reverse-and-copy", 5, 24)])
def test_whole_strings_equal_the_torch_reference(task, B, T):
    m = _model(task=task)
    x = _strings(m, B, T)
    with torch.no_grad():
        ref = m.with_config(fused=False)(x).logits
    torch.testing.assert_close(_whole(m, x), ref, rtol=1e-11, atol=1e-13)


def test_whole_strings_equal_the_per_step_compiled_path():
    m = _model(R=2)
    x = _strings(m, 3, 17, seed=4)
    with torch.enable_grad():  # with gradients the per-step path runs
        per_step = m(x).logits.detach()
    torch.testing.assert_close(_whole(m, x), per_step, rtol=1e-11, atol=1e-13)


def test_whole_strings_float32_close_to_float64():
    m64 = _model(R=2)
    m32 = _model(R=2, dtype=torch.float32)
    x = _strings(m64, 3, 20, seed=2)
    torch.testing.assert_close(_whole(m32, x).double(), _whole(m64, x), rtol=1e-4, atol=1e-5)


def test_replicas_are_independent():
    m = _model(R=3)
    x = _strings(m, 2, 9, seed=3)
    whole = _whole(m, x)
    for r in range(3):
        one = _model(R=3)
        with torch.no_grad():
            for p, q in zip(one.parameters(), m.parameters(), strict=True):
                p.copy_(q[r:r + 1].expand_as(q))
        torch.testing.assert_close(_whole(one, x[r:r + 1].expand_as(x))[0], whole[r], rtol=0, atol=0)


@pytest.mark.parametrize("task,B,T", [("marked-copy", 3, 11), ("count-3", 2, 1), ("count-3", 2, 2),
                                      ("count-3", 3, 3), ("unmarked-reverse-and-copy", 4, 21)])
def test_gradients_equal_the_torch_reference(task, B, T):
    m = _model(task=task, R=2)
    x = _strings(m, B, T, seed=6)
    w = torch.randn(2, B, T + 1, m.config.output_size, generator=torch.Generator().manual_seed(7), dtype=f64)
    grads = []
    for model in (m, m.with_config(fused=False)):
        model.train()
        with torch.enable_grad():
            gx = model.controller.input_gates(x.transpose(1, 2), one_hot=True)
            assert model._whole_strings(gx) == model.config.fused
            out = model(x).logits
            params = [p for _, p in sorted(model.named_parameters())]
            g = torch.autograd.grad((out * w).sum(), params, allow_unused=True)  # T = 1: no stack step
            g = [torch.zeros_like(p) if d is None else d for p, d in zip(params, g, strict=True)]
            grads.append((out.detach(), g))
    (out, g), (ref, gref) = grads
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-13)
    for a, b in zip(g, gref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_gradients_equal_the_per_step_compiled_path(monkeypatch):
    m = _model(R=2)
    x = _strings(m, 3, 15, seed=8)
    res = []
    for whole in (True, False):
        if not whole:  # the per-step path (one compiled stack step per timestep), as VRNS models run
            monkeypatch.setattr(type(m), "_whole_strings", lambda self, gx: False)
        m.zero_grad()
        out = m(x).logits
        (out.square().sum()).backward()
        res.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
    (a, ga), (b, gb) = res
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,changes", [("vrns-2-3-3", {}), ("rns-3-3", {"fused": False}),
                                          ("rns-3-3", {"window": 4})])
def test_steps_aside_where_it_does_not_apply(name, changes):
    m = _model(name, R=1, **changes)
    x = _strings(m, 2, 5)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert not m._whole_strings(m.controller.input_gates(x.transpose(1, 2), one_hot=True))


def test_its_state_cannot_be_continued():
    m = _model(R=1)
    x = _strings(m, 2, 5)
    with torch.no_grad():
        state = m(x).state
        with pytest.raises(ValueError, match="whole-string pass"):
            m(x, state=state)


def test_cache_follows_the_modules_it_calls_into(tmp_path):
    """Numba keys a cached function by its own file: one that calls into another module keeps
    the code that module had when it was cached, unless ``backend.cache_follows`` empties it."""
    import os
    import subprocess
    import sys

    (tmp_path / "dep.py").write_text("from numba import njit\n\n\n@njit(cache=True)\ndef g():\n    return 1\n")
    (tmp_path / "user.py").write_text(
        "import sys\n\nfrom numba import njit\n\nimport dep\nfrom marnn.kernels import backend\n\n\n"
        "@njit(cache=True)\ndef f():\n    return dep.g()\n\n\n"
        "if 'follow' in sys.argv:\n    backend.cache_follows([dep.__file__], f)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), NUMBA_CACHE_DIR=str(tmp_path))

    def f(*flags):
        cmd = f"import sys; sys.argv += {list(flags)!r}; import user; print(user.f())"
        return subprocess.run([sys.executable, "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert f("follow") == "1"
    assert f("follow") == "1"  # unchanged: the cache stays
    dep = tmp_path / "dep.py"
    dep.write_text(dep.read_text().replace("return 1", "return 2"))
    st = dep.stat()
    os.utime(dep, (st.st_atime + 10, st.st_mtime + 10))
    assert f() == "1"  # what Numba alone serves: the old g inside f's cache
    assert f("follow") == "2"
