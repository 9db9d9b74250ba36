"""Where a trainer's step spends its time, by compiled kernel (Linux ``perf``; run on demand).

    .venv/bin/python benchmarks/kernel_profile.py rns-3-3 [--n 60] [--R 1] [--batch 10]
        [--seconds 20] [--top 25] [--keep DIR]
    .venv/bin/python benchmarks/kernel_profile.py rns-4-5 --ptb     # one 32 x 35 PTB chunk

``perf`` attributes samples in Numba's compiled code only to bare addresses: the
kernels come from Numba's on-disk cache, which keeps no symbol table, and
``NUMBA_ENABLE_PROFILING`` names only what is compiled in the same process. So this
script compiles every kernel afresh (a temporary ``NUMBA_CACHE_DIR``: the first step
takes a minute or two), writes ``/tmp/perf-<pid>.map`` -- the address range of every
compiled function of :mod:`marnn.kernels`, including the helpers Numba did not inline
-- and then times the trainer's own step (:func:`marnn.bench._trainer_step`: a
replica-batched Adam / SGD step of ``R`` replicas on ``batch`` strings of length ``n``,
or one PTB chunk, with large freed blocks kept in the heap as the trainers keep them)
under ``perf record`` for ``--seconds``. It prints the CPU time of a step and the
share of the samples per symbol (``perf report --sort symbol``).

Run it with ``OPENBLAS_NUM_THREADS=1`` on an idle machine where possible; beside the
trainers the shares hold but the times do not. ``--keep DIR`` leaves ``perf.data``,
the map and each kernel's machine code (``<name>.bin``, ``objdump -D -b binary -m
i386:x86-64 --adjust-vma=<start>``) in DIR for a closer look.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def _dispatchers():
    """(qualified name, dispatcher) of every Numba function in marnn.kernels."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import marnn.kernels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"marnn.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
                yield f"{info.name}.{name}", obj


def write_perf_map(path: str) -> list[tuple[int, int, str]]:
    """Write the perf map of every compiled overload (and the functions of its LLVM module
    that Numba did not inline); returns (start, size, name) sorted by address."""
    entries: dict[int, str] = {}
    for qual0, disp in _dispatchers():
        overloads = list(disp.overloads.values())
        for k, cres in enumerate(overloads):
            qual = qual0 if len(overloads) == 1 else f"{qual0}#{k}"  # one entry per signature
            lib = cres.library
            main = cres.fndesc.llvm_func_name
            for fn in lib._final_module.functions:
                if fn.is_declaration:
                    continue
                addr = lib.get_pointer_to_function(fn.name)
                if addr and addr not in entries:
                    entries[addr] = qual if fn.name == main else f"{qual} [{fn.name.split('.')[-1][:40]}]"
    starts = sorted(entries)
    rows = []
    for i, a in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else a + 4096
        rows.append((a, min(nxt - a, 1 << 20), entries[a]))
    with open(path, "w") as fh:
        fh.writelines(f"{a:x} {s:x} {n}\n" for a, s, n in rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model name (marnn.registry), e.g. rns-3-3, jm-10, lstm-256")
    parser.add_argument("--ptb", action="store_true", help="a PTB chunk (batch x n tokens) instead of formal strings")
    parser.add_argument("--n", type=int, help="string length (formal; default 60) or chunk length (PTB; default 35)")
    parser.add_argument("--R", type=int, default=1, help="replicas in the group (default 1)")
    parser.add_argument("--batch", type=int,
                        help="strings (formal; default 10) or streams (PTB; default 32) per step")
    parser.add_argument("--warm", type=int, help="steps before perf starts (default 1; PTB 4: a windowed "
                        "stack's tape and the heap grow over the first chunks, page-faulting fresh memory)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long perf records (default 20)")
    parser.add_argument("--top", type=int, default=25, help="symbols to print (default 25)")
    parser.add_argument("--keep", metavar="DIR", help="keep perf.data, the map and the kernels' machine code here")
    args = parser.parse_args()
    args.n = args.n if args.n is not None else 35 if args.ptb else 60  # the bench's rows
    args.batch = args.batch if args.batch is not None else 32 if args.ptb else 10
    args.warm = args.warm if args.warm is not None else 4 if args.ptb else 1
    if shutil.which("perf") is None:
        sys.exit("kernel_profile.py: needs Linux perf on the PATH (e.g. apt-get install linux-perf); none found")
    from marnn import registry

    kind = "ptb" if args.ptb else "formal"
    known = [name for name, m in registry.MODELS.items() if m.kind == kind]
    if args.model not in known:
        other = registry.MODELS.get(args.model)
        hint = "" if other is None else f" ({args.model} is a {other.kind} model: " + (
            "add --ptb)" if other.kind == "ptb" else "leave out --ptb)")
        sys.exit(f"kernel_profile.py: unknown {kind} model {args.model!r}{hint}; one of {', '.join(known)}")
    for name in ("n", "R", "batch", "top", "warm"):
        if getattr(args, name) < 1:
            sys.exit(f"kernel_profile.py: --{name} must be a positive integer, got {getattr(args, name)}")
    if not args.seconds > 0:
        sys.exit(f"kernel_profile.py: --seconds must be a positive number, got {args.seconds}")

    cache = tempfile.mkdtemp(prefix="marnn-numba-")
    os.environ["NUMBA_CACHE_DIR"] = cache  # before Numba loads: every kernel compiled here, symbols kept
    import torch

    from marnn import bench
    from marnn.train import large_blocks_kept

    torch.set_num_threads(1)
    spec = dict(setting="ptb" if args.ptb else "formal", model=args.model, n=args.n, R=args.R, batch=args.batch)
    blocks = large_blocks_kept()  # freed blocks stay in the heap, as in the trainers
    blocks.__enter__()
    train, _ = bench._trainer_step(spec)
    t0 = time.process_time()
    for _ in range(args.warm):
        train()
    print(f"{args.warm} warm-up step(s), the first compiling every kernel: {time.process_time() - t0:.1f} s CPU",
          flush=True)
    rows = write_perf_map(f"/tmp/perf-{os.getpid()}.map")
    out = args.keep or tempfile.mkdtemp(prefix="marnn-perf-")
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "perf.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-p", str(os.getpid()), "-o", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    steps, c0, w0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - w0 < args.seconds:
        train()
        steps += 1
    cpu = time.process_time() - c0
    perf.send_signal(signal.SIGINT)
    perf.wait()
    blocks.__exit__(None, None, None)
    print(f"{args.model} {'PTB chunk' if args.ptb else 'formal'} R={args.R} batch={args.batch} n={args.n}: "
          f"{steps} steps, {1000 * cpu / max(steps, 1):.1f} ms CPU per step")
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol", "--stdio"],
                            capture_output=True, text=True).stdout
    lines = [" ".join(ln.split()) for ln in report.splitlines() if ln.strip() and not ln.startswith("#")]
    for ln in lines[:args.top]:
        ln = ln.replace(" - -", "")
        print("  " + (ln if len(ln) <= 110 else ln[:107] + "..."))  # C++ template names run to pages
    if args.keep:
        import ctypes

        shutil.copy(f"/tmp/perf-{os.getpid()}.map", out)
        for a, s, name in rows:
            if " [" not in name:
                with open(os.path.join(out, f"{name}-{a:x}.bin"), "wb") as fh:
                    fh.write(ctypes.string_at(a, s))
        print(f"kept in {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    os.remove(f"/tmp/perf-{os.getpid()}.map")


if __name__ == "__main__":
    main()
