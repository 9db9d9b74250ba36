"""Experiment scales: the one place that says what ``smoke``, ``quick`` and ``paper`` change.

``paper`` is the published protocol (docs: book/reference/training.md, "Formal languages" and
"Penn Treebank"); the other two shrink it so that it fits a laptop:

* ``smoke`` runs every model on every language in seconds; it exists for tests
  and for nbval, and its numbers mean nothing.
* ``quick`` trains on lengths 10-20 and tests on 10-25 / 26-50 / 51-100, so the
  longest bin is 5x the longest training string, as in the paper (80 -> 400);
  1,000 training strings, at most 30 epochs, 3 restarts. It is sized so that
  the whole formal grid (7 tasks x 5 models x 4 modes x 3 restarts = 420 runs,
  trained as 35 replica-batched groups) fits in about an hour on 2 CPU cores.

  Measured with ``marnn grid --scale quick --workers 2`` (LocalCluster, 2
  single-threaded worker processes, torch 2.13 CPU, the 2-core development
  machine): CPU seconds per (task, model) group of 12 replicas, mean over the
  7 tasks, as the committed records give them (``group.cpu_time_s``): rns-3-3
  503, jm-10 40, jm-hidden 39, jm-3.3.3 39, lstm 23 (with the compiled
  LSTM / stack loop; the NumPy loop needed 57-63 and 34): 4,510 CPU-s for the
  35 groups, about 38 min on 2 idle cores, 88% of it RNS. The 28 lstm / jm-*
  groups alone took 9 min wall. Most runs
  (347/420) still stop at 30 epochs, so quick models are undertrained. The RNS
  stack costs O(n^3) per string, which is what forces lengths this short: at
  20-40 one RNS group (12 replicas) needs about 7 min per epoch.

Test bins are closed ranges; bins after the first start one past the previous
bin's end (the paper writes 40-100, 100-200, 200-400).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .registry import lookup

EVAL_SEED = 2024  # one fixed seed for every test set, shared by all models and modes


@dataclass(frozen=True)
class Scale:
    name: str
    # ---- formal languages ------------------------------------------------
    train_size: int = 10_000  # strings (the paper)
    valid_size: int = 1_000  # strings (the paper)
    train_lengths: tuple[int, int] = (40, 80)  # the paper
    test_bins: tuple[tuple[int, int], ...] = ((40, 100), (101, 200), (201, 400))  # the paper
    # strings per valid length in each bin: 100 for bin0 is the reference
    # protocol; bins 1-2 are not given in the paper, these are our choice.
    test_per_length: tuple[int, ...] = (100, 10, 4)
    batch_size: int = 10  # one length per batch (the paper)
    eval_batch_size: int = 100  # evaluation only, does not change any number
    max_epochs: int = 200  # the paper
    early_stop: int = 10  # epochs without validation improvement (the paper)
    lr_patience: int = 5  # epochs without improvement before lr *= lr_decay (the paper)
    lr_decay: float = 0.9  # the paper
    lr_range: tuple[float, float] = (5e-4, 1e-2)  # log-uniform per restart (the paper)
    clip: float = 5.0  # gradient-norm clipping (the paper)
    restarts: int = 10  # the paper
    # ---- Penn Treebank -----------------------------------------------------
    ptb_streams: int = 32  # the paper
    ptb_bptt: int = 35  # the paper
    ptb_train_tokens: int | None = None  # None = the whole training stream
    ptb_eval_tokens: int | None = None  # None = whole validation / test streams
    ptb_max_epochs: int = 100  # the paper
    ptb_early_stop: int = 2  # the paper
    ptb_lr_range: tuple[float, float] = (1.0, 100.0)  # log-uniform (the paper)
    ptb_lr_divisor: float = 1.5  # the paper
    ptb_clip_range: tuple[float, float] = (0.0112, 1.12)  # log-uniform (the paper)
    ptb_restarts: int = 10  # the paper

    @property
    def bin_names(self) -> tuple[str, ...]:
        return tuple(f"bin{i}" for i in range(len(self.test_bins)))

    def with_(self, **changes) -> "Scale":
        """A copy with some fields changed (for ad-hoc experiments)."""
        return replace(self, **changes)

    def changes(self) -> dict[str, object]:
        """Fields that differ from the paper's protocol."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "name" and getattr(self, f.name) != getattr(PAPER, f.name)}


PAPER = Scale("paper")

QUICK = Scale(
    "quick",
    # Sized so the whole formal grid (7 tasks x 5 models x 4 modes x 3 restarts
    # = 420 runs, 35 batched groups) fits in about an hour on 2 CPU cores; see
    # the module docstring for the measurement. The RNS stack costs O(n^3) per
    # string, which is what forces the short lengths.
    train_size=1_000,
    valid_size=200,
    train_lengths=(10, 20),
    test_bins=((10, 25), (26, 50), (51, 100)),
    test_per_length=(4, 2, 1),
    max_epochs=30,
    early_stop=5,
    lr_patience=3,
    restarts=3,
    ptb_train_tokens=30_000,  # ~30 CPU-min for the PTB grid + ablation
    ptb_eval_tokens=10_000,
    ptb_max_epochs=2,
    ptb_early_stop=1,
    ptb_restarts=1,
)

SMOKE = Scale(
    "smoke",
    train_size=40,
    valid_size=20,
    train_lengths=(8, 16),
    test_bins=((8, 16), (17, 32), (33, 48)),
    test_per_length=(2, 1, 1),
    eval_batch_size=20,
    max_epochs=2,
    early_stop=2,
    lr_patience=1,
    restarts=2,
    ptb_streams=4,
    ptb_bptt=10,
    ptb_train_tokens=2_000,
    ptb_eval_tokens=500,
    ptb_max_epochs=1,
    ptb_early_stop=1,
    ptb_restarts=1,
)

SCALES: dict[str, Scale] = {s.name: s for s in (SMOKE, QUICK, PAPER)}


def get_scale(name: str | Scale) -> Scale:
    if isinstance(name, Scale):
        return name
    return lookup("scale", name, SCALES)
