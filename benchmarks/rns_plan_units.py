"""The cost model's rns-3-3 units alone, for ``marnn bench --plan --from-json``.

``marnn bench --plan paper-2core`` measures every model; on a machine where the
trainers run, pause them (``kill -STOP``) only for this script's ~30 s and
measure the rns-3-3 units (a training step and a forward pass of a group of 12
replicas at n = 40 / 60 / 80, one thread) on the idle cores, then put them into
an earlier plan's JSON and project it again:

    .venv/bin/marnn bench --plan paper-2core --json > plan.json      # beside the trainers
    kill -STOP <trainer pids>
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/rns_plan_units.py units.json
    kill -CONT <trainer pids>
    .venv/bin/python benchmarks/rns_plan_units.py units.json --into plan.json   # rewrites plan.json
    .venv/bin/marnn bench --plan paper-2core --from-json plan.json
"""
from __future__ import annotations

import argparse
import json
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("units", help="JSON file the measured units go to (or come from, with --into)")
    parser.add_argument("--into", metavar="PLAN", help="replace the rns-3-3 units of this plan JSON with them")
    args = parser.parse_args()
    if args.into:
        units = {u["n"]: u for u in json.load(open(args.units))}
        plan = json.load(open(args.into))
        for u in plan["units"]:
            if u["model"] == "rns-3-3" and u["setting"] == "formal" and u["n"] in units:
                u.update({k: units[u["n"]][k] for k in ("train_s", "train_cpu_s", "fwd_s", "fwd_cpu_s")})
        json.dump(plan, open(args.into, "w"), indent=1)
        return
    import torch

    from marnn.bench import _measure_unit

    torch.set_num_threads(1)
    out = []
    for n in (40, 40, 60, 80):  # the first n = 40 warms the compiled kernels up and is dropped
        spec = dict(kind="unit", setting="formal", model="rns-3-3", n=n, R=12, batch=10, threads=1, repeats=3)
        out.append(_measure_unit(spec))
        print(f"n = {n}: train {out[-1]['train_cpu_s']:.3f} s, forward {out[-1]['fwd_cpu_s']:.3f} s CPU",
              file=sys.stderr)
    json.dump(out[1:], open(args.units, "w"), indent=1)


if __name__ == "__main__":
    main()
