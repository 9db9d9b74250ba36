"""One line on stderr per finished epoch: how a run is going, kept in terminals and logs.

A Penn Treebank group writes one line per replica that trained in the epoch::

    ptb lstm-256 none seed 1 | epoch 3/6 | train ppl 245.31 | valid ppl 198.12 | lr 12.3 | 41.2 s | best

(``emb memory`` follows the mode when the embedding is not in the default
group; the last field, present only when it applies, is ``best`` for a new
best validation perplexity, ``early-stop`` when the replica stops there,
``pruned`` when a learning-rate search drops it there, or ``diverged``). A
formal-language group, often dozens of replicas, writes one line for all of
them::

    marked-copy jm-10 | epoch 3/100 | running 14/16 | valid acc best 0.9512 median 0.8810 | 2.1 s

``running k/R``: replicas still training after this epoch, out of the group;
best and median validation accuracy over the replicas that trained in it
(diverged ones left out); a group of one run names its mode and seed after the
model. A group that continues from a saved state (:mod:`marnn.train.resume`)
first says so: ``ptb lstm-256 none seed 1 | resumed after epoch 3``. Inside a
PTB epoch (~10-50 minutes on the whole stream) a group also says how far it is,
each tenth of the epoch's chunks::

    ptb rns-4-5 x2 | epoch 2/3 | chunk 249/830 | 15.2 min

The lines go through ``tqdm.write`` to ``sys.stderr``, so they do not break an
active progress bar; a group trained by a dask worker sends them to the
process that started the grid (:func:`emit`), which writes them to its
stderr. They are off unless the caller asks (``epoch_lines=True`` in
:func:`marnn.train.formal.train_formal` / :func:`marnn.train.ptb.train_ptb`;
the ``marnn`` commands and :func:`marnn.grid.run_grid` ask unless ``--quiet``
/ ``progress=False``), and always off under ``TQDM_DISABLE=1``.
:func:`parse` reads a line back into a dict.
"""
from __future__ import annotations

import re
import statistics
import sys

from ..config import RunConfig
from ..registry import DEFAULT_EMBEDDING_GROUP
from . import progress_disabled

NOTES = ("best", "early-stop", "pruned", "diverged")


def lines_enabled(asked: bool) -> bool:
    """Whether to write epoch lines: asked for, and not under ``TQDM_DISABLE=1``."""
    return not progress_disabled(asked)


TOPIC = "marnn-epoch-lines"  # the dask event topic that carries the lines of grid workers


def write(line: str) -> None:
    """Write one line to stderr (above any active tqdm bar)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _dask_worker():
    """The dask worker running this code, or None (not imported: not a worker)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def emit(line: str) -> None:
    """Write one line to stderr; in a dask worker, send it to the process that started
    the grid instead (event topic :data:`TOPIC`, which :func:`marnn.grid.run_grid`
    writes to its own stderr, above its bar, wherever the worker runs; with no
    subscriber the lines stay in the scheduler's event log, ``client.get_events(TOPIC)``)."""
    worker = _dask_worker()
    if worker is not None:
        worker.log_event(TOPIC, line)
    else:
        write(line)


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _run_name(config: dict) -> str:
    """``mode seed S`` (``mode emb GROUP seed S`` outside the default embedding group)."""
    group = config.get("embedding_group")
    emb = f" emb {group}" if group not in (None, DEFAULT_EMBEDDING_GROUP) else ""
    return f"{config['freeze']}{emb} seed {config['seed']}"


def group_name(configs: list[dict]) -> str:
    """``ptb MODEL`` or ``TASK MODEL``, then the run (mode, seed) for a group of one, else ``xR``."""
    first = configs[0]
    head = f"{RunConfig.from_dict(first).corpus} {first['model']}"
    return f"{head} {_run_name(first)}" if len(configs) == 1 else f"{head} x{len(configs)}"


def ptb_line(config: dict, epoch: int, max_epochs: int, row: dict, note: str = "") -> str:
    """The line of one PTB run after ``epoch``; ``row``: its curve row of that epoch."""
    parts = [f"ptb {config['model']} {_run_name(config)}", f"epoch {epoch}/{max_epochs}",
             f"train ppl {_f(row.get('train_perplexity'), '.2f')}",
             f"valid ppl {_f(row.get('valid_perplexity'), '.2f')}",
             f"lr {_f(row.get('lr'), '.4g')}", f"{_f(row.get('seconds'), '.1f')} s"]
    return " | ".join(parts + ([note] if note else []))


