"""Cost of the compiled LSTM / superposition loop per string and timestep.

Times the Numba forward and backward of :mod:`marnn.kernels.fused_lstm_numba` alone (no
torch, no lookup, classifier or optimiser) on random weights: R replicas x 10
strings x n steps, one thread, and prints milliseconds per call and
nanoseconds per (string, timestep). This is the part of a replica-batched
training step that grows with R (benchmarks/README.md, "The replica target").

    .venv/bin/python benchmarks/compiled_rows.py                 # lstm and jm-10, R = 1 and 40
    .venv/bin/python benchmarks/compiled_rows.py jm-3.3.3 jm-hidden
"""
import sys
import time

import numpy as np

from marnn import models, tasks
from marnn.kernels import arrays
from marnn.kernels import fused_lstm_numba as compiled
from marnn.models.superposition import stack_heights


def _arrays(name: str, R: int, n: int, B: int = 10):
    """The fused kernel's arguments for model ``name`` with random weights (float32)."""
    model = models.build(name, task=tasks.get("marked-copy"))
    H, core = model.config.hidden_size, model.core
    G = 4 * H
    rng = np.random.default_rng(0)
    f32 = np.float32
    if core is None:
        k, m, push_hidden, P = 0, 1, False, G
    else:
        k, m, push_hidden = len(core.sizes), core.sizes[0], core.push == "hidden"
        P = G + 3 * k + (0 if push_hidden else k * m)
    W_h = (rng.standard_normal((R, P, H)) * 0.3).astype(f32)
    W_ir = None if k == 0 else (rng.standard_normal((R, G, k * m)) * 0.3).astype(f32)
    S0 = None if k == 0 else np.zeros((R, B, k, 0, m), f32)
    args = (rng.standard_normal((R, n, B, G)).astype(f32), W_h, np.zeros((R, 1, P), f32), W_ir,
            np.zeros((R, B, H), f32), np.zeros((R, B, H), f32), S0, k, stack_heights(n), True, push_hidden)
    return args, np.empty((R, n + 1, B, H), f32), rng.standard_normal((R, n + 1, B, H)).astype(f32), P


def measure(name: str, R: int, n: int = 60, B: int = 10, repeats: int = 5) -> tuple[float, float]:
    """Best-of-``repeats`` forward and backward time (ms) of one call."""
    args, Hs, dHs, P = _arrays(name, R, n, B)
    xp = arrays.Numpy(np.float32)
    W_h, W_ir, fresh, push_hidden = args[1], args[3], args[9], args[10]
    fwd = bwd = float("inf")
    for _ in range(repeats + 1):  # the first call may compile
        t = time.perf_counter()
        _, _, sv = compiled.forward_loop(xp, *args, True, Hs)
        fwd = min(fwd, time.perf_counter() - t)
        dP = np.empty((R, n, B, P), np.float32)
        t = time.perf_counter()
        compiled.backward_loop(sv, Hs, dHs, None, None, W_h, W_ir, fresh, push_hidden, dP)
        bwd = min(bwd, time.perf_counter() - t)
    return 1000 * fwd, 1000 * bwd


def main(names) -> None:
    if not compiled.AVAILABLE:
        raise SystemExit("numba is not installed: the compiled loop is not available")
    n, B = 60, 10
    print(f"n = {n}, B = {B}, one thread, float32; best of 5 calls")
    print("| model | R | forward ms | backward ms | ns per string-step (fwd + bwd) |")
    print("|---|---|---|---|---|")
    for name in names:
        for R in (1, 40):
            f, b = measure(name, R, n, B)
            print(f"| {name} | {R} | {f:.2f} | {b:.2f} | {1e6 * (f + b) / (R * B * n):.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["lstm", "jm-10"])
