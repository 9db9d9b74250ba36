"""The trainers' own step (``marnn.bench._trainer_step``: replica-batched model, freeze
masks, ``token_nll``, ``guarded_step``, deterministic algorithms), old path against new,
alternating in one process at 1 thread; or a torch.profiler table of the new step.

Old path = what the trainers ran before issue 19's PTB changes: ``token_stats`` (the
loss through ``F.cross_entropy`` plus an unused argmax) and autograd's ``baddbmm``
backward for the large replica affine map (its weight gradient transposed, then copied).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py ptb lstm-256 1 10
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py formal jm-10 20 10
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py ptb lstm-256 1 5 --profile

``--fused`` (issue 19, the PTB replica groups): old = the model's logits then ``token_nll``
(``model(x).logits``, (R, 1120, 10001) logits and their gradient stored for all replicas),
``new_zeros`` for the embedding gradient, glibc's default allocator thresholds; new =
``model.nll`` (the classifier and the loss fused replica by replica,
``marnn.kernels.loss.classifier_nll``), no NaN fill, ``marnn.train.large_blocks_kept`` (as
``train_ptb`` runs). The allocator setting is per process, so each path runs in its own
process and the two take one step each in turn. R may be a comma list (1,8); the table
gives CPU ms per step and per replica, and the page faults per step:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_ab.py ptb lstm-256 1,8 6 --fused

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


def _unfused_nll(self, x, targets, state=None):
    """``StackRNN.nll`` before the fused classifier: all replicas' logits, then ``token_nll``."""
    out = self(x, state=state)
    return ev.token_nll(out.logits, targets), out.state


def _old_lookup_backward(ctx, grad):
    """``_Lookup``'s backward before: ``new_zeros`` (under deterministic algorithms a NaN fill, then zeros)."""
    (index,) = ctx.saved_tensors
    g = grad.new_zeros(ctx.rows, grad.shape[-1])
    g.index_add_(0, index.reshape(-1), grad.reshape(-1, grad.shape[-1]))
    return g, None


def _fused_worker(conn, setting: str, model: str, Rs: list[int], path: str) -> None:
    """One side of :func:`fused_ab`, in its own process (the allocator setting is process-wide):
    runs a step of ``R`` replicas whenever the parent sends ``R``; answers CPU ms and page faults."""
    import contextlib
    import resource

    from marnn.models.stack_rnn import StackRNN
    from marnn.train import large_blocks_kept

    torch.set_num_threads(1)
    keep = contextlib.ExitStack()
    if path == "old":
        StackRNN.nll = _unfused_nll  # type: ignore[method-assign]
        ml._Lookup.backward = staticmethod(_old_lookup_backward)  # type: ignore[method-assign]
    else:
        keep.enter_context(large_blocks_kept())  # as train_ptb runs
    steps = {R: bench._trainer_step(dict(kind="unit", setting=setting, model=model, n=35, R=R, batch=32,
                                         threads=1))[0] for R in Rs}
    conn.send("ready")
    while (R := conn.recv()) is not None:
        f0, c = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        steps[R]()
        conn.send(((time.process_time() - c) * 1e3, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
    keep.close()


def fused_ab(setting: str, model: str, Rs: list[int], reps: int) -> None:
    """Old against new trainer steps at every R, each path in its own process, one step at
    a time in alternation (so both see the same load). Old: the model's logits, then
    ``token_nll``; the embedding gradient's NaN fill; glibc's default allocator thresholds.
    New: ``model.nll`` (classifier and loss fused), no NaN fill, ``large_blocks_kept``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    for path in ("old", "new"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_fused_worker, args=(child, setting, model, Rs, path), daemon=True)
        proc.start()
        conns[path] = parent
        procs.append(proc)
    for c in conns.values():
        assert c.recv() == "ready"
    keys = [(R, path) for R in Rs for path in ("old", "new")]

    def run(key):
        conns[key[1]].send(key[0])
        return conns[key[1]].recv()

    for _ in range(2):
        for k in keys:
            run(k)
    res: dict = {k: [] for k in keys}
    for i in range(reps):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            res[k].append(run(k))
    for c in conns.values():
        c.send(None)
    for proc in procs:
        proc.join()

    def med(R, path, j=0):
        return statistics.median(v[j] for v in res[R, path])

    print("| model | R | old: CPU ms / step | new: CPU ms / step | old: ms / replica | new: ms / replica "
          "| new / old | page faults / step, old -> new |")
    print("|---|---|---|---|---|---|---|---|")
    for R in Rs:
        o, n = med(R, "old"), med(R, "new")
        print(f"| {model} | {R} | {o:.1f} | {n:.1f} | {o / R:.1f} | {n / R:.1f} | {n / o:.3f} "
              f"| {med(R, 'old', 1):.0f} -> {med(R, 'new', 1):.0f} |")
    for R in Rs[1:]:
        print(f"per replica, R={R} / R={Rs[0]}: old {med(R, 'old') / R / (med(Rs[0], 'old') / Rs[0]):.3f}, "
              f"new {med(R, 'new') / R / (med(Rs[0], 'new') / Rs[0]):.3f}")


def main(argv) -> None:
    torch.set_num_threads(1)
    if "--fused" in argv:
        args = [a for a in argv if not a.startswith("--")]
        fused_ab(args[0], args[1], [int(r) for r in args[2].split(",")], int(args[3]) if len(args) > 3 else 6)
        return
    setting, model, R = argv[0], argv[1], int(argv[2])
    reps = int(argv[3]) if len(argv) > 3 else 8
    spec = (dict(kind="unit", setting="ptb", model=model, n=35, R=R, batch=32, threads=1) if setting == "ptb"
            else dict(kind="unit", setting="formal", model=model, n=60, R=R, batch=10, threads=1))
    new_nll, large = ev.token_nll, ml.LARGE_AFFINE
    if "--profile" in argv:
        if setting == "ptb":  # as train_ptb runs
            from marnn.train import large_blocks_kept
            large_blocks_kept().__enter__()
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
