"""The result store: one small JSON record per run, keyed by a hash of its config.

Layout (see ``results/README.md``)::

    <root>/formal/<scale>/<task>/<model>/<freeze>-s<seed>-<key>.json
    <root>/ptb/<scale>/<model>/<freeze>-<embedding_group>-s<seed>-<key>.json

``key`` = the first 16 hex digits of the SHA-256 of the config as canonical
JSON (sorted keys, no spaces), so a record is found from its config alone and
two configs never share a file. ``root`` is ``--results DIR``, else the
``MARNN_RESULTS`` environment variable, else ``<repo>/results``.

Writes are atomic: the record goes to a temporary file in the same folder,
is flushed and fsync'ed, then ``os.replace``-d onto its name, so a run killed
at any moment leaves either no record or a complete one. A temporary file is
named after its owner, ``.<stem>~<host>~<pid>~<random>.tmp``, and
:func:`clean_stale` removes it only once that owner is gone (see
:func:`owner_alive`), never while another grid is writing it. Files are
created with mode ``0o666`` minus the umask, so a store shared by a group
stays readable (and writable) as the umask says.

Claims (see :func:`claim` and :func:`hold`): before training a run, a process
claims it with a lock file next to its record, ``.<stem>.lock``, created with
``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and holding its host, pid and
process start time. Another process that finds the lock skips the run (or
waits for it); the lock is *stale*, and may be taken over, only when its
owner is gone: on the same host, when that pid no longer runs (or now belongs
to a process started at another time); from another host, when the lock has
not been refreshed for :data:`LEASE_STALE_S` seconds (a holder refreshes its
locks every :data:`LEASE_REFRESH_S` seconds). Taking over a stale lock is
itself serialised by a short-lived ``.<stem>.lock.break`` file, so two
processes never both take it.

Every read checks the record against the schema (:func:`problems`); an
invalid record is moved to ``<root>/invalid/<its path>`` with a
``.reason.txt`` next to it, a one-line warning goes to the process's stderr
(the terminal, also from a notebook kernel), and the run counts as missing,
so the next grid retrains it.

Record schema (formal; PTB has ``valid``/``test`` perplexities and no bins)::

    config        the run's config (marnn.train.formal_config / ptb_config)
    key           hash of config
    seed, lr, final_lr, clip
    status        "early-stop" | "max-epochs" | "diverged" | "pruned" (stopped by a
                  learning-rate search, marnn.grid.ptb_search)
    diverged      null, or {"epoch", "step", "where", "value"}
    epochs, best_epoch, steps
    valid         {"cross_entropy", "lower_bound", "ce_diff", "perplexity", "accuracy"}
    bins          {bin: {"lo", "hi", "strings", "symbols", "accuracy", "cross_entropy",
                         "perplexity", "lower_bound", "ce_diff", "ceiling_accuracy",
                         "ceiling_exact", "chance_accuracy", "chance_cross_entropy",
                         "most-frequent_accuracy", "most-frequent_cross_entropy",
                         "repeat-previous_accuracy"}}
    lengths       [{"bin", "length", "strings", "symbols", "accuracy", "cross_entropy",
                    "perplexity", "lower_bound", "ce_diff"}, ...]
    untrained_lengths  the same rows for the run's model at its initial weights (the
                  untrained reference of marnn.analysis.stability); absent from records
                  made before the trainer kept it, whose references the page computes
    curve         [{"epoch", "lr", "train_cross_entropy", "valid_cross_entropy",
                    "valid_ce_diff", "valid_accuracy", "seconds"}, ...]
    num_parameters, trainable_parameters
    group         {"replicas", "wall_time_s", "cpu_time_s", "members"}: the batch it trained in
    wall_time_s   the group's wall time divided by its replicas
    env           {"device", "cpu", "cpu_model", "torch_threads", "python", "torch", "numpy",
                   "pandas", "numba", "marnn", "fused_backend", "git_commit",
                   "code_modified", ...} (``cpu_model`` absent in records made before
                   the trainer kept it)
    created       UTC timestamp

Formal runs trained by the grid also keep their selected (best-on-validation)
weights beside the record, ``<same name>.pt`` (:func:`save_weights`,
:func:`load_weights`); the weights are written before the record, so a record
whose run kept weights never lacks them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

from .config import RunConfig, config_key, record_relpath
from .config import canonical as canonical  # noqa: F401  (marnn.store.canonical: the form keys hash)
from .paths import RESULTS_ENV, results_dir

ENV_VAR = RESULTS_ENV
Config = dict | RunConfig  # a run's config: its dict form (as records store it) or the typed one
C = TypeVar("C", dict, RunConfig)
REQUIRED = ("config", "key", "status", "created", "env", "curve")
INVALID_DIR = "invalid"  # <root>/invalid/: records that failed the schema, with the reason
LEASE_REFRESH_S = 60.0  # a holder touches its lock files this often
LEASE_STALE_S = 600.0  # a lock from another host not touched for this long is stale
BREAK_STALE_S = 60.0  # a .lock.break file (held for milliseconds) older than this is stale


def record_path(config: Config, root: str | os.PathLike | None = None) -> Path:
    """Where the record of ``config`` lies in the store ``root`` (:func:`marnn.config.record_relpath`)."""
    if isinstance(config, RunConfig):
        return config.path(root)
    return results_dir(root) / record_relpath(config)


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _inline(x) -> str:
    return json.dumps(x, default=_json_default, allow_nan=False)


def dumps(record: dict) -> str:
    """Readable JSON: top-level fields one per line, nested dicts indented, lists of
    rows one row per line, everything smaller inline."""

    def block(obj, depth: int) -> str:
        pad, inner = " " * depth, " " * (depth + 1)
        if isinstance(obj, dict) and depth < 2 and obj:
            items = [f"{inner}{json.dumps(k)}: {block(v, depth + 1)}" for k, v in obj.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
            return "[\n" + ",\n".join(inner + _inline(v) for v in obj) + "\n" + pad + "]"
        return _inline(obj)

    return block(record, 0)


def atomic_write(path: Path, write) -> Path:
    """``write(tmp)`` fills a temporary file in ``path``'s folder, which then replaces
    ``path`` in one step (``os.replace``): readers see the old file or the new one,
    never a partial one, and a failure leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / f".{path.stem}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp")
        try:  # 0o666 minus the umask (mkstemp would force 0o600)
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _write_synced(tmp: str, text: str) -> None:
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_record(record: dict, root: str | os.PathLike | None = None) -> Path:
    """Write ``record`` atomically to its place; returns the path."""
    record = dict(record)
    record["key"] = config_key(record["config"])
    text = dumps(record) + "\n"
    return atomic_write(record_path(record["config"], root), lambda tmp: _write_synced(tmp, text))


