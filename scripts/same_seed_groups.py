"""One PTB run, the same seed, trained alone and inside a replica group: where do the two part?

    .venv/bin/python scripts/same_seed_groups.py [--model lstm-256] [--seed 4] [--group 8] \
        [--chunks 30] [--scale paper-2core]

Builds the model twice, as :func:`marnn.train.ptb.train_ptb` does: once with the one
replica ``--seed`` and once as a group of ``--group`` replicas (seeds 0 .. group-1, which
contains ``--seed``), each with the learning rate and clipping its seed draws at
``--scale``, and trains both on the first ``--chunks`` chunks of the training stream
with the trainer's own step (:func:`marnn.train.loop.guarded_step`: per-replica
clipping, SGD). Prints whether the seed's initial weights are equal in the two, then
its training loss (mean cross-entropy per token) per chunk in both, and the first
chunk where they differ.

Both use the same code, data and seed; only the replica batch around the run
differs. Where the BLAS rounds a replica's product inside a batch differently from
the same product alone (on some CPUs it does, see ``tests/conftest.py``,
``slices_keep_their_bits``), the two part after a few chunks, and SGD at a large learning
rate takes them apart. The Table 3 page uses this to read the two lstm-256 runs that
are identical by construction (modes none and m) but were trained in different groups.
"""
from __future__ import annotations

import argparse

import torch


def losses(model_name: str, seeds: list[int], seed: int, scale, corpus, n_chunks: int) -> tuple[dict, list[float]]:
    """The initial weights of replica ``seed`` and its training loss after each of the first
    ``n_chunks`` chunks, trained in a group of the replicas ``seeds``."""
    from marnn.models import detach_state
    from marnn.ptb import batchify, chunks
    from marnn.train import hyperparameters
    from marnn.train.evaluate import model_nll
    from marnn.train.loop import default_build, guarded_step
    from marnn.train.optim import BatchedSGD

    class _Quiet:
        def diverge(self, *args):
            pass

    hps = [hyperparameters(s, scale.ptb_lr_range, scale.ptb_clip_range) for s in seeds]
    model = default_build(model_name, vocab_size=corpus.vocab_size, replicas=len(seeds), seeds=seeds,
                          embedding_group="controller", device=torch.device("cpu"))
    j = seeds.index(seed)
    w0 = {k: v[j].clone() for k, v in model.state_dict().items()}
    opt = BatchedSGD(model.named_parameters(), lr=[h["lr"] for h in hps], clip=[h["clip"] for h in hps])
    train = batchify(corpus.train, scale.ptb_streams)
    state, out = None, []
    idx = list(range(len(seeds)))
    for i, (x, y) in enumerate(chunks(train, scale.ptb_bptt)):
        if i == n_chunks:
            break
        nll, state = model_nll(model, x, y, state)
        state = detach_state(state)
        loss = nll.mean((1, 2))
        guarded_step(opt, _Quiet(), idx, loss, 1, i)
        out.append(float(loss[j].detach()))
    return w0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lstm-256")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--group", type=int, default=8, help="replicas in the group (seeds 0 .. group-1)")
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--scale", default="paper-2core")
    a = ap.parse_args(argv)
    from marnn.registry import PTB_MODELS, PTB_VARIANTS, SCALES

    ptb = PTB_MODELS + PTB_VARIANTS
    if a.model not in ptb:
        ap.error(f"--model {a.model!r} is not a PTB model; one of: {', '.join(ptb)}")
    if a.scale not in SCALES:
        ap.error(f"--scale {a.scale!r} is not a scale; one of: {', '.join(SCALES)}")
    if not 0 <= a.seed < a.group:
        ap.error(f"--seed {a.seed} is not in the group's seeds 0..{a.group - 1}; give --group > --seed")
    if a.chunks < 1:
        ap.error(f"--chunks {a.chunks}: give 1 or more")

    from marnn.ptb import load_corpus
    from marnn.scales import get_scale
    from marnn.train import large_blocks_kept, set_threads

    scale = get_scale(a.scale)
    torch.use_deterministic_algorithms(True)
    set_threads(1)
    corpus = load_corpus()
    with large_blocks_kept():  # as the trainer runs
        w1, alone = losses(a.model, [a.seed], a.seed, scale, corpus, a.chunks)
        wg, grouped = losses(a.model, list(range(a.group)), a.seed, scale, corpus, a.chunks)
    same_init = all(torch.equal(w1[k], wg[k]) for k in w1)
    print(f"{a.model}, seed {a.seed}, scale {a.scale}: initial weights alone and in a group of {a.group} "
          f"{'equal' if same_init else 'DIFFER'}")
    print(f"{'chunk':>6} {'alone':>16} {'group of ' + str(a.group):>16} {'difference':>12}")
    first = next((i for i, (p, q) in enumerate(zip(alone, grouped, strict=True)) if p != q), None)
    for i, (p, q) in enumerate(zip(alone, grouped, strict=True)):
        print(f"{i + 1:>6} {p:16.10f} {q:16.10f} {p - q:+12.3e}")
    print("the losses are equal bit for bit in every chunk" if first is None
          else f"first chunk whose loss differs: {first + 1}")


if __name__ == "__main__":
    main()
