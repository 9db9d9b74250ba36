"""A PTB group's CPU time with NumPy's BLAS at 2 threads and at 1, and whether the numbers agree.

The grid's workers pin torch to one thread each; until 2026-12-07 they left NumPy's
BLAS (OpenBLAS, which the fused LSTM / superposition loop multiplies with) at one
thread per core, so on a machine whose other core runs a second trainer its
helper thread competed for that core. This trains the same small PTB group
(modes none and m of one model, the first chunks of the stream, one epoch) three
times in one process: BLAS at 2 threads twice (is it deterministic?), then at 1
(what ``marnn.grid.run_group`` now sets), and prints each run's process CPU time
and whether the records' losses are equal bit for bit.

    .venv/bin/python benchmarks/blas_threads.py jm-hidden-247 --chunks 6

Run it beside a busy core (a trainer) to see the cost of the second thread; on an
idle machine the two settings cost about the same.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a PTB model, e.g. jm-hidden-247, lstm-256, rns-4-5")
    parser.add_argument("--chunks", type=int, default=6, help="training chunks of 32 x 35 tokens (default 6)")
    args = parser.parse_args()
    if args.chunks < 1:
        parser.error(f"argument --chunks: must be at least 1, got {args.chunks}")

    import torch
    from threadpoolctl import threadpool_limits

    from marnn.models import parse_name
    from marnn.scales import get_scale
    from marnn.train import ptb_config
    from marnn.train.ptb import train_ptb

    try:
        parse_name(args.model)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(1)
    sc = get_scale("paper-2core").with_(ptb_train_tokens=32 * 35 * args.chunks + 1,
                                        ptb_eval_tokens=32 * 35 + 1, ptb_max_epochs=1)
    cfgs = [ptb_config(args.model, mode, 4, sc) for mode in ("none", "m")]
    losses = []
    for blas in (2, 2, 1):
        with threadpool_limits(blas, user_api="blas"):
            t = time.process_time()
            recs = train_ptb(cfgs)
            cpu = time.process_time() - t
        losses.append([(r["curve"][0]["train_perplexity"], r["valid"]["cross_entropy"], r["test"]["cross_entropy"])
                       for r in recs])
        print(f"{args.model}: BLAS at {blas} thread(s): {cpu:.2f} s CPU; train perplexity "
              + ", ".join(f"{r['curve'][0]['train_perplexity']:.6f}" for r in recs))
    print(f"2 threads twice, equal bit for bit: {losses[0] == losses[1]}; "
          f"1 thread against 2, equal bit for bit: {losses[2] == losses[0]}")


if __name__ == "__main__":
    main()
