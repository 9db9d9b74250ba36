"""Speed of every model against the machine's limit, and a cost model for planning.

``python -m marnn.bench [--json] [--models NAME ...] [--quick] [--threads N ...] [--backend B]``
``python -m marnn.bench --plan SCALE [--from-json FILE] [--check]``

Rows (each measured in a fresh child process, so peak memory is per row), at
every thread count of ``--threads`` (default 1 and 2):

* ``train``: one training step (forward + backward + ``torch.optim.Adam``) on a
  batch of 10 random strings of length n in {40, 60, 80} (formal models,
  marked-copy alphabet);
* ``ptb``: one training step on a 32 x 35 chunk, vocabulary 10,001, state
  carried from the previous chunk (detached), ``torch.optim.SGD`` -- the PTB
  trainer's step;
* ``eval``: evaluation time per string at n = 400, no gradient;
* ``replicas``: R = 40 replicas (10 restarts x 4 freeze modes, the paper's
  formal group) vs R = 1 at n = 60 (lstm and jm-* models);
* ``torch``: the same training step done by torch's own fused ``nn.LSTM``
  (``torch-lstm``: formal size, one-hot inputs, Adam, next to ``lstm``;
  ``torch-lstm-256``: embedding + ``nn.LSTM`` + linear on a PTB chunk, SGD,
  next to ``lstm-256``).

Every row states its limit, from two bounds: ``gflop`` is the step's analytic
count (:mod:`marnn.flops`: 1 multiply-add = 2 FLOP, training step = 3 x forward;
``torch`` rows carry the count of the marnn model doing the same step) and
``peak_gflops`` the machine's fp32 rate on a large square matrix product
(2048 x 2048 x 2048, best of 5), so ``flop_ms`` = FLOPs / peak; ``gbyte`` is
the bytes the step must move at least (:func:`marnn.flops.step_bytes`) and
``bandwidth_gbs`` the rate of a STREAM-like triad ``a = b + s c`` on arrays
far larger than the caches (best of 5), so ``mem_ms`` = bytes / bandwidth.
Both rates are measured in this run at the row's thread count. ``bound_ms``
is the larger of the two (no implementation can be faster), ``binds`` says
which (``flop`` or ``memory``), and ``x_limit`` = measured wall time / bound.
``x_limit_cpu`` = process CPU time / (threads x bound): the same ratio with
the time spent waiting for a core left out, the steadier figure when other
work shares the machine.

``--backend`` picks how the fused LSTM / superposition kernel and the RNS / VRNS
stack step run on the CPU (``auto``: the compiled loops, :mod:`marnn.kernels.fused_lstm_numba`
for formal-size models and :mod:`marnn.kernels.rns_numba`; ``numpy``: the NumPy
array loop, e.g. to compare the two, and the torch RNS step; ``torch``), via
``$MARNN_FUSED_BACKEND``.

Times are medians of wall-clock repeats after warm-up; ``cpu_ms`` is the
process CPU time (the two differ when other work shares the cores). Rows and
units run as the trainers do, with large freed blocks kept in the heap
(:func:`marnn.train.large_blocks_kept`; the torch rows too). Memory is
the growth of the child's peak resident set size over the measurement
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after minus before, MiB).

``--plan SCALE`` (see :func:`cost_plan`) times each formal (task, model) group
and each PTB cell at that scale's sizes and projects the CPU-hours of the
whole grid; ``--check`` compares the same cost model with the committed
quick-scale records.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor

from .registry import FORMAL_MODELS, FREEZE_MODES, MODELS, PTB_MODELS

TASK = "marked-copy"
PEAK_SIZE = 2048  # square fp32 matrix product that measures the machine's peak
PTB_V, PTB_B, PTB_T = 10001, 32, 35
PTB_START = PTB_T - 1  # RNS tape time / stack height after one fresh chunk (window and depth saturate)
TORCH_TWIN = {"torch-lstm": "lstm", "torch-lstm-256": "lstm-256"}  # nn.LSTM rows and the model they time


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _peak(threads: int, size: int = PEAK_SIZE, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a ``size``-cubed matrix product at ``threads`` (best of ``repeats``)."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2.0 * size ** 3 / best / 1e9


BANDWIDTH_SIZE = 1 << 24  # float32 numbers per triad array (64 MiB each: beyond the last-level cache)


def _bandwidth(threads: int, size: int = BANDWIDTH_SIZE, repeats: int = 5) -> float:
    """GB/s of a STREAM-like triad ``a = b + 3 c`` (float32, one pass: torch.add with alpha) at
    ``threads``, counted as STREAM does: 3 arrays x size x 4 bytes per pass (best of ``repeats``)."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    b, c = torch.rand(size, generator=g), torch.rand(size, generator=g)
    a = torch.empty(size)
    torch.add(b, c, alpha=3.0, out=a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best = min(best, time.perf_counter() - t)
    return 3.0 * 4 * size / best / 1e9


def _torch_twin(spec: dict):
    """A training step of torch's fused ``nn.LSTM`` doing what ``TORCH_TWIN[model]`` does."""
    import torch
    from torch import nn

    from . import models, tasks

    name, n = spec["model"], spec["n"]
    if name == "torch-lstm-256":
        V, B, H = PTB_V, PTB_B, 256
        emb, lstm, out = nn.Embedding(V, H), nn.LSTM(H, H, batch_first=True), nn.Linear(H, V)
        params = [*emb.parameters(), *lstm.parameters(), *out.parameters()]
        sgd = torch.optim.SGD(params, lr=1.0)
        x, y = torch.randint(0, V, (B, n)), torch.randint(0, V, (B, n))
        state = [None]

        def ptb_step():
            hs, st = lstm(emb(x), state[0])
            state[0] = tuple(s.detach() for s in st)
            loss = nn.functional.cross_entropy(out(hs).reshape(-1, V), y.reshape(-1))
            sgd.zero_grad()
            loss.backward()
            sgd.step()
        return ptb_step, B, models.make_config("lstm-256", vocab_size=V)
    task = tasks.get(TASK)
    V, B, H = len(task.alphabet), spec.get("batch") or 10, 20
    lstm, out = nn.LSTM(V, H, batch_first=True), nn.Linear(H, V + 1)
    opt = torch.optim.Adam([*lstm.parameters(), *out.parameters()], lr=1e-3)
    x = nn.functional.one_hot(torch.randint(0, V, (B, n)), V).float()
    y = torch.randint(0, V + 1, (B, n + 1))

    def step():
        hs, _ = lstm(x)
        hs = torch.cat([hs.new_zeros(B, 1, H), hs], 1)  # h_0 predicts the first symbol, as in marnn
        loss = nn.functional.cross_entropy(out(hs).reshape(-1, V + 1), y.reshape(-1), reduction="sum")
        opt.zero_grad()
        (loss / B).backward()
        opt.step()
    return step, B, models.make_config("lstm", task=task)


def _model_step(spec: dict):
    """The step a marnn row times: ``(step, batch, config)``."""
    import torch

    from . import models, tasks

    kind, name, n, R = spec["kind"], spec["model"], spec["n"], spec["R"]
    if kind in ("ptb", "ptb-eval"):
        V, B = PTB_V, (spec.get("batch") or PTB_B)
        model = models.build(name, vocab_size=V, replicas=R)
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    else:
        task = tasks.get(TASK)
        V, B = len(task.alphabet), (spec.get("batch") or 10)
        model = models.build(name, task=task, replicas=R)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out_size = model.config.output_size
    x = torch.randint(0, V, (R, B, n))
    y = torch.randint(0, out_size, (R, B, n + int(model.include_initial)))
    state = [None]

    def step():
        if kind == "eval":
            with torch.no_grad():
                model(x)
            return
        if kind == "ptb-eval":
            with torch.no_grad():
                state[0] = model(x, state=state[0]).state
            return
        if kind == "ptb":  # the PTB trainer's call: classifier and loss fused (marnn.kernels.loss.classifier_nll);
            nll, st = model.nll(x, y, state=state[0])  # truncated BPTT: the next chunk continues this one
            state[0] = models.detach_state(st)
            loss = nll.mean((1, 2)).sum()  # the mean per replica, summed (the PTB trainer's)
        else:
            out = model(x, state=state[0])
            loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out_size), y.reshape(-1),
                                                     reduction="sum") / B
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step, B, model.config


