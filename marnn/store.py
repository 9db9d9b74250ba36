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
at any moment leaves either no record or a complete one (stray ``.tmp`` files
are ignored and cleaned up by :func:`clean_temp`).

Record schema (formal; PTB has ``valid``/``test`` perplexities and no bins)::

    config        the run's config (marnn.train.formal_config / ptb_config)
    key           hash of config
    seed, lr, final_lr, clip
    status        "early-stop" | "max-epochs" | "diverged"
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
    curve         [{"epoch", "lr", "train_cross_entropy", "valid_cross_entropy",
                    "valid_ce_diff", "valid_accuracy", "seconds"}, ...]
    num_parameters, trainable_parameters
    group         {"replicas", "wall_time_s", "cpu_time_s", "members"}: the batch it trained in
    wall_time_s   the group's wall time divided by its replicas
    env           {"device", "cpu", "torch_threads", "python", "torch", "numpy",
                   "pandas", "numba", "marnn", "fused_backend", "git_commit",
                   "code_modified", ...}
    created       UTC timestamp
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
ENV_VAR = "MARNN_RESULTS"
REQUIRED = ("config", "key", "status", "created", "env", "curve")


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """The store's root: ``path``, else ``$MARNN_RESULTS``, else ``<repo>/results``."""
    if path:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else REPO / "results"


def canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_key(config: dict) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``config``."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def record_path(config: dict, root: str | os.PathLike | None = None) -> Path:
    root = results_dir(root)
    key = config_key(config)
    kind = config["kind"]
    if kind == "formal":
        return root / "formal" / config["scale"] / config["task"] / config["model"] / f"{config['freeze']}-s{config['seed']}-{key}.json"
    if kind == "ptb":
        return root / "ptb" / config["scale"] / config["model"] / f"{config['freeze']}-{config['embedding_group']}-s{config['seed']}-{key}.json"
    raise ValueError(f"unknown run kind {kind!r}; valid kinds: formal, ptb")


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
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


def is_complete(record: object, config: dict | None = None) -> bool:
    """A parsed record with every required field (and the right config, if given)."""
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
        return False
    if record["key"] != config_key(record["config"]):
        return False
    return config is None or record["key"] == config_key(config)


def read_record(path: str | os.PathLike) -> dict | None:
    """A complete record from ``path``, or None (missing, unreadable or incomplete)."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring unreadable record {path}: {err}")
        return None
    return rec if is_complete(rec) else None


def load_record(config: dict, root: str | os.PathLike | None = None) -> dict | None:
    rec = read_record(record_path(config, root))
    return rec if rec is not None and is_complete(rec, config) else None


def missing(configs: Iterable[dict], root: str | os.PathLike | None = None) -> list[dict]:
    """The configs that have no complete record yet."""
    return [c for c in configs if load_record(c, root) is None]


def run_or_load(config: dict, root: str | os.PathLike | None = None, *, progress: bool = False, **train_kwargs) -> dict:
    """The stored record of ``config``, or train it alone (``R = 1``), store it and return it."""
    rec = load_record(config, root)
    if rec is not None:
        return rec
    from .train import train

    (rec,) = train([config], progress=progress, **train_kwargs)
    save_record(rec, root)
    return load_record(config, root)


def iter_records(root: str | os.PathLike | None = None) -> Iterator[tuple[Path, dict]]:
    """Every complete record under ``root`` (temporary files skipped)."""
    root = results_dir(root)
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        rec = read_record(path)
        if rec is not None:
            yield path, rec


def clean_temp(root: str | os.PathLike | None = None) -> int:
    """Remove temporary files left by killed writers; returns how many."""
    n = 0
    for path in results_dir(root).rglob(".*.tmp"):
        try:
            path.unlink()
            n += 1
        except OSError:
            pass
    return n


ID_COLUMNS = ["key", "kind", "scale", "task", "model", "freeze", "seed", "embedding_group", "data_seed",
              "status", "diverged"]


def _ids(rec: dict) -> dict:
    c = rec["config"]
    return {
        "key": rec["key"], "kind": c["kind"], "scale": c["scale"], "task": c.get("task", "ptb"),
        "model": c["model"], "freeze": c["freeze"], "seed": c["seed"],
        "embedding_group": c.get("embedding_group"), "data_seed": c.get("data_seed"),
        "status": rec["status"], "diverged": rec.get("diverged") is not None,
    }


def record_rows(rec: dict) -> list[dict]:
    """Tidy rows of one record: one per (split, length, metric)."""
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
    cross-entropy among runs that did not diverge (PAPER.md: best of restarts
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