# ---- kept weights ------------------------------------------------------------------
def weights_path(config: Config, root: str | os.PathLike | None = None) -> Path:
    """Where a run's selected weights lie: beside its record, ``.pt`` for ``.json``."""
    return record_path(config, root).with_suffix(".pt")


def save_weights(config: Config, state: dict, root: str | os.PathLike | None = None) -> Path:
    """Write one run's weights (``{parameter name: tensor}`` of a one-replica model,
    without the replica axis) atomically beside its record."""
    import torch

    obj = {"key": config_key(config), "state": {n: t.detach().cpu().contiguous().clone() for n, t in state.items()}}
    return atomic_write(weights_path(config, root), lambda tmp: torch.save(obj, tmp))


def load_weights(config: Config, root: str | os.PathLike | None = None) -> dict | None:
    """The weights :func:`save_weights` kept for ``config``, or None when there are none.

    Read with ``weights_only=True`` (a file that would run code is refused); a
    file that is not what :func:`save_weights` writes, or belongs to another
    config, is moved aside like an invalid record (:func:`quarantine`)."""
    import pickle

    import torch

    path = weights_path(config, root)
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = f"not a weights file ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    else:
        ok = (isinstance(obj, dict) and obj.get("key") == config_key(config) and isinstance(obj.get("state"), dict)
              and all(isinstance(n, str) and isinstance(t, torch.Tensor) for n, t in obj["state"].items()))
        if ok:
            return obj["state"]
        reason = "not the weights of this run's config"
    quarantine(path, reason, still_bad=Path.exists)
    return None


