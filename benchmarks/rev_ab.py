"""The trainers' step at git revision REV against the working tree, alternating, one process each.

Checks REV out into a temporary worktree and starts one child process per tree (each its
own Numba cache, ``OPENBLAS_NUM_THREADS=1``, one torch thread). Each child builds
``marnn.bench._trainer_step`` (the trainers' own step: replica-batched model, freeze
masks, Adam or SGD, deterministic algorithms) for the same spec and seed, warms up, then
the two take turns: each turn, ``--steps`` training steps (or no-grad passes with
``--fwd``) in one child, then in the other. Prints the median CPU ms per step of each
tree, the ratio of the medians, and the ratio within each turn (new over old, the two
measured back to back under the same load): its median and middle half.

    .venv/bin/python benchmarks/rev_ab.py rns-3-3 [--rev main] [--n 60] [--R 1] [--batch 10] \
        [--turns 9] [--steps 3] [--fwd] [--ptb]

Meant for A/B on a shared or loaded machine: both trees see the same load in turn, so
their ratio is steadier than either time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
from marnn import bench
spec = json.loads(sys.argv[1])
train, fwd = bench._trainer_step(spec)
f = fwd if spec["fwd"] else train
f(); f()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    k = int(line)
    t0 = time.process_time()
    for _ in range(k):
        f()
    print(json.dumps({"cpu_ms": 1000 * (time.process_time() - t0) / k}), flush=True)
"""


def _child(tree: Path, spec: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               TQDM_DISABLE="1")
    p = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=tree, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        raise SystemExit(f"rev_ab: the child in {tree} did not start (see its error above)")
    return p


def _turn(p: subprocess.Popen, steps: int) -> float:
    p.stdin.write(f"{steps}\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())["cpu_ms"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rev", default="main", help="git revision to compare against (default: main)")
    ap.add_argument("--n", type=int, default=60, help="string length (formal) or chunk length (PTB)")
    ap.add_argument("--R", type=int, default=1, help="replicas")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--turns", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3, help="steps per turn")
    ap.add_argument("--fwd", action="store_true", help="time the no-grad pass, not the training step")
    ap.add_argument("--ptb", action="store_true", help="the PTB setting (a chunk with carried state)")
    a = ap.parse_args(argv)
    spec = dict(setting="ptb" if a.ptb else "formal", model=a.model, n=a.n, R=a.R, batch=a.batch, fwd=a.fwd)
    with tempfile.TemporaryDirectory(prefix="rev_ab-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), a.rev], check=True)
        try:
            ps = {"old": _child(old, spec), "new": _child(ROOT, spec)}
            times: dict[str, list[float]] = {"old": [], "new": []}
            for t in range(a.turns):
                for k in (("old", "new") if t % 2 == 0 else ("new", "old")):
                    times[k].append(_turn(ps[k], a.steps))
            for p in ps.values():
                p.stdin.close()
                p.wait()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
    ratios = sorted(n / o for o, n in zip(times["old"], times["new"], strict=True))
    what = "no-grad pass" if a.fwd else "training step"
    print(f"{a.model} {spec['setting']} n={a.n} R={a.R} B={a.batch}: CPU ms per {what}, median of {a.turns} turns")
    print(f"  {a.rev:>10}: {mo:8.2f}   ({', '.join(f'{x:.1f}' for x in times['old'])})")
    print(f"  {'worktree':>10}: {mn:8.2f}   ({', '.join(f'{x:.1f}' for x in times['new'])})")
    print(f"  new / old: {mn / mo:.3f} (medians); paired by turn: median {statistics.median(ratios):.3f}, "
          f"middle half {ratios[len(ratios) // 4]:.3f}-{ratios[(3 * len(ratios)) // 4]:.3f}")


if __name__ == "__main__":
    main()