def step_gflop(kind: str, config, batch: int, n: int, R: int = 1) -> float:
    """The analytic GFLOP of one row's timed unit (:mod:`marnn.flops`): a training step of
    ``R`` replicas, or (``eval``) the forward pass of one string."""
    from . import flops

    if kind == "eval":
        return flops.forward_flops(config, 1, n)["total"] / 1e9
    carried = kind == "ptb" or (kind == "torch" and config.embedding)
    return R * flops.train_flops(config, batch, n, fresh=not carried, start=PTB_START if carried else 0) / 1e9


def step_gbyte(kind: str, config, batch: int, n: int, R: int = 1) -> float:
    """The least GB one row's timed unit moves (:func:`marnn.flops.step_bytes`): a training
    step of ``R`` replicas (Adam; PTB: SGD, state carried), or (``eval``) one string's forward pass."""
    from . import flops

    if kind == "eval":
        return flops.step_bytes(config, 1, n, train=False)["total"] / 1e9
    carried = kind == "ptb" or (kind == "torch" and config.embedding)
    return R * flops.step_bytes(config, batch, n, fresh=not carried, start=PTB_START if carried else 0,
                                optimizer="sgd" if carried else "adam")["total"] / 1e9


def _samples(step, reps: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``reps`` calls of ``step``."""
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return walls, cpus


def _measure(spec: dict) -> dict:
    """Run one row in this (child) process and return it."""
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec["kind"] == "peak":
        return dict(spec, peak_gflops=_peak(spec["threads"]), bandwidth_gbs=_bandwidth(spec["threads"]))
    if spec["kind"] == "unit":
        return _measure_unit(spec)
    from .train import large_blocks_kept

    kind, n, reps = spec["kind"], spec["n"], spec["repeats"]
    with large_blocks_kept():  # as the trainers run (the torch rows too)
        step, B, cfg = _torch_twin(spec) if kind == "torch" else _model_step(spec)
        step()  # warm-up (allocations, first-call costs; PTB: the carried state reaches its steady size)
        if kind == "ptb":
            step()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        walls, cpus = _samples(step, reps)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per = B if kind == "eval" else 1
    from .kernels import backend

    return dict(kind=kind, model=spec["model"], n=n, R=spec["R"], threads=spec["threads"],
                backend=backend.FUSED_BACKEND, batch=B, ms=1000 * _median(walls) / per,
                cpu_ms=1000 * _median(cpus) / per, gflop=step_gflop(kind, cfg, B, n, spec["R"]),
                gbyte=step_gbyte(kind, cfg, B, n, spec["R"]),
                peak_mib=max(rss1 - rss0, 0) / 1024, repeats=reps)


def plan(formal, ptb, quick: bool, threads=(1, 2)) -> list[dict]:
    """The rows to measure, at every thread count in ``threads`` this machine has."""
    lengths = (60,) if quick else (40, 60, 80)
    cores = os.cpu_count() or 1
    specs = []
    for t in [t for t in threads if t <= cores] or [1]:
        one = []
        for name in formal:
            slow = "rns" in name
            for n in lengths:
                one.append(dict(kind="train", model=name, n=n, R=1, repeats=3 if slow or quick else 15))
            if name == "lstm":
                one.append(dict(kind="torch", model="torch-lstm", n=60, R=1, repeats=5 if quick else 15))
        for name in ptb:
            slow = "rns" in name
            one.append(dict(kind="ptb", model=name, n=PTB_T, R=1, repeats=3 if slow or quick else 5))
            if name == "lstm-256":
                one.append(dict(kind="torch", model="torch-lstm-256", n=PTB_T, R=1, repeats=3 if quick else 5))
        for name in formal:
            slow = "rns" in name
            if slow and quick:
                continue
            one.append(dict(kind="eval", model=name, n=400, R=1, batch=1 if slow else 10, repeats=1 if slow else 5))
        for name in formal:
            if name.startswith(("lstm", "jm")):
                for R in (1, 40):
                    one.append(dict(kind="replicas", model=name, n=60, R=R, repeats=3 if quick else 7))
        specs += [dict(s, threads=t) for s in one]
    return specs


def _run_one(ctx, spec: dict) -> dict:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(spec["threads"])  # read by the child at start
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(_measure, spec).result()
        except Exception as err:  # a model that cannot be built or run: keep the row, say why
            return dict(spec, ms=None, note=f"{type(err).__name__}: {err}")


def run(specs: list[dict], threads: int = 1, backend: str | None = None, peak: bool = True) -> list[dict]:
    """Measure every spec, each in a fresh single-use child process (``backend``: the
    fused kernel's backend, see the module docstring). ``peak``: measure the GEMM peak
    and the triad bandwidth at each thread count before and after its rows (the better
    of the two is the limit) and add them, ``bound_ms``, ``binds`` and ``x_limit`` to every row."""
    ctx = mp.get_context("spawn")
    if backend is not None:
        os.environ["MARNN_FUSED_BACKEND"] = backend  # read by the child at import
    from tqdm.auto import tqdm

    specs = [dict(s, threads=s.get("threads", threads)) for s in specs]
    rows, peaks, bws = [], {}, {}
    bar = tqdm(total=len(specs), desc="bench", leave=False)  # TQDM_DISABLE=1 silences it
    for t in dict.fromkeys(s["threads"] for s in specs):
        if peak:
            first = _run_one(ctx, dict(kind="peak", threads=t))
            peaks[t], bws[t] = first.get("peak_gflops"), first.get("bandwidth_gbs")
        for s in specs:
            if s["threads"] == t:
                bar.set_postfix_str(f"{s['kind']} {s['model']} n={s['n']} R={s['R']} threads={t}")
                rows.append(_run_one(ctx, s))
                bar.update()
        if peak:
            last = _run_one(ctx, dict(kind="peak", threads=t))
            again = last.get("peak_gflops")
            peaks[t] = max(p for p in (peaks[t], again) if p) if (peaks[t] or again) else None
            bw = last.get("bandwidth_gbs")
            bws[t] = max(b for b in (bws[t], bw) if b) if (bws[t] or bw) else None
    bar.close()
    for r in rows:
        add_limit(r, peaks.get(r["threads"]), bws.get(r["threads"]))
    return rows


def add_limit(row: dict, peak_gflops: float | None, bandwidth_gbs: float | None = None) -> dict:
    """Add ``peak_gflops``, ``bandwidth_gbs``, the two bounds ``flop_ms`` (FLOPs / peak) and
    ``mem_ms`` (bytes / bandwidth), ``bound_ms`` (the larger), ``binds`` (``flop`` | ``memory``)
    and ``x_limit`` (wall / bound) to a row."""
    row["peak_gflops"], row["bandwidth_gbs"] = peak_gflops, bandwidth_gbs
    row["flop_ms"] = 1000.0 * row["gflop"] / peak_gflops if peak_gflops and row.get("gflop") is not None else None
    row["mem_ms"] = (1000.0 * row["gbyte"] / bandwidth_gbs
                     if bandwidth_gbs and row.get("gbyte") is not None else None)
    bounds = {k: v for k, v in (("flop", row["flop_ms"]), ("memory", row["mem_ms"])) if v is not None}
    row["binds"] = max(bounds, key=lambda k: bounds[k]) if bounds else None
    if bounds:
        row["bound_ms"] = bounds[row["binds"]]
        row["x_limit"] = row["ms"] / row["bound_ms"] if row.get("ms") else None
        row["x_limit_cpu"] = (row["cpu_ms"] / (row["threads"] * row["bound_ms"])
                              if row.get("cpu_ms") and row.get("threads") else None)
    else:
        row["bound_ms"] = row["x_limit"] = row["x_limit_cpu"] = None
    return row


def _fmt_ms(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms"


# Targets of the speed issue, from the registry's rows: (kind, model, n, R, threads, largest x limit)
TARGETS = [(t.kind, name, t.n, t.replicas, t.threads, t.limit) for name, row in MODELS.items() for t in row.bench]


def table(rows: list[dict]) -> str:
    lines = ["| kind | model | n | R | threads | ms (wall) | ms (cpu) | ms / replica | GFLOP | peak GFLOP/s | "
             "MB | triad GB/s | bound | binds | x limit | x limit (cpu) | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        unit = " /string" if r["kind"] == "eval" else ""
        per = _fmt_ms(r["ms"] / r["R"]) if r.get("ms") and r["R"] > 1 else "-"
        gf = "-" if r.get("gflop") is None else f"{r['gflop']:.3g}"
        pk = "-" if not r.get("peak_gflops") else f"{r['peak_gflops']:.0f}"
        mb = "-" if r.get("gbyte") is None else f"{1000 * r['gbyte']:.3g}"
        bw = "-" if not r.get("bandwidth_gbs") else f"{r['bandwidth_gbs']:.1f}"
        xl = "-" if r.get("x_limit") is None else f"{r['x_limit']:.1f}x"
        xc = "-" if r.get("x_limit_cpu") is None else f"{r['x_limit_cpu']:.1f}x"
        lines.append(f"| {r['kind']} | {r['model']} | {r['n']} | {r['R']} | {r.get('threads', '-')} | "
                     f"{_fmt_ms(r.get('ms'))}{unit} | {_fmt_ms(r.get('cpu_ms'))} | {per} | {gf} | {pk} | "
                     f"{mb} | {bw} | {_fmt_ms(r.get('bound_ms'))} | {r.get('binds') or '-'} | {xl} | {xc} | {mem} |"
                     + (f" {r['note']}" if r.get("note") else ""))
    ok = {(r["kind"], r["model"], r["n"], r["R"], r.get("threads", 1)): r for r in rows if r.get("ms")}
    ratios = []
    for (kind, name, n, R, threads), r in sorted(ok.items()):
        one = ok.get(("replicas", name, n, 1, threads))
        if kind == "replicas" and R != 1 and one:
            ratios.append(f"{name}, {threads} thread{'s' if threads > 1 else ''}: R={R} costs "
                          f"{r['ms'] / one['ms']:.1f}x R=1 wall ({r['ms']:.1f} vs {one['ms']:.1f} ms), "
                          f"{r['cpu_ms'] / one['cpu_ms']:.1f}x cpu per step; per replica "
                          f"{R * one['ms'] / r['ms']:.1f}x faster than one at a time")
    if ratios:
        lines += ["", "Replicas:"] + [f"- {s}" for s in ratios]
    twins = []
    for (kind, name, n, R, threads), r in sorted(ok.items()):
        mine = ok.get(("ptb" if name == "torch-lstm-256" else "train", TORCH_TWIN.get(name), n, R, threads))
        if kind == "torch" and mine:
            twins.append(f"{mine['model']} vs nn.LSTM, {threads} thread{'s' if threads > 1 else ''}, n={n}: "
                         f"{_fmt_ms(mine['ms'])} vs {_fmt_ms(r['ms'])} wall ({mine['ms'] / r['ms']:.2f}x; "
                         f"cpu {mine['cpu_ms'] / r['cpu_ms']:.2f}x)")
    if twins:
        lines += ["", "marnn against torch's fused nn.LSTM, same training step (ratio < 1: marnn faster):"]
        lines += [f"- {s}" for s in twins]
    goals = []
    for kind, name, n, R, threads, limit in TARGETS:
        got = ok.get((kind, name, n, R, threads))
        if got is not None and got.get("x_limit") is not None:
            goals.append(f"{kind} {name} n={n} R={R}, {threads} threads: {got['x_limit']:.1f}x its limit "
                         f"({got.get('binds') or 'flop'} bound; "
                         f"cpu {got['x_limit_cpu']:.1f}x; target <= {limit:g}x: "
                         f"{'met' if got['x_limit'] <= limit else 'missed'})")
    if goals:
        lines += ["", "Targets:"] + [f"- {s}" for s in goals]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cost model
def _time(step, reps: int, warm: int = 1) -> tuple[float, float]:
    for _ in range(warm):
        step()
    walls, cpus = _samples(step, reps)
    return _median(walls), _median(cpus)


def _trainer_step(spec: dict):
    """The trainers' own step (``marnn.train``): replica-batched Adam (formal) or SGD (PTB)
    with freeze masks (the replicas cycle through the 4 modes) and per-replica clipping,
    ``token_nll`` and ``guarded_step``, deterministic algorithms."""
    import torch

    from . import models, tasks
    from .train.evaluate import token_nll
    from .train.loop import guarded_step
    from .train.optim import BatchedAdam, BatchedSGD

    torch.use_deterministic_algorithms(True)
    ptb, name, n, R, B = spec["setting"] == "ptb", spec["model"], spec["n"], spec["R"], spec["batch"]
    if ptb:
        model = models.build(name, vocab_size=PTB_V, replicas=R)
        V = PTB_V
    else:
        task = tasks.get(TASK)
        model = models.build(name, task=task, replicas=R)
        V = len(task.alphabet)
    modes = [list(FREEZE_MODES)[r % len(FREEZE_MODES)] for r in range(R)]
    masks = model.freeze_masks(modes)
    opt: BatchedSGD | BatchedAdam
    if ptb:
        opt = BatchedSGD(model.named_parameters(), lr=[10.0] * R, clip=[0.1] * R, masks=masks)
    else:
        opt = BatchedAdam(model.named_parameters(), lr=[1e-3] * R, clip=5.0, masks=masks)
    x = torch.randint(0, V, (B, n))
    y = torch.randint(0, model.config.output_size, (B, n + int(model.include_initial)))
    state = [None]

    class _Tracker:
        def diverge(self, *args):
            pass

    def train():
        if ptb:  # the PTB trainer's call: classifier and loss fused (marnn.kernels.loss.classifier_nll)
            nll, st = model.nll(x, y, state=state[0])
            state[0] = models.detach_state(st)
        else:
            nll = token_nll(model(x).logits, y)
        loss = nll.mean((1, 2)) if ptb else nll.sum((1, 2)) / B
        guarded_step(opt, _Tracker(), list(range(R)), loss, 1, 0)

    def fwd():
        with torch.no_grad():
            if ptb:
                state[0] = model.nll(x, y, state=state[0])[1]
            else:
                token_nll(model(x).logits, y)
    return train, fwd


def _measure_unit(spec: dict) -> dict:
    """Cost-model unit (child process): seconds of one training step as the trainers take
    it and of one no-grad forward pass with the loss, same batch, ``R`` replicas (formal:
    B strings of length n; PTB: a B x n chunk with carried state)."""
    from .train import large_blocks_kept

    ptb = spec["setting"] == "ptb"
    with large_blocks_kept():  # as the trainers run
        train, fwd = _trainer_step(spec)
        reps = spec.get("repeats", 3)
        tw, tc = _time(train, reps, warm=2 if ptb else 1)
        fw, fc = _time(fwd, reps, warm=2 if ptb else 1)
    return dict(spec, train_s=tw, train_cpu_s=tc, fwd_s=fw, fwd_cpu_s=fc)


def _mid(lo: int, hi: int) -> int:
    return (lo + hi) // 2


UNIT_REPLICAS = 12  # formal units run at most this many replicas (memory); cost scales per replica


def unit_specs(scale, threads: int = 1) -> list[dict]:
    """The measurements the cost model of ``scale`` needs: every formal model at the
    shortest, middle and longest training length, every PTB model on one chunk, each
    at the size of a whole group (4 freeze modes x restarts; formal: at most
    :data:`UNIT_REPLICAS`, scaled per replica) as the grid trains it."""
    from .scales import get_scale

    sc = get_scale(scale)
    lo, hi = sc.train_lengths
    G = min(4 * sc.restarts, UNIT_REPLICAS)
    specs = [dict(kind="unit", setting="formal", model=m, n=n, R=G, batch=sc.batch_size, threads=threads,
                  repeats=2 if "rns" in m else 3)
             for m in FORMAL_MODELS for n in sorted({lo, _mid(lo, hi), hi})]
    specs += [dict(kind="unit", setting="ptb", model=m, n=sc.ptb_bptt, R=4, batch=sc.ptb_streams, threads=threads,
                   repeats=2) for m in PTB_MODELS]
    return specs


def _unit(units: list[dict], setting: str, model: str, n: int) -> dict:
    """The measured unit, with ``train`` / ``fwd`` = its process CPU seconds (what CPU-hours and
    ``group.cpu_time_s`` count, and steadier than wall time when the cores are shared)."""
    for u in units:
        if u["setting"] == setting and u["model"] == model and u["n"] == n and u.get("train_s") is not None:
            return dict(u, train=u.get("train_cpu_s") or u["train_s"], fwd=u.get("fwd_cpu_s") or u["fwd_s"])
    raise KeyError(f"no measurement of {setting} {model} at n = {n}; measure again without --from-json")


def _chunks(tokens: int, streams: int, bptt: int) -> int:
    return -(-(tokens // streams - 1) // bptt)


def _formal_group(sc, task, model: str, units: list[dict], live: list[int] | None = None) -> dict:
    """CPU-seconds of one formal (task, model) group. ``live``: replicas still training in
    each epoch (default: all ``4 x restarts`` for ``max_epochs``). Step times scale
    with the live replicas in proportion."""
    from . import flops, models
    from .tasks.data import test_plan

    sc = sc.for_model(model)  # the model's own cuts (e.g. rns-3-3 at paper-2core)
    lo, hi = sc.train_lengths
    G = 4 * sc.restarts
    ns = sorted({lo, _mid(lo, hi), hi})
    us = [_unit(units, "formal", model, n) for n in ns]
    if len(ns) == 3:  # Simpson's rule: the mean over uniform lengths (exact for cubic costs)
        w = [1 / 6, 4 / 6, 1 / 6]
    else:
        w = [1 / len(ns)] * len(ns)
    train_s = sum(wi * u["train"] / u["R"] for wi, u in zip(w, us, strict=True))  # per replica
    fwd_s = sum(wi * u["fwd"] / u["R"] for wi, u in zip(w, us, strict=True))
    steps, vsteps = sc.train_size // sc.batch_size, sc.valid_size // sc.batch_size
    live = live if live is not None else [G] * sc.max_epochs
    train = sum(steps * r * train_s for r in live)
    valid = sum(vsteps * r * fwd_s for r in live)
    # test: every string of every valid length of every bin, forward only, all G replicas;
    # the per-string time of the longest training length scaled by the FLOP count
    cfg = models.make_config(model, task=task)
    per_string = us[-1]["fwd"] / us[-1]["R"] * G / sc.batch_size  # all G replicas
    f_hi = flops.forward_flops(cfg, 1, ns[-1])["total"]
    test = 0.0
    for lengths, per in test_plan(task, sc):
        k = per if sc.test_take is None else min(per, int(sc.test_take))  # strings evaluated per length
        for n in lengths:
            test += k * per_string * flops.forward_flops(cfg, 1, n)["total"] / f_hi
    return dict(kind="formal", task=task.name, model=model, replicas=G, epochs=len(live),
                train_s=train, valid_s=valid, test_s=test, cpu_s=train + valid + test)


def _ptb_cell(sc, model: str, units: list[dict], live: list[int] | None = None) -> dict:
    """CPU-seconds of one PTB cell (one restart of ``model``: 4 freeze modes in one group)."""
    from .ptb import EXPECTED_TOKENS

    sc = sc.for_model(model)  # the model's own cuts (e.g. epoch caps at paper-2core)
    u = _unit(units, "ptb", model, sc.ptb_bptt)
    R = u["R"]
    B, T = sc.ptb_streams, sc.ptb_bptt

    def toks(split, limit):
        return EXPECTED_TOKENS[split] if limit is None else min(limit, EXPECTED_TOKENS[split])

    n_train = _chunks(toks("train", sc.ptb_train_tokens), B, T)
    n_valid = _chunks(toks("valid", sc.ptb_eval_tokens), B, T)
    n_test = _chunks(toks("test", sc.ptb_eval_tokens), B, T)
    live = live if live is not None else [R] * sc.ptb_max_epochs
    train = sum(n_train * r / R * u["train"] for r in live)
    valid = sum(n_valid * r / R * u["fwd"] for r in live)
    test = n_test * u["fwd"]
    return dict(kind="ptb", model=model, replicas=R, epochs=len(live), train_s=train, valid_s=valid,
                test_s=test, cpu_s=train + valid + test)


def project(scale, units: list[dict]) -> dict:
    """Projected CPU-seconds of every formal (task, model) group and every PTB cell of
    ``scale``'s grid (``4 x restarts`` formal replicas per group trained for
    ``max_epochs``, ``ptb_restarts`` cells per PTB model, each for ``ptb_max_epochs``:
    an upper bound, early stopping only shortens it), from measured ``units``."""
    from . import tasks
    from .scales import get_scale

    sc = get_scale(scale)
    groups = [_formal_group(sc, tasks.get(t), m, units) for t in tasks.names() for m in FORMAL_MODELS]
    cells = [dict(_ptb_cell(sc, m, units), cells=sc.ptb_restarts) for m in PTB_MODELS]
    formal_s = sum(g["cpu_s"] for g in groups)
    ptb_s = sum(c["cpu_s"] * c["cells"] for c in cells)
    return dict(scale=sc.name, groups=groups, ptb=cells, formal_cpu_s=formal_s, ptb_cpu_s=ptb_s,
                total_cpu_s=formal_s + ptb_s, cores=os.cpu_count() or 1)


def check_records(scale, units: list[dict], root=None) -> list[dict]:
    """Predicted / actual CPU time of every committed group of ``scale`` (``group.cpu_time_s``),
    the prediction using each group's real epochs and live replicas (from the curves). Records are read
    like everywhere else (:func:`marnn.store.iter_records`: an invalid one is refused and moved aside)."""
    from . import tasks
    from .config import RunConfig
    from .scales import get_scale
    from .store import iter_records

    sc = get_scale(scale)
    groups: dict[tuple, list[dict]] = {}
    for _, rec in iter_records(root, scale=sc.name):
        run = RunConfig.from_dict(rec["config"])
        key = (run.kind, run.task, run.model, run.embedding_group, rec["group"]["cpu_time_s"])
        groups.setdefault(key, []).append(rec)
    out = []
    for (kind, task, model, emb, cpu), recs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        epochs = max(len(r["curve"]) for r in recs)
        live = [sum(len(r["curve"]) > e for r in recs) for e in range(epochs)]
        try:
            if kind == "formal":
                pred = _formal_group(sc, tasks.get(task), model, units, live)
            else:
                pred = _ptb_cell(sc, model, units, live)
        except KeyError:
            continue
        out.append(dict(kind=kind, task=task, model=model, embedding_group=emb, replicas=len(recs),
                        epochs=epochs, actual_cpu_s=cpu, predicted_cpu_s=pred["cpu_s"],
                        ratio=pred["cpu_s"] / cpu if cpu else None))
    return out


def _h(s: float) -> str:
    return f"{s / 3600:.2f}"


def plan_text(proj: dict, checks: list[dict] | None = None) -> str:
    cores = proj["cores"]
    lines = [f"Projected cost of the {proj['scale']} grid (upper bound: every replica trains the maximum "
             f"number of epochs; CPU-hours = hours on one core; wall hours on this machine with one "
             f"single-threaded worker per core, {cores} cores)", "",
             "| grid | task | model | replicas | epochs | CPU-h | of which train | wall h on this machine |",
             "|---|---|---|---|---|---|---|---|"]
    by_model: dict[str, float] = {}
    for g in proj["groups"]:
        by_model[g["model"]] = by_model.get(g["model"], 0.0) + g["cpu_s"]
        lines.append(f"| formal | {g['task']} | {g['model']} | {g['replicas']} | {g['epochs']} | {_h(g['cpu_s'])} | "
                     f"{_h(g['train_s'])} | {_h(g['cpu_s'] / cores)} |")
    for c in proj["ptb"]:
        lines.append(f"| ptb (x{c['cells']} cells) | - | {c['model']} | {c['replicas']} | {c['epochs']} | "
                     f"{_h(c['cpu_s'] * c['cells'])} | {_h(c['train_s'] * c['cells'])} | "
                     f"{_h(c['cpu_s'] * c['cells'] / cores)} |")
    lines += ["", "Formal grid by model (all tasks): " + ", ".join(f"{m} {_h(s)} CPU-h" for m, s in by_model.items()),
              f"Total: formal {_h(proj['formal_cpu_s'])} + PTB {_h(proj['ptb_cpu_s'])} = "
              f"{_h(proj['total_cpu_s'])} CPU-h, about {_h(proj['total_cpu_s'] / cores)} h on this "
              f"machine's {cores} cores"]
    if checks:
        lines += ["", "Against the committed records of this scale (prediction with each group's real epochs and "
                  "live replicas; actual = group.cpu_time_s):", "",
                  "| grid | task | model | embedding | replicas | epochs | predicted CPU-s | actual CPU-s | "
                  "predicted / actual |", "|---|---|---|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['kind']} | {c['task'] or '-'} | {c['model']} | {c['embedding_group'] or '-'} | "
                         f"{c['replicas']} | {c['epochs']} | {c['predicted_cpu_s']:.0f} | {c['actual_cpu_s']:.0f} | "
                         f"{c['ratio']:.2f} |")
        tot_p = sum(c["predicted_cpu_s"] for c in checks)
        tot_a = sum(c["actual_cpu_s"] for c in checks)
        lines.append(f"\nAll {len(checks)} groups: predicted {tot_p:.0f} CPU-s, actual {tot_a:.0f} CPU-s, "
                     f"ratio {tot_p / tot_a:.2f}")
    return "\n".join(lines)


def measure_units(scale, threads: int = 1, backend: str | None = None) -> list[dict]:
    """Time the cost model's units for ``scale`` (each in a fresh child process)."""
    return run(unit_specs(scale, threads), backend=backend, peak=False)


def main(argv=None) -> int:
    from . import models
    from .kernels.backend import BACKENDS
    from .registry import UnknownNameError
    from .scales import SCALES, get_scale

    p = argparse.ArgumentParser(prog="marnn bench", description="Time every model (see module docstring).")
    p.add_argument("--models", nargs="*", help="model names (default: every formal and PTB model of the paper)")
    p.add_argument("--quick", action="store_true", help="n = 60 only, few repeats, no RNS evaluation at n = 400")
    p.add_argument("--json", action="store_true", help="print the rows (or the plan) as JSON instead of a table")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch / BLAS thread counts, one set of rows each (default: 1 2; --plan: 1)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="fused LSTM / superposition kernel on the CPU (default: $MARNN_FUSED_BACKEND or auto)")
    p.add_argument("--plan", metavar="SCALE", default=None,
                   help=f"project the CPU-hours of SCALE's grid from measured step times (scales: {', '.join(SCALES)})")
    p.add_argument("--from-json", metavar="FILE", default=None,
                   help="with --plan: reuse the step times of an earlier `--plan SCALE --json` instead of measuring")
    p.add_argument("--check", action="store_true",
                   help="with --plan: compare the cost model with the committed records of that scale")
    args = p.parse_args(argv)
    if args.threads is not None and any(t < 1 for t in args.threads):
        p.error(f"--threads must be positive integers, got {args.threads}")
    if args.plan is not None:
        try:
            scale = get_scale(args.plan)
        except UnknownNameError as err:
            p.error(str(err))
        units = None
        if args.from_json:
            try:
                with open(args.from_json) as f:
                    units = json.load(f)["units"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                p.error(f"--from-json {args.from_json}: not the JSON of `marnn bench --plan SCALE --json` ({err})")
        if units is None:
            units = measure_units(scale, (args.threads or [1])[0], args.backend)
        proj = project(scale, units)
        checks = check_records(scale, units) if args.check else None
        if args.json:
            print(json.dumps(dict(proj, units=units, checks=checks), indent=1))
        else:
            print(plan_text(proj, checks))
        return 0
    if args.from_json or args.check:
        p.error("--from-json and --check go with --plan SCALE")
    formal = list(FORMAL_MODELS) + ["vrns-2-3-3"]
    ptb = list(PTB_MODELS)
    if args.models:
        for name in args.models:
            try:
                models.parse_name(name)
            except ValueError as err:
                p.error(str(err))
        formal = [m for m in args.models if m not in PTB_MODELS]
        ptb = [m for m in args.models if m in PTB_MODELS]
    rows = run(plan(formal, ptb, args.quick, tuple(args.threads or (1, 2))), backend=args.backend)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        backends = ", ".join(sorted({r["backend"] for r in rows if "backend" in r})) or "-"
        peaks = {r["threads"]: r["peak_gflops"] for r in rows if r.get("peak_gflops")}
        bws = {r["threads"]: r["bandwidth_gbs"] for r in rows if r.get("bandwidth_gbs")}
        print(f"fused kernel backend: {backends}; memory: ru_maxrss growth per child process; fp32 GEMM peak "
              f"({PEAK_SIZE}^3): " + ", ".join(f"{v:.0f} GFLOP/s at {t} thread{'s' if t > 1 else ''}"
                                               for t, v in peaks.items())
              + "; triad bandwidth: " + ", ".join(f"{v:.1f} GB/s at {t} thread{'s' if t > 1 else ''}"
                                                  for t, v in bws.items()))
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
