"""Helpers shared by the test modules.

* :data:`TASK`: the small language most model tests run on (``marked-copy``:
  alphabet ``0 1 #``, so 3 inputs and 4 outputs); import it with
  ``from conftest import TASK`` where a parametrisation needs it at collection time;
* :data:`MODES`: the freeze modes, from the registry;
* :data:`REPO`: the repository root (:mod:`marnn.paths`);
* every test runs with ``TQDM_DISABLE=1`` (no progress bars in the output) and with
  :data:`marnn.kernels.arrays.CHECK_WRITES` on (the kernels' unfilled buffers start as NaN,
  so an entry a kernel reads before it writes it shows in the results);
* :func:`run_at_two_threads`: a snippet in a fresh interpreter whose BLAS starts at 2 threads;
* :func:`slices_keep_their_bits`: whether this machine's BLAS gives one replica's product the
  bits of its slice of the batched product (what the fused classifier's bitwise claims rest on);
* ``one_thread``: torch at 1 thread for the test, the caller's setting restored after
  (``pytestmark = pytest.mark.usefixtures("one_thread")``: the stack tests are dominated by
  small ops, and on a shared 2-core machine OpenMP spin-waiting makes 2 threads many times
  slower than 1).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from marnn import tasks
from marnn.kernels import arrays
from marnn.models.lstm import LARGE_AFFINE
from marnn.paths import REPO
from marnn.registry import MODES

TASK = tasks.get("marked-copy")

__all__ = ["TASK", "MODES", "REPO", "run_at_two_threads", "slices_keep_their_bits"]


def run_at_two_threads(snippet: str) -> list[str]:
    """The words ``snippet`` prints, run in a fresh interpreter whose NumPy BLAS, OpenMP and MKL
    start at 2 threads. The snippet finds ``blas()`` (NumPy's BLAS thread counts, sorted) and
    ``before`` (its value once NumPy is imported) defined."""
    code = ("import numpy, threadpoolctl\n"
            "def blas():\n"
            "    return sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
            "                   if i['user_api'] == 'blas'})\n"
            "before = blas()\n") + snippet
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def slices_keep_their_bits(dtype, R: int, N: int, H: int, V: int, bias: bool = True) -> bool:
    """Whether this machine's BLAS, at torch's current thread count, computes replica ``r``'s own
    product ``h[r] W[r]^T (+ b[r])`` (``torch.mm``, then the bias added: the fused classifier of
    marnn/kernels/loss.py) with the bits of slice ``r`` of the batched one (``torch.baddbmm`` /
    ``torch.bmm``: :class:`marnn.models.lstm.ReplicaLinear`), forward and backward, at these shapes. MKL on the Intel
    CPUs the bitwise tests were written on does; on an AMD EPYC (MKL's generic kernels) some shapes
    differ in the last bit, and the fused path then equals the unfused one to float rounding only."""
    g = torch.Generator().manual_seed(5)
    h, W = torch.randn(R, N, H, generator=g, dtype=dtype), torch.randn(R, V, H, generator=g, dtype=dtype)
    b, G = torch.randn(R, V, generator=g, dtype=dtype), torch.randn(R, N, V, generator=g, dtype=dtype)
    batched = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2)) if bias else torch.bmm(h, W.transpose(1, 2))
    if H * V >= LARGE_AFFINE:  # _ReplicaAffine's backward: g^T x
        gW = torch.bmm(G.transpose(1, 2), h)
    else:  # autograd's baddbmm backward: (x^T g)^T
        gW = torch.bmm(h.transpose(1, 2), G).transpose(1, 2)
    gh = torch.bmm(G, W)
    for r in range(R):
        own = torch.mm(h[r], W[r].t())
        if bias:
            own += b[r]
        if not (torch.equal(own, batched[r]) and torch.equal(torch.mm(G[r].t(), h[r]), gW[r])
                and torch.equal(torch.bmm(G[r][None], W[r][None])[0], gh[r])):  # the fused backward's
            return False
    return True


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _check_kernel_writes(monkeypatch):
    monkeypatch.setattr(arrays, "CHECK_WRITES", True)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