def formal_line(configs: list[dict], epoch: int, max_epochs: int, running: int, accuracies: list[float],
                seconds: float) -> str:
    """The line of a formal-language group after ``epoch``."""
    first = configs[0]
    name = f"{first['task']} {first['model']}" + (f" {_run_name(first)}" if len(configs) == 1 else "")
    accs = sorted(a for a in accuracies if a is not None)
    stats = (f"valid acc best {accs[-1]:.4f} median {statistics.median(accs):.4f}" if accs
             else "valid acc best - median -")
    return " | ".join([name, f"epoch {epoch}/{max_epochs}", f"running {running}/{len(configs)}", stats,
                       f"{seconds:.1f} s"])


def chunk_line(configs: list[dict], epoch: int, max_epochs: int, chunk: int, n_chunks: int, seconds: float) -> str:
    """The line of a PTB group inside ``epoch``: ``chunk`` of its ``n_chunks`` training chunks done,
    ``seconds`` (wall) into the epoch."""
    return " | ".join([group_name(configs), f"epoch {epoch}/{max_epochs}", f"chunk {chunk}/{n_chunks}",
                       f"{seconds / 60:.1f} min"])


def resumed_line(configs: list[dict], epoch: int) -> str:
    return f"{group_name(configs)} | resumed after epoch {epoch}"


def resumed(configs: list[dict], epoch: int) -> None:
    """Emit the line of a group that continues from its state saved after ``epoch``."""
    emit(resumed_line(configs, epoch))


def ptb_epoch(configs: list[dict], tracker, trained: list[int], curves: list[list[dict]], epoch: int,
              max_epochs: int) -> None:
    """Emit the lines of the replicas ``trained`` in ``epoch`` (after ``tracker.end_epoch``)."""
    for r in trained:
        status = tracker.status[r]
        note = (status if status in ("diverged", "pruned") else "best" if tracker.best_epoch[r] == epoch
                else "early-stop" if status == "early-stop" else "")
        emit(ptb_line(configs[r], epoch, max_epochs, curves[r][-1], note))


def formal_epoch(configs: list[dict], tracker, trained: list[int], curves: list[list[dict]], epoch: int,
                 max_epochs: int, seconds: float) -> None:
    """Emit the line of a formal group after ``epoch`` (after ``tracker.end_epoch``)."""
    accs = [curves[r][-1]["valid_accuracy"] for r in trained if tracker.status[r] != "diverged"]
    emit(formal_line(configs, epoch, max_epochs, len(tracker.running()), accs, seconds))


# ---- reading lines back ---------------------------------------------------------------------------
_NUM = r"(?:-|[-+0-9.eE]+|inf|nan)"
_PTB = re.compile(
    rf"^ptb (?P<model>\S+) (?P<mode>\S+)(?: emb (?P<embedding_group>\S+))? seed (?P<seed>\d+)"
    rf" \| epoch (?P<epoch>\d+)/(?P<max_epochs>\d+) \| train ppl (?P<train_perplexity>{_NUM})"
    rf" \| valid ppl (?P<valid_perplexity>{_NUM}) \| lr (?P<lr>{_NUM}) \| (?P<seconds>{_NUM}) s"
    rf"(?: \| (?P<note>{'|'.join(NOTES)}))?$")
_FORMAL = re.compile(
    rf"^(?P<task>\S+) (?P<model>\S+)(?: (?P<mode>\S+)(?: emb \S+)? seed (?P<seed>\d+))?"
    rf" \| epoch (?P<epoch>\d+)/(?P<max_epochs>\d+) \| running (?P<running>\d+)/(?P<replicas>\d+)"
    rf" \| valid acc best (?P<best_accuracy>{_NUM}) median (?P<median_accuracy>{_NUM}) \| (?P<seconds>{_NUM}) s$")
_RESUMED = re.compile(r"^(?P<group>.+) \| resumed after epoch (?P<epoch>\d+)$")
_CHUNK = re.compile(rf"^(?P<group>.+) \| epoch (?P<epoch>\d+)/(?P<max_epochs>\d+) \| chunk (?P<chunk>\d+)"
                    rf"/(?P<chunks>\d+) \| (?P<minutes>{_NUM}) min$")
_INTS = ("seed", "epoch", "max_epochs", "running", "replicas", "chunk", "chunks")


def _value(key: str, text: str | None):
    if text is None or key in ("model", "mode", "task", "note", "embedding_group", "group"):
        return text
    if key in _INTS:
        return int(text)
    return None if text == "-" else float(text)


def parse(line: str) -> dict | None:
    """A line of this module as a dict (``kind``: "ptb", "formal", "chunk" or "resumed"; numbers
    as numbers, "-" as None); None for any other text."""
    line = line.rstrip("\n")
    for kind, pattern in (("ptb", _PTB), ("formal", _FORMAL), ("chunk", _CHUNK), ("resumed", _RESUMED)):
        m = pattern.match(line)
        if m:
            return {"kind": kind, **{k: _value(k, v) for k, v in m.groupdict().items()}}
    return None
