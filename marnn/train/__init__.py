"""Training engine: what a run is (this module), the trainers of the formal languages
(:mod:`.formal`) and of Penn Treebank (:mod:`.ptb`), what both share (:mod:`.loop`: the tracker with
its early stopping, lr decay and compaction, the guarded step, the resumed state, the record's common
parts), and :mod:`.run`, the one load-or-train path
(:func:`marnn.train.run.train_missing`: claim, resume, train a group, store its
records and weights; :func:`marnn.train.run.run_or_load` for one run).

A *run* is one cell of the paper's grid, described by a
:class:`marnn.config.RunConfig` and stored as its small JSON-able *config* dict
(the key of its record in :mod:`marnn.store`)::

    {"kind": "formal", "task": "marked-copy", "model": "jm-10", "freeze": "m",
     "seed": 0, "data_seed": 0, "scale": "quick", "scale_fields": {...},
     "protocol": 1}

``seed`` is the restart: it seeds the model's initialisation and, through
:func:`hyperparameters`, the restart's learning rate (and PTB clipping
threshold); at scales with ``independent_draws`` a formal run's draws come from
(task, model, restart) instead (:func:`draw_seed`). ``data_seed`` fixes the training data and its order, shared by the
restarts and modes of one (task, model), which is what lets them train as one
replica-batched model (:func:`marnn.train.formal.train_formal`). The scale's
fields are part of the config, so changing a scale never reuses stale records.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from ..config import PROTOCOL, RunConfig
from ..paths import REPO
from ..scales import Scale

# Stream tags: which numpy stream a number comes from (never the global RNG).
_LR_STREAM = 1
_ORDER_STREAM = 2


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def hyperparameters(seed: int, lr_range: tuple[float, float], clip_range: tuple[float, float] | None = None) -> dict:
    """A restart's random hyperparameters, a pure function of its seed.

    ``lr`` is log-uniform in ``lr_range`` (docs: book/reference/training.md); for
    PTB ``clip`` is log-uniform in ``clip_range``, drawn second from the same
    stream. Restart ``s`` gets the same draws for every task and model.
    """
    rng = np.random.default_rng([int(seed), _LR_STREAM])
    out = {"lr": log_uniform(rng, *lr_range)}
    if clip_range is not None:
        out["clip"] = log_uniform(rng, *clip_range)
    return out


def draw_seed(config: dict) -> int:
    """The seed of a run's random draws: its initialisation and, through
    :func:`hyperparameters`, its learning rate.

    The restart index itself, unless the run's scale sets ``independent_draws``
    (formal runs at ``paper-2core`` and ``paper``): then a number derived from
    (task, model, restart) by SHA-256, so restart ``s`` of one language and model
    shares nothing with restart ``s`` of another, while the four freeze modes of
    one (task, model, restart) keep the same draws and stay paired.
    """
    seed = int(config["seed"])
    if not config.get("scale_fields", {}).get("independent_draws"):
        return seed
    text = f"{config['task']}\0{config['model']}\0{seed}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def epoch_order(data_seed: int, epoch: int, n: int) -> list[int]:
    """The training batch order of one epoch, shared by every replica."""
    return np.random.default_rng([int(data_seed), _ORDER_STREAM, int(epoch)]).permutation(n).tolist()


def scale_from_config(config: dict | RunConfig) -> Scale:
    """Rebuild the exact Scale a config was made with (:attr:`marnn.config.RunConfig.scale`)."""
    return RunConfig.from_dict(config).scale


def formal_config(task: str, model: str, freeze: str, seed: int, scale: str | Scale, data_seed: int = 0) -> dict:
    """Validate names and build the config of one formal-language run (:meth:`marnn.config.RunConfig.formal`)."""
    return RunConfig.formal(task, model, freeze, seed, scale, data_seed).to_dict()


def ptb_config(model: str, freeze: str, seed: int, scale: str | Scale, embedding_group: str | None = None,
               data_seed: int = 0) -> dict:
    """Validate names and build the config of one Penn Treebank run (:meth:`marnn.config.RunConfig.ptb`)."""
    return RunConfig.ptb(model, freeze, seed, scale, embedding_group, data_seed).to_dict()


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the checkout, or None outside one."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's HEAD commit (read-only), or None outside a git checkout."""
    return _git("rev-parse", "HEAD") or None