# ---- the record schema ----------------------------------------------------------
STATUSES = ("early-stop", "max-epochs", "diverged", "pruned")
KIND_FIELDS = {"formal": ("valid", "bins", "lengths"), "ptb": ("valid", "test")}
COUNT_FIELDS = ("lo", "hi", "strings", "symbols", "tokens", "length", "epoch")


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _metric_problem(name: str, v) -> str | None:
    """The range rule of a metric, by its name (None: fine). Metrics may be null
    (not computed, e.g. an empty bin or a diverged run)."""
    if name == "exact" or name.endswith("_exact"):
        return None if isinstance(v, bool) else f"{name} must be true or false, got {v!r}"
    if name in COUNT_FIELDS:
        return None if _is_int(v) and v >= 0 else f"{name} must be an integer >= 0, got {v!r}"
    if name == "bin":
        return None if isinstance(v, str) else f"{name} must be a string, got {v!r}"
    if v is None:
        return None
    if not _is_num(v) or not math.isfinite(v):
        return f"{name} must be a finite number or null, got {v!r}"
    if name.endswith("accuracy") and not 0 <= v <= 1:
        return f"{name} must be a probability in [0, 1], got {v!r}"
    if (name.endswith("cross_entropy") or name.endswith("lower_bound")) and v < 0:
        return f"{name} must be a cross-entropy >= 0, got {v!r}"
    if name.endswith("perplexity") and v < 1:
        return f"{name} must be a perplexity >= 1, got {v!r}"
    if name in ("lr", "seconds") and v < 0:
        return f"{name} must be >= 0, got {v!r}"
    return None


def _metrics_problem(where: str, d, required: tuple[str, ...] = ()) -> str | None:
    if not isinstance(d, dict):
        return f"{where} must be an object, got {type(d).__name__}"
    for k in required:
        if k not in d:
            return f"{where} lacks {k!r}"
    for k, v in d.items():
        err = _metric_problem(k, v)
        if err:
            return f"{where}: {err}"
    return None


