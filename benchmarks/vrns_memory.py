"""Memory of the windowed RNS / VRNS stack over a long carried stream.

Runs the RNS / VRNS stack core alone on 32 streams x 35-step chunks, carrying
the state with ``detach_state`` (as PTB training does), and prints the process's
peak resident memory after each chunk: both must stay flat. Until session 1's
fix, VRNS grew by about 140 MiB per chunk (its tape kept its own outputs, an
uncollectable tensor <-> grad_fn cycle); tests/test_rns.py has the regression
test.

    .venv/bin/python benchmarks/vrns_memory.py vrns
    .venv/bin/python benchmarks/vrns_memory.py rns
"""
import resource
import sys

import torch

from marnn.models.rns import RNSCore


def main(kind: str = "vrns", chunks: int = 6, streams: int = 32, bptt: int = 35) -> None:
    torch.set_num_threads(1)
    core = RNSCore(3, 3, m=5, window=35) if kind == "vrns" else RNSCore(4, 5, window=35)
    bottom = torch.full((streams, 5), 0.5) if core.m else None
    state = core.initial_state(streams, torch.device("cpu"), torch.float32, bottom=bottom)
    for chunk in range(chunks):
        logits = torch.randn(bptt, streams, core.num_actions, requires_grad=True)
        pushed = torch.rand(bptt, streams, 5, requires_grad=True) if core.m else None
        readings = []
        for t in range(bptt):
            r, state = core.step(state, logits[t], None if pushed is None else pushed[t])
            readings.append(r)
        torch.stack(readings).sum().backward()
        state = core.detach_state(state)
        del readings, r
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{kind} chunk {chunk}: peak RSS {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vrns")