@lru_cache(maxsize=1)
def code_modified() -> bool | None:
    """Whether the package's tracked files differ from HEAD (the record then comes from
    code that no commit holds), or None outside a git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "marnn")
    return None if status is None else bool(status)


@lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), or None where it cannot be read: BLAS
    libraries pick their kernels by CPU, so the same seed can round differently on another one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return None


def environment(device) -> dict:
    """Where and with what a record was computed."""
    import pandas
    import torch

    from .. import __version__
    from ..kernels import backend, fused_lstm_numba

    return {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "marnn": __version__,
        "numba": fused_lstm_numba.numba.__version__ if fused_lstm_numba.AVAILABLE else None,
        "fused_backend": backend.FUSED_BACKEND,  # "auto": compiled loop where it applies
        "git_commit": git_commit(),
        "code_modified": code_modified(),
        "pid": os.getpid(),
    }


def progress_disabled(progress: bool) -> bool:
    """tqdm's ``disable``: off unless asked for, and always off under ``TQDM_DISABLE=1``."""
    return (not progress) or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false", "no")


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads and the BLAS threads NumPy calls (the fused kernels' CPU
    path multiplies with NumPy; its BLAS reads ``OPENBLAS_NUM_THREADS`` once at import and
    ignores torch's setting). 1 is much faster for the small formal models and avoids
    oversubscription when several workers share the cores: a PTB chunk's recurrence took
    ~25x the CPU time with BLAS on every core of a busy machine."""
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(int(threads))
        threadpool_limits(int(threads), user_api="blas")


# glibc's malloc parameters (malloc.h) and the values large_blocks_kept sets and restores
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_BLOCKS = 1 << 30  # allocations below this come from the heap and are reused, not mmap-ed afresh
_DEFAULT_MMAP, _DEFAULT_TRIM = 32 << 20, 64 << 20  # where glibc's dynamic thresholds end up


@lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # pragma: no cover - not glibc after all
        return None


@contextmanager
def large_blocks_kept():
    """Keep freed blocks up to :data:`KEPT_BLOCKS` in the process's heap while the block runs.

    glibc serves every allocation over its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so each one is page-faulted in (and zeroed by the
    kernel) again. A replica-batched PTB step allocates several such tensors per chunk
    (R = 8 lstm-256: the classifier's and the embedding's weight gradients, 80 MB each,
    and one replica's logits, 45 MB): 66,000 page faults and 0.2 s of system time per
    chunk, 10% of the step (R = 1: 12,000 and 12 ms). A formal group's step allocates
    fewer and smaller ones (its gates and their gradients, a few MB each), but the trim
    threshold returns them too: a jm-10 step of 20 replicas at n = 60 took ~550 page
    faults and 20-23 ms with glibc's defaults (what the grid's forked workers run with),
    ~5,000 and 32-33 ms with dask's ``MALLOC_TRIM_THRESHOLD_=65536``; with the blocks
    kept, 0 faults and 19-23 ms (benchmarks/page_faults.py). Raising the mmap and trim
    thresholds makes them reuse heap blocks (~3,000 faults per chunk). Afterwards the
    dynamic thresholds' final values are set and the free heap is trimmed. No effect
    other than on glibc (and results never depend on it)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BLOCKS)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * KEPT_BLOCKS - 1)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _env_int("MALLOC_MMAP_THRESHOLD_", _DEFAULT_MMAP))
            libc.mallopt(_M_TRIM_THRESHOLD, _env_int("MALLOC_TRIM_THRESHOLD_", _DEFAULT_TRIM))  # dask: 65536
            libc.malloc_trim(0)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def default_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["PROTOCOL", "formal_config", "ptb_config", "hyperparameters", "draw_seed", "epoch_order",
           "scale_from_config", "environment"]
