"""Helpers shared by the test modules.

* :data:`TASK`: the small language most model tests run on (``marked-copy``:
  alphabet ``0 1 #``, so 3 inputs and 4 outputs); import it with
  ``from conftest import TASK`` where a parametrisation needs it at collection time;
* :data:`MODES`: the freeze modes, from the registry;
* :data:`REPO`: the repository root (:mod:`marnn.paths`);
* every test runs with ``TQDM_DISABLE=1`` (no progress bars in the output) and with
  :data:`marnn.kernels.arrays.CHECK_WRITES` on (the kernels' unfilled buffers start as NaN,
  so an entry a kernel reads before it writes it shows in the results);
* ``one_thread``: torch at 1 thread for the test, the caller's setting restored after
  (``pytestmark = pytest.mark.usefixtures("one_thread")``: the stack tests are dominated by
  small ops, and on a shared 2-core machine OpenMP spin-waiting makes 2 threads many times
  slower than 1).
"""
from __future__ import annotations

import pytest
import torch

from marnn import tasks
from marnn.kernels import arrays
from marnn.paths import REPO
from marnn.registry import MODES

TASK = tasks.get("marked-copy")

__all__ = ["TASK", "MODES", "REPO"]


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
