"""The compiled LSTM / superposition loop, old against new, alternating in one process.

Loads ``marnn/kernels/fused_lstm_numba.py`` as it was at git revision REV (default
``main``) next to the working tree's module and times ``forward_loop`` and
``backward_loop`` of both on the same random arguments (benchmarks/compiled_rows.py),
alternating old and new, CPU time (``time.process_time``), median of REPEATS calls
after warm-up; prints microseconds per (replica, string, timestep) row-step and
checks that old and new agree (max abs difference of every output).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/numba_ab.py [--rev REV] [--R 20] [--n 60] \
        [--repeats 9] [MODEL ...]        # default: jm-10 jm-3.3.3 jm-hidden lstm
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/numba_ab.py --trainer [--R 20] [--repeats 15] jm-10

``--trainer``: the trainers' whole step (``marnn.bench._trainer_step``, formal setting, n = 60,
B = 10, one thread) with the old module swapped into :mod:`marnn.kernels.fused_lstm` against
the new one, alternating, CPU ms per step.
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from marnn.kernels import arrays
from marnn.kernels import fused_lstm_numba as new

sys.path.insert(0, os.path.dirname(__file__))
from compiled_rows import _arrays  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_old(rev: str):
    """The module at ``rev``, imported from a copy under the temp dir (its cache stays there)."""
    src = subprocess.run(["git", "show", f"{rev}:marnn/kernels/fused_lstm_numba.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    src = src.replace("from .arrays import", "from marnn.kernels.arrays import")
    d = os.path.join(tempfile.gettempdir(), "marnn_numba_ab", rev.replace("/", "_"))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "fused_lstm_numba_old.py")
    if not os.path.exists(path) or open(path).read() != src:
        with open(path, "w") as f:
            f.write(src)
    spec = importlib.util.spec_from_file_location("fused_lstm_numba_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # Numba's cache re-imports the module by name
    spec.loader.exec_module(mod)
    return mod


def run(mod, args, Hs, dHs, P, R, n, B):
    xp = arrays.Numpy(np.float32)
    W_h, W_ir, fresh, push_hidden = args[1], args[3], args[9], args[10]
    c = time.process_time()
    cT, ST, sv = mod.forward_loop(xp, *args, True, Hs)
    f = time.process_time() - c
    dP = np.empty((R, n, B, P), np.float32)
    c = time.process_time()
    g = mod.backward_loop(sv, Hs, dHs, None, None, W_h, W_ir, fresh, push_hidden, dP)
    b = time.process_time() - c
    return f, b, [Hs.copy(), cT, ST, dP, *g]


def compare(name, R, n, B, repeats, old):
    args, Hs, dHs, P = _arrays(name, R, n, B)
    res = {"old": ([], []), "new": ([], [])}
    outs = {}
    mods = {"old": old, "new": new}
    for key in ("old", "new", "old", "new"):  # warm-up (and compile)
        outs[key] = run(mods[key], args, Hs, dHs, P, R, n, B)[2]
    for i in range(repeats):
        for key in (("old", "new") if i % 2 == 0 else ("new", "old")):
            f, b, _ = run(mods[key], args, Hs, dHs, P, R, n, B)
            res[key][0].append(f)
            res[key][1].append(b)
    diff = max(float(np.abs(a - b).max()) if a is not None and a.size else 0.0
               for a, b in zip(outs["old"], outs["new"], strict=True))
    rows = R * B * n
    us = {k: (1e6 * statistics.median(v[0]) / rows, 1e6 * statistics.median(v[1]) / rows) for k, v in res.items()}
    print(f"| {name} | {us['old'][0]:.3f} | {us['new'][0]:.3f} | {us['new'][0] / us['old'][0]:.2f} | "
          f"{us['old'][1]:.3f} | {us['new'][1]:.3f} | {us['new'][1] / us['old'][1]:.2f} | {diff:.1e} |", flush=True)


def trainer(name, R, repeats, old):
    import torch

    from marnn import bench
    from marnn.kernels import fused_lstm
    torch.set_num_threads(1)
    spec = dict(kind="unit", setting="formal", model=name, n=60, R=R, batch=10, threads=1)
    train, _ = bench._trainer_step(spec)
    mods = {"old": old, "new": new}
    res = {"old": [], "new": []}

    def step(key):
        fused_lstm.fused_lstm_numba = mods[key]
        c = time.process_time()
        train()
        return time.process_time() - c

    for key in ("old", "new", "old", "new"):
        step(key)
    for i in range(repeats):
        for key in (("old", "new") if i % 2 == 0 else ("new", "old")):
            res[key].append(step(key))
    fused_lstm.fused_lstm_numba = new
    o, n_ = (1e3 * statistics.median(res[k]) for k in ("old", "new"))
    print(f"| trainer step {name}, R = {R} | {o:.1f} ms | {n_:.1f} ms | {n_ / o:.2f} |  "
          f"(min {1e3 * min(res['old']):.1f} / {1e3 * min(res['new']):.1f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["jm-10", "jm-3.3.3", "jm-hidden", "lstm"])
    ap.add_argument("--rev", default="main")
    ap.add_argument("--R", type=int, default=20)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--B", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--trainer", action="store_true")
    a = ap.parse_args()
    old = load_old(a.rev)
    if a.trainer:
        print(f"CPU ms per trainer step, median of {a.repeats}, old and new alternating")
        print("| step | old | new | new/old |")
        print("|---|---|---|---|")
        for name in a.models:
            trainer(name, a.R, a.repeats, old)
        return
    print(f"R = {a.R}, B = {a.B}, n = {a.n}, float32, one thread; CPU us per row-step, median of {a.repeats}")
    print("| model | fwd old | fwd new | new/old | bwd old | bwd new | new/old | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.models:
        compare(name, a.R, a.n, a.B, a.repeats, old)


if __name__ == "__main__":
    main()
