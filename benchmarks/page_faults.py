"""Page faults and system time of the trainers' step, with and without the heap's large freed
blocks kept (``marnn.train.large_blocks_kept``), in a thread as in a grid worker.

Each setting runs in its own process (glibc's thresholds are per process), after 3 warm-up
steps, and prints CPU ms per step (min and median of ``steps``), minor page faults and system
ms per step. Run it with the environment of the grid's workers, where dask sets a trim
threshold of 64 KiB (glibc hands every freed block above it back to the kernel):

    MALLOC_TRIM_THRESHOLD_=65536 MALLOC_ARENA_MAX=1 OPENBLAS_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/page_faults.py formal jm-10 20 60
    ... benchmarks/page_faults.py ptb rns-4-5 2 35 4

Arguments: setting (formal | ptb), model, replicas R, length n (PTB: 35), steps (default 10).
"""
import os
import subprocess
import sys


def measure(setting: str, model: str, R: int, n: int, steps: int, kept: bool) -> str:
    import contextlib
    import resource
    import statistics
    import threading
    import time

    import torch

    from marnn import bench
    from marnn.train import large_blocks_kept

    torch.set_num_threads(1)
    out: list[str] = []

    def work():
        with large_blocks_kept() if kept else contextlib.nullcontext():
            spec = dict(kind="unit", setting=setting, model=model, n=n, R=R, batch=32 if setting == "ptb" else 10,
                        threads=1)
            train, _ = bench._trainer_step(spec)
            for _ in range(3):
                train()
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            ts = []
            for _ in range(steps):
                t = time.thread_time()
                train()
                ts.append(time.thread_time() - t)
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
        faults, system = (r1.ru_minflt - r0.ru_minflt) / steps, (r1.ru_stime - r0.ru_stime) / steps
        out.append(f"{model} R={R} n={n} {'kept   ' if kept else 'default'}: CPU ms per step min "
                   f"{min(ts) * 1e3:.1f} median {statistics.median(ts) * 1e3:.1f}; page faults "
                   f"{faults:.0f}, system ms {system * 1e3:.1f}")
    t = threading.Thread(target=work)  # a worker thread, as dask runs a task
    t.start()
    t.join()
    return out[0]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        setting, model, R, n, steps, kept = sys.argv[2:8]
        print(measure(setting, model, int(R), int(n), int(steps), kept == "1"), flush=True)
        sys.exit(0)
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    setting, model, R, n = sys.argv[1:5]
    steps = sys.argv[5] if len(sys.argv) > 5 else "10"
    for kept in ("0", "1", "0", "1"):
        subprocess.run([sys.executable, __file__, "--one", setting, model, R, n, steps, kept], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