def problems(rec: object, path: str | os.PathLike | None = None) -> str | None:
    """Why ``rec`` is not a valid record (the first problem found), or None.

    The schema (``results/README.md``): every field of :data:`REQUIRED` and of
    the record's kind (:data:`KIND_FIELDS`), with their types; ``config`` a valid
    :class:`marnn.config.RunConfig` (:meth:`~marnn.config.RunConfig.from_dict`); ``key`` is the
    hash of ``config`` (and matches the file name when ``path`` is given);
    probabilities (``*accuracy``) in [0, 1]; cross-entropies and lower bounds
    finite and >= 0; perplexities >= 1; counts integers >= 0; every metric a
    finite number or null (never a string, never a boolean); flags
    (``exact``, ``*_exact``) booleans; ``status`` one of :data:`STATUSES`, and
    ``diverged`` set exactly when the status says so. Unknown extra fields are
    kept as they are (any JSON type).
    """
    if not isinstance(rec, dict):
        return f"a record must be a JSON object, got {type(rec).__name__}"
    cfg = rec.get("config")
    if not isinstance(cfg, dict) or cfg.get("kind") not in KIND_FIELDS:
        return "config missing or of unknown kind (valid kinds: formal, ptb)"
    try:  # the registry's names, seeds in range, exactly the fields of its kind
        RunConfig.from_dict(cfg)
    except ValueError as bad:
        return f"config: {bad}"
    kind = cfg["kind"]
    for k in REQUIRED + ("seed", "lr", "final_lr", "clip", "diverged", "epochs", "best_epoch", "steps",
                         "num_parameters", "trainable_parameters", "group", "wall_time_s") + KIND_FIELDS[kind]:
        if k not in rec:
            return f"missing field {k!r}"
    if rec["key"] != config_key(cfg):
        return f"key {rec['key']!r} is not the hash of its config ({config_key(cfg)})"
    if path is not None and Path(path).name != record_path(cfg, "/").name:
        return f"file name does not match its config (expected {record_path(cfg, '/').name})"
    if rec["seed"] != cfg["seed"]:
        return f"seed {rec['seed']!r} differs from config.seed {cfg['seed']!r}"
    if rec["status"] not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}, got {rec['status']!r}"
    div = rec["diverged"]
    if (rec["status"] == "diverged") != (div is not None):
        return f"status {rec['status']!r} does not agree with diverged={div!r}"
    if div is not None and (not isinstance(div, dict)
                            or any(k not in div for k in ("epoch", "step", "where", "value"))):
        return f"diverged must be null or {{epoch, step, where, value}}, got {div!r}"
    for k in ("lr", "final_lr", "clip", "wall_time_s"):
        if not _is_num(rec[k]) or not math.isfinite(rec[k]) or rec[k] < 0:
            return f"{k} must be a finite number >= 0, got {rec[k]!r}"
    for k in ("epochs", "steps", "num_parameters", "trainable_parameters"):
        if not _is_int(rec[k]) or rec[k] < 0:
            return f"{k} must be an integer >= 0, got {rec[k]!r}"
    if rec["best_epoch"] is not None and (not _is_int(rec["best_epoch"]) or rec["best_epoch"] < 1):
        return f"best_epoch must be null or an integer >= 1, got {rec['best_epoch']!r}"
    if rec["trainable_parameters"] > rec["num_parameters"]:
        return "trainable_parameters exceeds num_parameters"
    for k, typ in (("env", dict), ("group", dict), ("curve", list), ("created", str)):
        if not isinstance(rec[k], typ):
            return f"{k} must be a {'JSON object' if typ is dict else typ.__name__}, got {type(rec[k]).__name__}"
    g = rec["group"]
    if not _is_int(g.get("replicas")) or g["replicas"] < 1:
        return f"group.replicas must be an integer >= 1, got {g.get('replicas')!r}"
    for i, row in enumerate(rec["curve"]):
        err = _metrics_problem(f"curve[{i}]", row, ("epoch",))
        if err:
            return err
    if kind == "formal":
        err = _metrics_problem("valid", rec["valid"], ("cross_entropy", "lower_bound", "ce_diff", "perplexity",
                                                       "accuracy"))
        if err:
            return err
        bins = rec["bins"]
        if not isinstance(bins, dict) or not bins:
            return "bins must be a non-empty object"
        names = cfg["scale_fields"].get("test_bins") if isinstance(cfg["scale_fields"], dict) else None
        if names is not None and len(bins) != len(names):
            return f"bins holds {len(bins)} bins, the scale has {len(names)}"
        for name, b in bins.items():
            err = _metrics_problem(f"bins.{name}", b, ("lo", "hi", "strings", "symbols", "accuracy", "cross_entropy",
                                                       "perplexity"))
            if err:
                return err
        # untrained_lengths is optional (records made before the trainer kept it lack it)
        for field in ("lengths", "untrained_lengths") if "untrained_lengths" in rec else ("lengths",):
            if not isinstance(rec[field], list):
                return f"{field} must be a list"
            for i, row in enumerate(rec[field]):
                err = _metrics_problem(f"{field}[{i}]", row, ("bin", "length", "accuracy", "cross_entropy"))
                if err:
                    return err
                if row["bin"] not in bins:
                    return f"{field}[{i}].bin {row['bin']!r} is not one of the bins"
    else:
        for split in ("valid", "test"):
            err = _metrics_problem(split, rec[split], ("cross_entropy", "perplexity"))
            if err:
                return err
    if rec["status"] != "diverged" and rec["valid"].get("cross_entropy") is None:
        return "valid.cross_entropy is null but the run did not diverge"
    return None


