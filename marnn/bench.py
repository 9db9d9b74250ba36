"""Speed and memory of every model, next to the published code's numbers.

``python -m marnn.bench [--json] [--models NAME ...] [--quick] [--threads N] [--backend B]``

Rows (each measured in a fresh child process, so peak memory is per row):

* ``train``: one training step (forward + backward + ``torch.optim.Adam``) on a
  batch of 10 random strings of length n in {40, 60, 80} (formal models,
  marked-copy alphabet) -- the protocol of docs: book/reference/models.md, "Reference speed";
* ``ptb``: one step on a 32 x 35 chunk, vocabulary 10,001 (PTB models);
* ``eval``: evaluation time per string at n = 400, no gradient;
* ``replicas``: R = 40 replicas (10 restarts x 4 freeze modes) vs R = 1 at n = 60,
  at 1 thread and, on a machine with 2 or more cores, at 2 threads (the fused
  kernel then runs two blocks of replicas in parallel threads).

``--backend`` picks how the fused LSTM / superposition kernel runs on the CPU
(``auto``: the compiled loop for formal-size models; ``numpy``: the NumPy array
loop, e.g. to compare the two; ``torch``), via ``$MARNN_FUSED_BACKEND``.

Times are medians of wall-clock repeats after warm-up; ``cpu_ms`` is the
process CPU time (the two differ when other work shares the cores). Memory is
the growth of the child's peak resident set size over the measurement
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after minus before, MiB).
``ref_ms`` is the published code on a 2-core CPU (docs: book/reference/models.md); "~" rows compare
a superposition variant with the published m = 10 superposition number.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp

# docs: book/reference/models.md, "Reference speed": ms per Adam step, B = 10, H = 20.
REFERENCE_MS = {
    ("lstm", 40): 3.3, ("lstm", 60): 3.4, ("lstm", 80): 3.5,
    ("jm-10", 40): 40.0, ("jm-10", 60): 57.0, ("jm-10", 80): 76.0,
    ("rns-3-3", 40): 2100.0, ("rns-3-3", 60): 7400.0, ("rns-3-3", 80): 14000.0,
    ("vrns-2-3-3", 40): 3400.0, ("vrns-2-3-3", 60): 9300.0, ("vrns-2-3-3", 80): 21000.0,
    ("lstm-256", 35): 270.0, ("jm-hidden-247", 35): 450.0, ("jm-learned-22", 35): 450.0,
    ("rns-4-5", 35): 78000.0, ("vrns-3-3-5", 35): 101000.0,
}
APPROX = {"jm-3.3.3": "jm-10", "jm-hidden": "jm-10"}  # compared with the m = 10 superposition
TASK = "marked-copy"


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _measure(spec: dict) -> dict:
    """Run one row in this (child) process and return it."""
    import resource

    import torch

    from . import models, tasks

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    kind, name, n, R, reps = spec["kind"], spec["model"], spec["n"], spec["R"], spec["repeats"]
    if kind == "ptb":
        V, B = 10001, 32
        model = models.build(name, vocab_size=V, replicas=R)
    else:
        task = tasks.get(TASK)
        V, B = len(task.alphabet), (spec.get("batch") or 10)
        model = models.build(name, task=task, replicas=R)
    out_size = model.config.output_size
    x = torch.randint(0, V, (R, B, n))
    y = torch.randint(0, out_size, (R, B, n + int(model.include_initial)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        if kind == "eval":
            with torch.no_grad():
                model(x)
            return
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out_size), y.reshape(-1), reduction="sum")
        opt.zero_grad()
        (loss / B).backward()
        opt.step()

    step()  # warm-up (allocations, first-call costs)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per = B if kind == "eval" else 1
    ref = REFERENCE_MS.get((APPROX.get(name, name), n)) if kind in ("train", "ptb") else None
    from .models import superposition

    return dict(kind=kind, model=name, n=n, R=R, threads=spec["threads"], backend=superposition.FUSED_BACKEND,
                batch=B, ms=1000 * _median(walls) / per,
                cpu_ms=1000 * _median(cpus) / per, ref_ms=ref, approx_ref=name in APPROX and ref is not None,
                peak_mib=max(rss1 - rss0, 0) / 1024, repeats=reps)


def plan(formal, ptb, quick: bool) -> list[dict]:
    lengths = (60,) if quick else (40, 60, 80)
    specs = []
    for name in formal:
        slow = "rns" in name
        for n in lengths:
            specs.append(dict(kind="train", model=name, n=n, R=1, repeats=2 if slow or quick else 15))
    for name in ptb:
        slow = "rns" in name
        specs.append(dict(kind="ptb", model=name, n=35, R=1, repeats=1 if slow or quick else 5))
    for name in formal:
        slow = "rns" in name
        if slow and quick:
            continue
        specs.append(dict(kind="eval", model=name, n=400, R=1, batch=2 if slow else 10, repeats=1 if slow else 5))
    thread_counts = (1, 2) if (os.cpu_count() or 1) >= 2 else (1,)
    for name in formal:
        if name.startswith(("lstm", "jm")):
            for threads in thread_counts:
                for R in (1, 40):
                    specs.append(dict(kind="replicas", model=name, n=60, R=R, threads=threads,
                                      repeats=3 if quick else 7))
    return specs


def run(specs: list[dict], threads: int = 1, backend: str | None = None) -> list[dict]:
    """Measure every spec, each in a fresh single-use child process (``backend``: the
    fused kernel's backend, see the module docstring)."""
    rows = []
    ctx = mp.get_context("spawn")
    if backend is not None:
        os.environ["MARNN_FUSED_BACKEND"] = backend  # read by the child at import
    for spec in specs:
        spec = dict(spec)
        spec.setdefault("threads", threads)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(spec["threads"])  # read by the child at start
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            try:
                rows.append(pool.submit(_measure, spec).result())
            except Exception as err:  # a model that cannot be built or run: keep the row, say why
                rows.append(dict(spec, ms=None, note=f"{type(err).__name__}: {err}"))
    return rows


def _fmt_ms(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms"


def table(rows: list[dict]) -> str:
    lines = ["| kind | model | n | R | threads | ms (wall) | ms (cpu) | published | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = _fmt_ms(r.get("ref_ms"))
        if r.get("approx_ref"):
            ref = "~" + ref + " (m=10)"
        mem = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        unit = " /string" if r["kind"] == "eval" else ""
        lines.append(f"| {r['kind']} | {r['model']} | {r['n']} | {r['R']} | {r.get('threads', '-')} | "
                     f"{_fmt_ms(r.get('ms'))}{unit} | "
                     f"{_fmt_ms(r.get('cpu_ms'))} | {ref} | {mem} |" + (f" {r['note']}" if r.get("note") else ""))
    reps = {(r["model"], r.get("threads", 1), r["R"]): r for r in rows if r["kind"] == "replicas" and r.get("ms")}
    ratios = []
    for (name, threads, R), r in sorted(reps.items()):
        if R != 1 and (name, threads, 1) in reps:
            one = reps[(name, threads, 1)]
            ratios.append(f"{name}, {threads} thread{'s' if threads > 1 else ''}: R={R} costs "
                          f"{r['ms'] / one['ms']:.1f}x R=1 wall ({r['ms']:.1f} vs {one['ms']:.1f} ms), "
                          f"{r['cpu_ms'] / one['cpu_ms']:.1f}x cpu per step; per replica "
                          f"{R * one['ms'] / r['ms']:.1f}x faster than one at a time")
    if ratios:
        lines += ["", "Replicas (target <= 5x):"] + [f"- {s}" for s in ratios]
    return "\n".join(lines)


def main(argv=None) -> int:
    from . import models
    from .models.superposition import BACKENDS

    p = argparse.ArgumentParser(prog="marnn bench", description="Time every model (see module docstring).")
    p.add_argument("--models", nargs="*", help="model names (default: every formal and PTB model of the paper)")
    p.add_argument("--quick", action="store_true", help="n = 60 only, few repeats, no RNS evaluation at n = 400")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per measurement (default 1)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="fused LSTM / superposition kernel on the CPU (default: $MARNN_FUSED_BACKEND or auto)")
    args = p.parse_args(argv)
    formal = list(models.FORMAL_MODELS) + ["vrns-2-3-3"]
    ptb = list(models.PTB_MODELS)
    if args.models:
        for name in args.models:
            try:
                models.parse_name(name)
            except ValueError as err:
                p.error(str(err))
        formal = [m for m in args.models if m not in models.PTB_MODELS]
        ptb = [m for m in args.models if m in models.PTB_MODELS]
    rows = run(plan(formal, ptb, args.quick), threads=args.threads, backend=args.backend)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        backends = ", ".join(sorted({r["backend"] for r in rows if "backend" in r})) or "-"
        print(f"torch threads: {args.threads}; fused kernel backend: {backends}; "
              "memory: ru_maxrss growth per child process")
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
