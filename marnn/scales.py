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

* ``paper-2core`` is the paper's protocol as far as one 2-core machine
  carries it (named for that: ``paper`` cut to ``2`` cores). Formal languages,
  lstm and jm-*: every field is the paper's (10,000 / 1,000 strings, lengths
  40-80, bins 40-100 / 101-200 / 201-400, batch 10, Adam with a log-uniform lr
  per restart, clipping 5, lr x 0.9 after 5 epochs without improvement, early
  stopping after 10) except 5 restarts instead of 10 and at most 60 epochs
  instead of 200: validation cross-entropy keeps creeping down for a long time
  (count-3 / jm-10: all 20 runs still improving at epoch 13, the frozen modes
  most), so most runs would reach a cap of 200 and the phase would cost ~40
  CPU-h; at 60 it costs at most ~12. A run stopped by the cap is recorded as
  ``max-epochs`` and the pages count them.
  Test sets hold at least 2,500 strings per bin (``test_strings``: every valid
  length gets ceil(2,500 / #lengths)): a string's accuracy lies in [0, 1], so
  its variance is at most 1/4 and the standard error of a bin's mean accuracy
  over strings is at most sqrt(1/4 / 2,500) = 0.01. Sizes (bins 0 / 1 / 2):
  count-3, count-and-copy, marked-reverse-and-copy, unmarked-reverse-and-copy
  125 x 20 / 76 x 33 (74 x 34) / 38 x 67 (66) = 2,500-2,546 strings per bin;
  marked-copy and the other copies 84 (81) x 30 (31) / 50 x 50 / 25 x 100.
  rns-3-3 (per-model entry of ``models``, every cut next to its field):
  5,000 / 1,000 strings (the paper's 10,000 / 1,000), at most 8 epochs
  (patience 4, lr patience 2), 3 restarts, and the first 2 strings of every
  length of the same test set (134-200 strings in bin 2: standard error <=
  0.043). The training strings were raised from 1,000 (and epochs from 6)
  once RNS models ran whole strings in one compiled call
  (kernels/rns_sequence.py, ~3x faster per replica than before), to what about
  8 CPU-hours buy. A formal restart's
  learning rate and initialisation come from (task, model, restart)
  (``independent_draws``), so restarts of different languages are independent.

  Penn Treebank: the whole streams (929k / 73k / 82k tokens), 32 x 35, the
  paper's SGD protocol (lr log-uniform in [1, 100], clipping log-uniform in
  [0.0112, 1.12], lr / 1.5 after an epoch without improvement, stop after 2)
  at ONE draw, chosen on validation: a learning-rate search of 8 draws of
  lstm-256 / none trains as one group with successive halving (after epochs 1,
  2 and 4 the worse half stops), and the survivor trains on to the paper's
  early stopping; its test perplexity is the gate of the PTB cells (a 256-unit
  LSTM without dropout lands near 120; above 140 something is wrong). At a
  fixed short cap half of the draws would still be far from converged (lr 4.6:
  validation perplexity 505 -> 178 over 6 epochs, still falling 10% an epoch),
  and Table 3 would rank draws, not models. Every PTB cell (every model, mode
  and embedding group) then uses the survivor's draw: pairs share lr, clipping,
  initialisation and stopping rule, and models meet at the same draw.
  lstm-256 keeps the paper's cap of 100 epochs; jm-hidden-247 and
  jm-learned-22 are capped at 6, rns-4-5 and vrns at 3 (per-model entries
  below).

  Cost (CPU-hours, one thread per run, from ``marnn bench`` on the idle
  development machine, benchmarks/README.md: time per training step of one
  replica in a batch of 40 at n = 60 -- lstm 1.05 ms, jm-10 2.03, jm-3.3.3
  2.26, jm-hidden 2.33; rns-3-3 0.12 / 0.23 / 0.40 s at n = 40 / 60 / 80,
  ~0.245 s averaged over 40-80; one n = 400 string evaluated: 0.4 ms, rns-3-3
  0.87 s, O(n^3); PTB, one 32 x 35 chunk of one replica: lstm-256 0.55 s,
  jm-hidden-247 0.61, jm-learned-22 0.58, rns-4-5 1.53, vrns-3-3-5 1.00, 830
  chunks per epoch; a validation batch costs ~1/3 of a training step; every
  run goes to its cap unless said):

  ====================================================  ===============
  PTB learning-rate search (8+4+2x2 epochs, then one     3.4 (at 15
  run to early stopping)                                 epochs)
  Table 3, PTB modes none and m at its draw              8.7
  formal lstm and jm-* (0.19 per epoch of all 560 runs)  9.7 at a mean of
  (**)                                                   50 epochs (2.1
                                                         at 11, 11.7 at
                                                         60)
  formal rns-3-3 (5,000 strings, 8 epochs, 3 restarts)   7.0 (***)
  PTB modes c and cm                                     10.6
  PTB embedding ablation (lstm-256, modes m and c)       3.8
  vrns-3-3-5 as the equations say, mode none (the pair)  0.7
  ====================================================  ===============

  (***) ``marnn bench --plan paper-2core`` with the rns-3-3 step re-measured on
  the idle machine (trainers paused) on 2026-12-07 evening, after the sweeps read each
  row once: a training step of one replica in a group of 12 at n = 40 / 60 / 80
  costs 18 / 63 / 114 ms and the plan gives 0.98-1.01 CPU-h per language, 7.0
  in all. The paper's 10,000 training strings would double the training part
  (about 13 CPU-h), past the phase's budget of about 8, so the cut stays.

  The PTB groups stored before 2026-12-07 evening (the learning-rate search,
  the rns-4-5 and vrns-3-3-5-published pairs) ran in grid workers that pinned
  torch's threads but not NumPy's BLAS, which then ran a second thread on a
  core the other trainer was using: their ``group.cpu_time_s`` counts that
  thread too (lstm-256 about 2x, a jm-* pair about 3.7x the pinned CPU time on
  a few chunks beside a trainer; the numbers of lstm-256 and the RNS models are
  the same bit for bit either way, those of jm-* are not, and no jm-* PTB
  record of this scale was stored before the fix).

  (*) measured later than the other rows, on a faster machine (``marnn bench
  --plan paper-2core`` on 2026-12-07: fp32 GEMM peak 176 GFLOP/s at 1 thread;
  time per training step of one replica in a group of 12 at n = 40 / 60 / 80:
  rns-3-3 22 / 49 / 89 ms; the same plan puts the lstm / jm-* phase at 11-12
  CPU-h at the cap and lstm-256 at 0.19 s per chunk and replica).
  (**) ``marnn bench --plan paper-2core`` on the same machine in the afternoon,
  after the formal trainer kept its freed blocks (benchmarks/README.md, "Fresh
  pages, NaN fills and dependent sums"), process CPU time beside the running
  trainers: a training step of one replica in a group of 12 at n = 60 costs lstm
  0.67 ms, jm-10 1.46, jm-3.3.3 1.36, jm-hidden 1.22, rns-3-3 45 ms. The
  phase-2 groups stored before that took 1,470-2,140 CPU-s each (mean 49-59
  epochs; count-3 / jm-10, the first, 3,400) against 1,620-1,770 projected at
  the cap.

  about 39 CPU-hours (``marnn.campaign`` computes the PTB rows, with the
  uncapped lstm-256 runs at 15 epochs until the search's survivor shows its
  own), ~20 h on 2 cores. The ``paper`` scale by the plan of 2026-12-07 (the
  machine marked (*), RNS models on whole strings): formal lstm / jm-* ~21 CPU-h
  at a mean of 50 epochs (82 at 200), rns-3-3 ~4.1 CPU-h per epoch (~210 at 50),
  PTB ~21 CPU-h per epoch of the grid (4 modes x 10 restarts), ~410 at 20
  epochs: about 650 CPU-hours (``marnn bench --plan paper``, every run to its
  cap: about 3,000).

Test bins are closed ranges; bins after the first start one past the previous
bin's end (the paper writes 40-100, 100-200, 200-400).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

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
    # ---- added after the first records: kept out of a run's config while unset
    # (``OPTIONAL``), so the records of smoke / quick / paper keep their keys ----
    # formal: at least this many strings per bin; every valid length of the bin
    # gets ceil(test_strings / #lengths) strings (replaces test_per_length)
    test_strings: int | None = None
    # formal: evaluate only the first ``test_take`` strings of every length of the
    # shared test set (a subset of the same strings, for models too slow for all)
    test_take: int | None = None
    # per-model changes of the fields above: ((model, ((field, value), ...)), ...);
    # a run's config stores the fields it trained with, never this mapping
    models: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    # formal: a restart's learning rate and initialisation come from (task, model,
    # restart) instead of the restart alone, so restarts of different languages and
    # models are independent draws (the four modes of one cell still share them)
    independent_draws: bool = False
    # PTB: the restart's learning-rate draw is chosen on validation by successive
    # halving (``marnn.grid.ptb_search``): ``ptb_draws`` draws (seeds 0..N-1) of the
    # search model train as one group; after each epoch in ``ptb_halving`` the worse
    # half of the draws still running stops (status "pruned"); the survivor trains on
    # to early stopping and its draw (seed) is the one every PTB cell of the scale uses
    ptb_draws: int | None = None
    ptb_halving: tuple[int, ...] = ()

    @property
    def bin_names(self) -> tuple[str, ...]:
        return tuple(f"bin{i}" for i in range(len(self.test_bins)))

    def with_(self, **changes) -> Scale:
        """A copy with some fields changed (for ad-hoc experiments)."""
        return replace(self, **changes)

    def for_model(self, model: str) -> Scale:
        """The scale a run of ``model`` trains at: this one with ``model``'s entry of
        :attr:`models` applied (the same scale for models without one)."""
        for name, changes in self.models:
            if name == model:
                fields_: dict[str, Any] = dict(changes)
                return replace(self, **fields_)
        return self

    def model_changes(self) -> dict[str, dict[str, object]]:
        """:attr:`models` as ``{model: {field: value}}``."""
        return {name: dict(changes) for name, changes in self.models}

    def changes(self) -> dict[str, object]:
        """Fields that differ from the paper's protocol."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "name" and getattr(self, f.name) != getattr(PAPER, f.name)}


# Fields that a run's config leaves out while they hold their default (they were
# added after records existed; see marnn.config.scale_part). ``models`` never enters
# a config: the fields a model's entry changes enter it with their changed values.
OPTIONAL: dict[str, object] = {"test_strings": None, "test_take": None, "models": (), "independent_draws": False,
                               "ptb_draws": None, "ptb_halving": ()}


def per_model(models: dict[str, dict[str, object]]) -> tuple:
    """``{model: {field: value}}`` as the hashable :attr:`Scale.models` value."""
    return tuple((name, tuple(changes.items())) for name, changes in models.items())


PAPER = Scale("paper", independent_draws=True)

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

PAPER_2CORE = Scale(
    "paper-2core",
    # Formal languages, lstm and jm-*: every field is the paper's but restarts.
    independent_draws=True,  # the languages a verdict counts are then independent samples
    restarts=5,  # 10 do not fit: ~0.3 CPU-h per epoch of the phase at 5 (module docstring)
    max_epochs=60,  # the paper's cap is 200: at 60 the phase costs at most ~12 CPU-h (module docstring)
    test_strings=2_500,  # per bin: SE of the bin accuracy over strings <= sqrt(1/4 / 2500) = 0.01
    # Penn Treebank: full streams, 32 x 35, the paper's SGD protocol at one learning-rate
    # draw chosen on validation, shared by every model and mode (module docstring):
    ptb_draws=8,  # 8 draws of lstm-256 / none from the paper's log-uniform lr and clip ranges
    ptb_halving=(1, 2, 4),  # 8 -> 4 after epoch 1, -> 2 after epoch 2, -> 1 after epoch 4
    ptb_restarts=1,  # the selected draw; 10 x the grid does not fit
    # lstm-256 keeps the paper's cap (100) and stopping rule; the other models are capped below
    models=per_model({
        # rns-3-3 costs ~50 ms per replica-step at n = 40-80 (~40x a jm-*): the paper's 10,000
        # strings would take ~1.2 CPU-h per epoch of the 7 groups (module docstring)
        "rns-3-3": {
            "train_size": 5_000,  # half the paper's: 500 steps per epoch
            "valid_size": 1_000,  # the paper's
            "max_epochs": 8,  # the paper's cap is 200
            "early_stop": 4,  # the paper's patience is 10 (could never trigger within 8 epochs)
            "lr_patience": 2,  # the paper's is 5, for the same reason
            "restarts": 3,  # the paper's is 10
            "test_take": 2,  # 2 strings per length of the shared test set (~0.4 s per n = 400 string)
        },
        # PTB caps (the paper's is 100, with early stopping after 2 epochs without improvement,
        # which applies within every cap); per epoch on the full stream: lstm-256 7.6 CPU-min,
        # jm-hidden-247 8.4, jm-learned-22 8.0, rns-4-5 21, vrns-3-3-5 14
        "jm-hidden-247": {"ptb_max_epochs": 6},
        "jm-learned-22": {"ptb_max_epochs": 6},
        "rns-4-5": {"ptb_max_epochs": 3},
        "vrns-3-3-5": {"ptb_max_epochs": 3},
        "vrns-3-3-5-published": {"ptb_max_epochs": 3},  # the same model, published bottom layout
    }),
)

SCALES: dict[str, Scale] = {s.name: s for s in (SMOKE, QUICK, PAPER_2CORE, PAPER)}


def get_scale(name: str | Scale) -> Scale:
    if isinstance(name, Scale):
        return name
    return lookup("scale", name, SCALES)