def is_complete(record: object, config: dict | None = None) -> bool:
    """A record that passes the schema (and has the right config, if given)."""
    if problems(record) is not None:
        return False
    return config is None or cast(dict, record)["key"] == config_key(config)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def say(message: str) -> None:
    """One line on this process's stderr, at the file-descriptor level: the terminal
    for the CLI, and for a notebook run by papermill the kernel's stderr (which
    ipykernel echoes to the terminal that started it, and to the notebook)."""
    line = (" ".join(str(message).split()) + "\n").encode("utf-8", "replace")
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        os.write(2, line)
    except OSError:
        pass


def _store_root(path: Path) -> Path | None:
    """The store a record file belongs to (from the layout), or None."""
    p = path.resolve() if not path.is_absolute() else path
    for depth, kind in ((4, "formal"), (3, "ptb")):
        if len(p.parents) > depth and p.parents[depth - 1].name == kind:
            return p.parents[depth]
    return None


def _still_invalid(path: Path) -> bool:
    try:
        return problems(json.loads(path.read_text(), parse_constant=_no_constants), path) is not None
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True


def quarantine(path: Path, reason: str, root: Path | None = None, *, still_bad=_still_invalid) -> Path | None:
    """Move an invalid record (or weights file) to ``<root>/invalid/<its path>`` with
    ``<name>.reason.txt`` beside it and say so in one line; returns where it went,
    or None when it stays (another live process holds its claim, or it vanished).

    Under the claim the file is checked again (``still_bad(path)``), so a record
    that its owner rewrote meanwhile is never moved."""
    path = Path(path)
    root = root if root is not None else _store_root(path)
    where = f"{path}: {reason}"
    if root is None:
        say(f"marnn: warning: ignoring invalid record {where}")
        return None
    with _claim_path(_lock_path(path)) as lease:
        if lease is None or not still_bad(path):  # being rewritten by its owner, or already was
            return None
        try:
            rel = path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            rel = Path(path.name)
        dest = Path(root) / INVALID_DIR / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest = dest.with_name(f"{dest.name}.{datetime.now(UTC):%Y%m%dT%H%M%S}.{secrets.token_hex(2)}")
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return None
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        atomic_write(dest.with_name(dest.name + ".reason.txt"),
                     lambda tmp: _write_synced(
                         tmp, f"{reason}\nmoved from {path} at {stamp} by {_HOST} pid {os.getpid()}\n"))
    say(f"marnn: warning: invalid record moved aside, it will be retrained: {where} -> {dest}")
    return dest


