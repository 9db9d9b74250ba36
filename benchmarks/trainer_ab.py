"""The trainers' own step (``marnn.bench._trainer_step``: replica-batched model, freeze
masks, ``token_nll``, ``guarded_step``, deterministic algorithms), old path against new,
alternating in one process at 1 thread; or a torch.profiler table of the new step.

Old path = what the trainers ran before issue 19's PTB changes: ``token_stats`` (the
loss through ``F.cross_entropy`` plus an unused argmax) and autograd's ``baddbmm``
backward for the large replica affine map (its weight gradient transposed, then copied).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py ptb lstm-256 1 10
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py formal jm-10 20 10
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py ptb lstm-256 1 5 --profile

(the grid's workers run with OPENBLAS_NUM_THREADS=1, set by dask; without it NumPy's
BLAS in the fused loop of the PTB models starts one thread per core whatever
``torch.set_num_threads`` says.)
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import marnn.models.lstm as ml
import marnn.train.evaluate as ev
from marnn import bench


def old_nll(logits, targets):
    """The trainers' loss before: ``token_stats`` (F.cross_entropy, and the argmax it also computed)."""
    R, B, T, V = logits.shape
    tgt = targets.expand(R, B, T) if targets.dim() == 2 else targets
    nll = F.cross_entropy(logits.reshape(R * B * T, V).float(), tgt.reshape(-1), reduction="none").view(R, B, T)
    _ = logits.argmax(-1) == tgt
    return nll


def main(argv) -> None:
    torch.set_num_threads(1)
    setting, model, R = argv[0], argv[1], int(argv[2])
    reps = int(argv[3]) if len(argv) > 3 else 8
    spec = (dict(kind="unit", setting="ptb", model=model, n=35, R=R, batch=32, threads=1) if setting == "ptb"
            else dict(kind="unit", setting="formal", model=model, n=60, R=R, batch=10, threads=1))
    new_nll, large = ev.token_nll, ml.LARGE_AFFINE
    if "--profile" in argv:
        train, _ = bench._trainer_step(spec)
        for _ in range(2):
            train()
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(reps):
                train()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25,
                                                                 max_name_column_width=40))
        return
    ev.token_nll = old_nll
    old_train, _ = bench._trainer_step(spec)
    ev.token_nll = new_nll
    new_train, _ = bench._trainer_step(spec)

    def old():
        ml.LARGE_AFFINE = 1 << 62
        old_train()

    def new():
        ml.LARGE_AFFINE = large
        new_train()

    res: dict[str, tuple[list[float], list[float]]] = {"old": ([], []), "new": ([], [])}
    for _ in range(2):
        old()
        new()
    for i in range(reps):
        for name, f in (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old)):
            w, c = time.perf_counter(), time.process_time()
            f()
            res[name][0].append((time.perf_counter() - w) * 1e3)
            res[name][1].append((time.process_time() - c) * 1e3)
    for name, (w, c) in res.items():
        print(f"{setting} {model} R={R} {name}: cpu min {min(c):.1f} median {statistics.median(c):.1f} ms | "
              f"wall min {min(w):.1f} median {statistics.median(w):.1f} ms")
    print("new / old, median cpu:", round(statistics.median(res["new"][1]) / statistics.median(res["old"][1]), 3))


if __name__ == "__main__":
    main(sys.argv[1:])
