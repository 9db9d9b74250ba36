"""Timings of the RNS / VRNS stack step on the CPU (run on demand, not by the tests).

    python benchmarks/rns_steps.py [threads]

Stack forward + backward (:class:`marnn.models.rns.RNSCore` on its tape,
:mod:`marnn.kernels.rns_tape`) for rns-3-3 on formal-language strings and for the
windowed PTB stacks, and a whole LSTM + stack Adam step.
"""
from __future__ import annotations

import sys
import time

import torch

from marnn.models.rns import RNSCore


def main(threads: int = 1, reps: int = 3) -> None:
    """Stack forward + backward and LSTM + stack training steps of the RNS / VRNS (CPU)."""

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def best(f, r=reps):
        ts = []
        for _ in range(r):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    def stack_fb(Q, S, m, B, n, window=None, grad=True):
        core = RNSCore(Q, S, m, window)
        lg = torch.randn(B, n, core.num_actions, requires_grad=grad)
        v = torch.rand(B, n, m, requires_grad=grad) if m else None
        bt = torch.rand(B, m, requires_grad=grad) if m else None

        def f():
            with torch.set_grad_enabled(grad):
                st = core.initial_state(B, None, torch.float32, bt)
                rs = [core.initial_reading(st)]
                lgs = lg.unbind(1)
                vs = None if v is None else v.unbind(1)
                for t in range(n):
                    r, st = core.step(st, lgs[t], None if v is None else vs[t])
                    rs.append(r)
                out = torch.stack(rs, 1)
                if grad:
                    out.square().sum().backward()
        return f

    def train_step(Q, S, B, n, H=20, V=3):
        core = RNSCore(Q, S)
        cell = torch.nn.LSTMCell(V + core.reading_size, H)
        act = torch.nn.Linear(H, core.num_actions)
        outl = torch.nn.Linear(H, V + 1)
        params = [*cell.parameters(), *act.parameters(), *outl.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3)
        x = torch.nn.functional.one_hot(torch.randint(0, V, (B, n)), V).float()
        y = torch.randint(0, V + 1, (B, n + 1))

        def f():
            opt.zero_grad()
            h = c = torch.zeros(B, H)
            st = core.initial_state(B, None, torch.float32)
            r = core.initial_reading(st)
            logits = [outl(h)]
            for t in range(n):
                if t > 0:
                    r, st = core.step(st, act(h))
                h, c = cell(torch.cat([x[:, t], r], -1), (h, c))
                logits.append(outl(h))
            loss = torch.nn.functional.cross_entropy(torch.stack(logits, 1).reshape(-1, V + 1), y.reshape(-1))
            loss.backward()
            opt.step()
        return f

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, best of {reps}")
    for n in (40, 60, 80):
        print(f"rns-3-3  stack fwd+bwd      B=10 n={n}: {best(stack_fb(3, 3, None, 10, n)):.3f} s")
    for n in (40, 60, 80):
        print(f"rns-3-3  LSTM+stack Adam step B=10 H=20 n={n}: {best(train_step(3, 3, 10, n)):.3f} s")
    print(f"rns-3-3  eval (no grad)  B=1 n=400: {best(stack_fb(3, 3, None, 1, 400, grad=False)):.3f} s")
    print(f"rns-4-5  D=35 stack fwd+bwd 32x35: {best(stack_fb(4, 5, None, 32, 35, 35)):.3f} s")
    print(f"vrns-3-3-5 D=35 stack fwd+bwd 32x35: {best(stack_fb(3, 3, 5, 32, 35, 35)):.3f} s")
    print(f"vrns-2-3-3 stack fwd+bwd B=10 n=60: {best(stack_fb(2, 3, 3, 10, 60)):.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