def read_record(path: str | os.PathLike, *, move_invalid: bool = True) -> dict | None:
    """A valid record from ``path``, or None (missing, unreadable or failing the schema).

    A file that exists but is not a valid record is moved aside
    (:func:`quarantine`) unless ``move_invalid`` is False; either way a
    one-line warning goes to stderr."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        say(f"marnn: warning: ignoring unreadable record {path}: {err}")
        return None
    try:
        rec = json.loads(text, parse_constant=_no_constants)
        reason = problems(rec, path)
    except ValueError as err:
        rec, reason = None, f"not valid JSON ({err})"
    if reason is None:
        return rec
    if move_invalid:
        quarantine(path, reason)
    else:
        say(f"marnn: warning: ignoring invalid record {path}: {reason}")
    return None


def load_record(config: Config, root: str | os.PathLike | None = None) -> dict | None:
    rec = read_record(record_path(config, root))
    return rec if rec is not None and rec["key"] == config_key(config) else None


def missing(configs: Iterable[C], root: str | os.PathLike | None = None) -> list[C]:
    """The configs that have no valid record yet (invalid ones are moved aside)."""
    return [c for c in configs if load_record(c, root) is None]


def iter_records(root: str | os.PathLike | None = None, scale: str | None = None) -> Iterator[tuple[Path, dict]]:
    """Every valid record under ``root`` (temporary, lock and ``invalid/`` files skipped; an invalid
    record is moved aside, :func:`read_record`); with ``scale``, only the records of that scale
    (``<root>/<kind>/<scale>/``, :func:`record_path`)."""
    root = results_dir(root)
    for kind in KIND_FIELDS:
        for path in sorted((root / kind if scale is None else root / kind / scale).rglob("*.json")):
            if path.name.startswith("."):
                continue
            rec = read_record(path)
            if rec is not None:
                yield path, rec


# ---- may a reader train what is missing? ------------------------------------------------------
NO_TRAIN_ENV = "MARNN_PAGES_READ_ONLY"  # "1": the pages read the store and train nothing (set by `make book`)


def may_train() -> bool:
    """Whether a page may train its missing runs: yes, unless ``$MARNN_PAGES_READ_ONLY`` is 1
    (``marnn.book execute`` sets it for the scales whose runs take hours, so ``make book``
    shows a missing cell as not trained yet instead of training it)."""
    return os.environ.get(NO_TRAIN_ENV, "") not in ("1", "true", "yes")


# ---- claims: lock files that die with their process -------------------------------
_HOST = socket.gethostname().replace("~", "-").replace("/", "-") or "localhost"
_HELD: dict[str, Lease] = {}
_HELD_LOCK = threading.Lock()
_HEARTBEAT: threading.Thread | None = None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


_MY_START = _start_time(os.getpid())


def owner_alive(host: str, pid: int, start: str | None = None, mtime: float | None = None) -> bool:
    """Whether the owner of a lock or temporary file may still be running.

    Same host: its pid runs (not a zombie, and, where known, started at
    ``start``). Other
    host: the file was touched less than :data:`LEASE_STALE_S` seconds ago."""
    if host != _HOST:
        return mtime is not None and time.time() - mtime < LEASE_STALE_S
    if pid == os.getpid():
        return start is None or _MY_START is None or start == _MY_START
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    except (OSError, OverflowError):
        return False
    fields = _proc_stat(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):
            return False  # killed, not yet reaped by its parent
        if start is not None and len(fields) > 19 and fields[19] != start:
            return False  # the pid was reused
    return True


class Lease:
    """A held claim (a lock file); :meth:`release` removes it."""

    def __init__(self, path: Path):
        self.path = path

    def refresh(self) -> None:
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self) -> None:
        with _HELD_LOCK:
            _HELD.pop(str(self.path), None)
        try:
            info = _read_lock(self.path)
            if info is not None and info.get("host") == _HOST and info.get("pid") == os.getpid():
                os.unlink(self.path)
        except OSError:
            pass


def _lock_path(record: Path) -> Path:
    return record.with_name(f".{record.stem}.lock")


def _read_lock(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        info["mtime"] = path.stat().st_mtime
        return info if isinstance(info, dict) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return {"host": "?", "pid": -1, "mtime": 0.0}  # torn or foreign: stale


def lock_holder(path: Path) -> dict | None:
    """The live owner of a lock file (host, pid, ...), or None (no lock, or a stale one)."""
    info = _read_lock(path)
    if info is None:
        return None
    if info.get("host") == "?":
        try:
            info["mtime"] = path.stat().st_mtime
        except OSError:
            return None
        # a lock being written right now is torn for a moment: give it a few seconds
        return info if time.time() - info["mtime"] < 5 else None
    alive = owner_alive(str(info.get("host")), int(info.get("pid", -1)), info.get("start"), info.get("mtime"))
    return info if alive else None


def _heartbeat() -> None:
    while True:
        time.sleep(LEASE_REFRESH_S)
        with _HELD_LOCK:
            leases = list(_HELD.values())
        for lease in leases:
            lease.refresh()


def _break_stale(lock: Path) -> None:
    """Remove ``lock`` if it is stale, serialised by ``<lock>.break``."""
    brk = lock.with_name(lock.name + ".break")
    for _ in range(2):
        try:
            os.close(os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            try:
                if time.time() - brk.stat().st_mtime > BREAK_STALE_S:
                    os.unlink(brk)  # its breaker died mid-break
                    continue
            except OSError:
                pass
            return
        except OSError:
            return
        try:
            if lock_holder(lock) is None:  # still stale, now that only we may break it
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass
        finally:
            try:
                os.unlink(brk)
            except OSError:
                pass
        return


def _try_claim(lock: Path) -> Lease | None:
    global _HEARTBEAT
    with _HELD_LOCK:
        if str(lock) in _HELD:
            return None  # held by this process already
    info = json.dumps({"host": _HOST, "pid": os.getpid(), "start": _MY_START,
                       "created": datetime.now(UTC).isoformat(timespec="seconds")})
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if attempt == 0 and lock_holder(lock) is None:
                _break_stale(lock)
                continue
            return None
        with os.fdopen(fd, "w") as f:
            f.write(info)
            f.flush()
            os.fsync(f.fileno())
        lease = Lease(lock)
        with _HELD_LOCK:
            _HELD[str(lock)] = lease
            if _HEARTBEAT is None or not _HEARTBEAT.is_alive():
                _HEARTBEAT = threading.Thread(target=_heartbeat, name="marnn-lease-heartbeat", daemon=True)
                _HEARTBEAT.start()
        return lease
    return None


@contextlib.contextmanager
def _claim_path(lock: Path):
    """Hold ``lock`` for the block (yields the Lease, or None if another live process
    holds it); a lock this process already holds counts as held by us."""
    with _HELD_LOCK:
        mine = str(lock) in _HELD
    if mine:
        yield _HELD[str(lock)]
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    lease = _try_claim(lock)
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


def claim(config: Config, root: str | os.PathLike | None = None) -> Lease | None:
    """Claim the run of ``config`` for training: a Lease, or None when another live
    process (or this one) holds it. Release with ``lease.release()``."""
    path = record_path(config, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _try_claim(_lock_path(path))


def claimed_elsewhere(config: Config, root: str | os.PathLike | None = None) -> bool:
    """Whether a live process other than this one holds the claim on ``config``."""
    lock = _lock_path(record_path(config, root))
    with _HELD_LOCK:
        if str(lock) in _HELD:
            return False
    return lock_holder(lock) is not None


@contextlib.contextmanager
def hold(configs: Iterable[Config], root: str | os.PathLike | None = None, *, wait: bool = False,
         poll_s: float = 0.5):
    """Claim every config it can (all of them, waiting, with ``wait``); yields the
    claimed configs and releases them at the end of the block."""
    leases, got = [], []
    try:
        for c in configs:
            lease = claim(c, root)
            if lease is None and wait and str(_lock_path(record_path(c, root))) in _HELD:
                raise RuntimeError(f"this process already holds the claim on {record_path(c, root)}")
            while lease is None and wait:
                time.sleep(poll_s)
                lease = claim(c, root)
            if lease is not None:
                leases.append(lease)
                got.append(c)
        yield got
    finally:
        for lease in leases:
            lease.release()


def clean_stale(root: str | os.PathLike | None = None) -> int:
    """Remove temporary and lock files whose owner is gone (:func:`owner_alive`);
    returns how many. Another live process's files are never touched."""
    n = 0
    root = results_dir(root)
    if not root.is_dir():
        return 0
    for path in root.rglob(".*.tmp"):
        parts = path.name[:-len(".tmp")].split("~")
        try:
            st = path.stat()
        except OSError:
            continue
        if len(parts) >= 4 and parts[-2].isdigit():
            alive = owner_alive(parts[-3], int(parts[-2]), None, st.st_mtime)
        else:  # an older temp name without its owner: stale once untouched for a lease's time
            alive = time.time() - st.st_mtime < LEASE_STALE_S
        if not alive:
            try:
                path.unlink()
                n += 1
            except OSError:
                pass
    for lock in root.rglob(".*.lock"):
        if lock_holder(lock) is None and lock.exists():
            _break_stale(lock)
            n += not lock.exists()
    return n

