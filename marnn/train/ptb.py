"""Training on Penn Treebank (docs: book/reference/training.md, "Penn Treebank").

Like :mod:`marnn.train.formal`, and through the same :mod:`marnn.train.loop`, a
group of runs (restarts x freeze modes of one model) trains as one
replica-batched model on the same token order:

* the training stream is cut into ``ptb_streams`` parallel streams
  (:func:`marnn.ptb.batchify`) and read in ``ptb_bptt``-token chunks; the
  hidden and stack state is carried from chunk to chunk and detached
  (truncated BPTT);
* the loss of replica ``r`` on a chunk is the mean per-token cross-entropy
  over its ``B x T`` tokens;
* plain SGD, :math:`\\theta \\leftarrow \\theta - \\eta_r g_r`, with the
  gradient norm clipped to ``c_r`` per replica; ``eta_r`` (log-uniform in
  ``ptb_lr_range``) and ``c_r`` (log-uniform in ``ptb_clip_range``) come from
  the restart's seed;
* after every epoch the validation perplexity is computed per replica; an
  epoch without improvement divides the lr by ``ptb_lr_divisor``;
  ``ptb_early_stop`` of them stop the replica; the best-validation weights are
  restored at the end;
* with ``ptb_halving`` (a learning-rate search, :func:`marnn.grid.ptb_search`),
  after each of those epochs the worse half of the group's draws (seeds) stop
  with status ``"pruned"`` (:meth:`marnn.train.loop.Tracker.halve`);
* test perplexity is computed over the whole test stream (``ptb_eval_tokens``
  = None; smaller scales cut it), cut into the same number of streams (the
  ragged tail of fewer than ``ptb_streams`` tokens is dropped and the first
  token of each stream is context only).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from . import epochlog, hyperparameters, large_blocks_kept, progress_disabled, resume
from .evaluate import model_nll, stream_cross_entropy
from .loop import Group, default_build, finite_or_none, guarded_step
from .optim import BatchedSGD, ReplicaOptimizer


def _detach_default(state):
    from ..models import detach_state
    return detach_state(state)


STATE_SECONDS = 600.0  # a group's state is also saved inside an epoch at most this often


def _cut(tokens: torch.Tensor, limit: int | None) -> torch.Tensor:
    return tokens if limit is None else tokens[:limit]


@large_blocks_kept()  # no page faults for the large gradients of a replica group, chunk after chunk
def train_ptb(configs: list[dict], *, corpus=None, build: Callable | None = None, detach: Callable | None = None,
              device=None, progress: bool = False, desc: str | None = None,
              threads: int | None = None, compact: bool = True, state_dir=None,
              after_epoch: Callable[[int], None] | None = None, epoch_lines: bool = False,
              state_seconds: float = STATE_SECONDS,
              after_chunk: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train a group of PTB runs (same model, scale, embedding group) as one batched model.

    ``state_dir`` / ``after_epoch``: as in :func:`marnn.train.formal.train_formal`
    (the state is saved after every epoch; the next epoch starts a fresh
    hidden state). A group also saves inside an epoch once ``state_seconds``
    have passed since its last save (the chunk reached and the carried state,
    the stack's included, :func:`marnn.train.resume.partial_epoch`), and
    resumes from that chunk with the same numbers. ``after_chunk(epoch, chunks done)`` runs after
    every training chunk (tests interrupt there). ``epoch_lines``: one line
    per replica on stderr after every epoch (:mod:`marnn.train.epochlog`), and,
    where no progress bar shows it (a grid's workers), one line for the group
    each tenth of an epoch's chunks.
    """
    from ..ptb import batchify, chunks, load_corpus, num_chunks

    group = Group(configs, "ptb", device=device, threads=threads, state_dir=state_dir, after_epoch=after_epoch,
                  epoch_lines=epoch_lines)
    first, device, R = group.first, group.device, group.R
    build = build or default_build
    detach = detach or _detach_default

    scale = first.scale
    corpus = corpus or load_corpus()
    B, T = scale.ptb_streams, scale.ptb_bptt
    train = batchify(_cut(corpus.train, scale.ptb_train_tokens), B).to(device)  # (B, L)
    valid = batchify(_cut(corpus.valid, scale.ptb_eval_tokens), B).to(device)
    test = batchify(_cut(corpus.test, scale.ptb_eval_tokens), B).to(device)

    seeds = [run.seed for run in group.runs]
    hps = [hyperparameters(s, scale.ptb_lr_range, scale.ptb_clip_range) for s in seeds]

    def make_model(reps: list[int]):
        return build(first.model, vocab_size=corpus.vocab_size, replicas=len(reps), seeds=[seeds[r] for r in reps],
                     embedding_group=first.embedding_group, device=device)

    model = make_model(list(range(R)))
    masks = group.freeze_masks(model)
    opt: ReplicaOptimizer = BatchedSGD(model.named_parameters(), lr=[h["lr"] for h in hps],
                                       clip=[h["clip"] for h in hps], masks=masks)
    saved = group.track(model, masks, opt, early_stop=scale.ptb_early_stop, patience=1,
                        factor=1.0 / scale.ptb_lr_divisor, make_model=make_model, compact=compact)
    tracker, curves = group.tracker, group.curves
    partial = saved.get("partial") if saved is not None else None
    n_chunks = num_chunks(train, T)
    tenth = max(n_chunks // 10, 1)
    for epoch in range(group.start, scale.ptb_max_epochs + 1):
        running = tracker.running()
        if not running:
            break
        model, opt, idx = tracker.model, tracker.opt, tracker.idx
        live = torch.tensor(idx, dtype=torch.long)
        lrs = dict(zip(idx, opt.lr.tolist(), strict=True))
        t_epoch = time.perf_counter()
        tr_nll = torch.zeros(R, dtype=torch.float64)
        tr_tok, done = 0, 0
        state = None
        if partial is not None and partial["epoch"] == epoch:  # resumed inside this epoch
            done, tr_tok = partial["chunk"], partial["train_tokens"]
            tr_nll = partial["train_nll"].clone()
            state = resume.carried_state(partial, device, getattr(model, "core", None))
            t_epoch -= partial["seconds"]
        partial = None
        last_save = time.perf_counter()
        model.train()
        todo = _skip(chunks(train, T), done) if done else chunks(train, T)
        bar = tqdm(todo, total=n_chunks, desc=desc or f"ptb/{first.model} x{len(idx)} epoch {epoch}",
                   disable=progress_disabled(progress), leave=False, initial=done)
        for i, (x, y) in enumerate(bar):
            nll, state = model_nll(model, x, y, state)  # (R_live, B, T): the classifier and loss fused
            state = detach(state)
            loss = nll.mean((1, 2))  # (R_live,)
            guarded_step(opt, tracker, idx, loss, epoch, group.step)
            tr_nll[live] += nll.detach().double().sum((1, 2)).cpu()
            tr_tok += y.numel()
            group.step += 1
            chunk = done + i + 1
            if (state_dir is not None and chunk < n_chunks
                    and time.perf_counter() - last_save >= state_seconds):
                inside = resume.partial_epoch(epoch, chunk, state, tr_nll, tr_tok, time.perf_counter() - t_epoch)
                if inside is not None:
                    group.save(epoch - 1, partial=inside)
                last_save = time.perf_counter()
            if group.lines and bar.disable and chunk < n_chunks and chunk % tenth == 0:  # no bar to show it
                epochlog.emit(epochlog.chunk_line(configs, epoch, scale.ptb_max_epochs, chunk, n_chunks,
                                                  time.perf_counter() - t_epoch))
            if after_chunk is not None:
                after_chunk(epoch, chunk)
        bar.close()
        model.eval()
        v_ce = stream_cross_entropy(model, valid, T, detach).tolist()
        for pos, r in enumerate(idx):
            if r not in running:
                continue
            curves[r].append({
                "epoch": epoch,
                "lr": lrs[r],
                "train_perplexity": _ppl(float(tr_nll[r]) / tr_tok),
                "valid_cross_entropy": finite_or_none(v_ce[pos]),
                "valid_perplexity": _ppl(v_ce[pos]),
                "seconds": round(time.perf_counter() - t_epoch, 3),
            })
        group.end_epoch(epoch, v_ce, {r: finite_or_none(float(tr_nll[r]) / tr_tok) for r in idx if r in running},
                        corpus.vocab_size, trained=running, max_epochs=scale.ptb_max_epochs, started=t_epoch,
                        # a learning-rate search (marnn.grid.ptb_search): the worse draws stop
                        halve=seeds if epoch in scale.ptb_halving else None)
    model = group.finish()
    test_ce = stream_cross_entropy(model, test, T, detach).tolist()
    common = group.record_parts()
    records = []
    for r in range(len(configs)):
        best = tracker.best[r]
        records.append(common.record(r, lr=hps[r]["lr"], clip=hps[r]["clip"], curve=curves[r], results={
            "valid": {"cross_entropy": finite_or_none(best), "perplexity": _ppl(best),
                      "tokens": int(valid[:, 1:].numel())},
            "test": {"cross_entropy": finite_or_none(test_ce[r]), "perplexity": _ppl(test_ce[r]),
                     "tokens": int(test[:, 1:].numel())},
        }))
    return records


def _skip(chunks, n: int):
    """``chunks`` after its first ``n`` items (a resumed epoch; the chunks are views, so this is cheap)."""
    for i, item in enumerate(chunks):
        if i >= n:
            yield item


def _ppl(ce: float) -> float | None:
    return float(math.exp(ce)) if ce is not None and math.isfinite(ce) and ce < 700 else None