ID_COLUMNS = ["key", "kind", "scale", "task", "model", "freeze", "seed", "embedding_group", "data_seed",
              "status", "diverged"]


def _ids(rec: dict) -> dict:
    c = RunConfig.from_dict(rec["config"])
    return {
        "key": rec["key"], "kind": c.kind, "scale": c.scale_name, "task": c.corpus,
        "model": c.model, "freeze": c.freeze, "seed": c.seed,
        "embedding_group": c.embedding_group, "data_seed": c.data_seed,
        "status": rec["status"], "diverged": rec.get("diverged") is not None,
    }


def record_rows(rec: dict) -> list[dict]:
    """Tidy rows of one record: one per (split, length, metric); boolean flags such as
    ``ceiling_exact`` become rows with value 1.0 (true) or 0.0 (false)."""
    ids = _ids(rec)
    rows = []

    def add(split, length, metrics: dict):
        for m, v in metrics.items():
            if m in ("lo", "hi", "bin", "length"):
                continue
            if isinstance(v, bool):  # flags (ceiling_exact) survive as 1.0 / 0.0
                v = float(v)
            if isinstance(v, (int, float)) or v is None:
                rows.append({**ids, "split": split, "length": length, "metric": m,
                             "value": float("nan") if v is None else float(v)})

    add("valid", None, rec.get("valid", {}))
    if "test" in rec:
        add("test", None, rec["test"])
    for name, metrics in rec.get("bins", {}).items():
        add(name, None, metrics)
    for row in rec.get("lengths", []):
        add(row["bin"], row["length"], row)
    add("run", None, {"epochs": rec.get("epochs"), "wall_time_s": rec.get("wall_time_s"), "lr": rec.get("lr"),
                      "clip": rec.get("clip"), "trainable_parameters": rec.get("trainable_parameters")})
    return rows


def load_frame(root: str | os.PathLike | None = None, *, lengths: bool = True):
    """Every record under ``root`` as one tidy DataFrame.

    One row per run x split x metric (``length`` NaN), plus, with ``lengths``,
    one row per run x length x metric (``split`` is the length's bin). Splits:
    ``valid``, ``test`` (PTB), the bins (``bin0`` ...), and ``run`` (epochs,
    wall time, lr, ...). Column ``best`` marks the best restart of each
    (kind, scale, task, model, freeze, embedding group): lowest validation
    cross-entropy among runs that did not diverge (docs: book/reference/training.md, best of restarts
    by validation cross-entropy difference / perplexity).
    """
    import pandas as pd

    rows: list[dict] = []
    for _, rec in iter_records(root):
        rows.extend(r for r in record_rows(rec) if lengths or r["length"] is None)
    cols = ID_COLUMNS + ["split", "length", "metric", "value", "best"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    df["length"] = df["length"].astype("float64")
    df["best"] = df["key"].isin(best_keys(df))
    return df[cols]


def best_records(records: Iterable[dict], cell: tuple[str, ...] = ("task", "model", "freeze")) -> dict[tuple, dict]:
    """Per cell (a tuple of config fields), the record of the best restart: lowest
    validation cross-entropy, diverged runs excluded (the rule of :func:`best_keys`)."""
    best: dict[tuple, dict] = {}
    for rec in records:
        ce = (rec.get("valid") or {}).get("cross_entropy")
        if rec.get("diverged") or ce is None or not math.isfinite(ce):
            continue
        at = tuple(rec["config"].get(k) for k in cell)
        if at not in best or ce < best[at]["valid"]["cross_entropy"]:
            best[at] = rec
    return best


def best_keys(df) -> set[str]:
    """Keys of the best restart per cell, by validation cross-entropy, diverged runs excluded."""
    sel = df[(df["split"] == "valid") & (df["metric"] == "cross_entropy") & df["length"].isna() & ~df["diverged"]]
    sel = sel[sel["value"].notna()]
    if sel.empty:
        return set()
    cell = ["kind", "scale", "task", "model", "freeze", "embedding_group"]
    idx = sel.fillna({"embedding_group": "-"}).groupby(cell, dropna=False)["value"].idxmin()
    return set(sel.loc[idx, "key"])
