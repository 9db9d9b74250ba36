"""What a run is: :class:`RunConfig`, one cell of the paper's grid, checked against the registry.

A run config is made by :meth:`RunConfig.formal` (a formal-language run),
:meth:`RunConfig.ptb` (a Penn Treebank run) or :meth:`RunConfig.from_dict` (the
``config`` of a stored record); each checks every name against
:mod:`marnn.registry` and raises a one-line ``ValueError`` naming the bad value
and the accepted ones. Its dict form (:meth:`RunConfig.to_dict`) is what a
record stores, field for field in this order::

    {"kind": "formal", "task": "marked-copy", "model": "jm-10", "freeze": "m", "seed": 0,
     "data_seed": 0, "scale": "quick", "scale_fields": {...}, "protocol": 1}
    {"kind": "ptb", "model": "lstm-256", "freeze": "m", "seed": 0, "embedding_group": "controller",
     "data_seed": 0, "scale": "quick", "scale_fields": {...}, "protocol": 1}

From it follow the run's :attr:`~RunConfig.key` (16 hex digits of the SHA-256
of the canonical JSON of the dict: :func:`config_key`), its record's place in
the store (:meth:`~RunConfig.path`, layout in :func:`record_relpath`), the
group it trains in (:attr:`~RunConfig.group_key`: runs that differ only in
freeze mode and seed share one replica-batched model) and the exact
:class:`~marnn.scales.Scale` it trains at (:attr:`~RunConfig.scale`).

``seed`` is the restart (initialisation and learning rate); ``data_seed`` fixes
the training data and its order; ``scale_fields`` are the fields of the scale
the run depends on (:func:`scale_part`), so changing a scale never reuses stale
records; ``protocol`` (:data:`PROTOCOL`) changes when the training code changes
numbers.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import registry
from .paths import results_dir
from .scales import OPTIONAL, Scale, get_scale

PROTOCOL = 1  # bump when a change to the training code changes numbers
SEED_MAX = 2**32 - 1  # seeds and data seeds: 0 <= seed <= SEED_MAX (numpy's and torch's common range)
KINDS: tuple[str, ...] = ("formal", "ptb")
# The fields of a config dict, in the order records store them.
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "formal": ("kind", "task", "model", "freeze", "seed", "data_seed", "scale", "scale_fields", "protocol"),
    "ptb": ("kind", "model", "freeze", "seed", "embedding_group", "data_seed", "scale", "scale_fields", "protocol"),
}
_SCALE_FIELDS = tuple(f.name for f in fields(Scale))


# ---- the dict form: keys and places -------------------------------------------------------
def canonical(config: Mapping) -> str:
    """The canonical JSON of a config dict (sorted keys, no spaces): what its key hashes."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_key(config: Mapping | RunConfig) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``config`` (a dict, or a RunConfig's dict form)."""
    if isinstance(config, RunConfig):
        config = config.to_dict()
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def record_relpath(config: Mapping) -> Path:
    """Where the record of the config dict ``config`` lies under the store's root::

        formal/<scale>/<task>/<model>/<freeze>-s<seed>-<key>.json
        ptb/<scale>/<model>/<freeze>-<embedding_group>-s<seed>-<key>.json
    """
    key = config_key(config)
    kind = config["kind"]
    if kind == "formal":
        return (Path("formal") / config["scale"] / config["task"] / config["model"]
                / f"{config['freeze']}-s{config['seed']}-{key}.json")
    if kind == "ptb":
        return (Path("ptb") / config["scale"] / config["model"]
                / f"{config['freeze']}-{config['embedding_group']}-s{config['seed']}-{key}.json")
    raise ValueError(f"unknown run kind {kind!r}; valid kinds: {', '.join(KINDS)}")


# ---- a scale's part of a config ---------------------------------------------------------------
def scale_part(scale: Scale, kind: str) -> dict:
    """The fields of ``scale`` (already :meth:`~marnn.scales.Scale.for_model`) a run of
    ``kind`` depends on; fields added later are left out while unset (``OPTIONAL``),
    so older records keep their keys."""
    out = {}
    for f in fields(scale):
        if not _scale_field_of(f.name, kind):
            continue
        if f.name in OPTIONAL and getattr(scale, f.name) == OPTIONAL[f.name]:
            continue
        out[f.name] = getattr(scale, f.name)
    return out


def _scale_field_of(name: str, kind: str) -> bool:
    """Whether the Scale field ``name`` enters the config of a run of ``kind``."""
    return name not in ("name", "models") and (kind == "ptb") == name.startswith("ptb_")


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def check_lengths(task, scale: Scale) -> None:
    """Every length range of the scale must contain a valid length of the task."""
    ranges = [("training", scale.train_lengths)] + list(zip(scale.bin_names, scale.test_bins, strict=True))
    for what, (lo, hi) in ranges:
        if lo > hi or not task.valid_lengths(lo, hi):
            example = task.valid_lengths(1, 3 * task.sections + task.markers)[:3]
            raise ValueError(f"{task.name}: no valid length in the {what} range [{lo}, {hi}] "
                             f"(valid lengths are {task.markers} + {task.sections}*k, e.g. {example})")


def _name(kind: str, name: object, valid: Iterable[str]) -> str:
    """``name``, if it is one of ``valid``; else the registry's one-line error."""
    valid = tuple(valid)
    if not isinstance(name, str) or name not in valid:
        raise registry.UnknownNameError(kind, name, valid)
    return name


def _seed(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
        raise ValueError(f"invalid {what} {value!r}; accepted: an integer in [0, {SEED_MAX}]")
    return value


# ---- the run config ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RunConfig:
    """One run: a formal-language run (``task`` set, ``embedding_group`` None) or a Penn
    Treebank run (``task`` None, ``embedding_group`` set). Make it with :meth:`formal`,
    :meth:`ptb` or :meth:`from_dict`; every field is checked when it is made. Two
    configs are equal when their keys are."""

    kind: str
    model: str
    freeze: str
    seed: int
    data_seed: int
    scale_name: str
    scale_fields: Mapping[str, Any]  # read-only; the values as given (tuples when built, lists from JSON)
    protocol: int = PROTOCOL
    task: str | None = None
    embedding_group: str | None = None

    def __post_init__(self) -> None:
        _name("run kind", self.kind, KINDS)
        if self.kind == "formal":
            _name("task", self.task, registry.TASKS)
            _name("model", self.model, registry.FORMAL_MODELS)
            if self.embedding_group is not None:
                raise ValueError(f"invalid embedding group {self.embedding_group!r} for a formal run; accepted: None "
                                 "(formal-language models have no embedding)")
        else:
            if self.task is not None:
                raise ValueError(f"invalid task {self.task!r} for a ptb run; accepted: None (PTB is one corpus)")
            _name("model", self.model, registry.PTB_MODELS + registry.PTB_VARIANTS)
            _name("embedding group", self.embedding_group, registry.EMBEDDING_GROUPS)
        _name("freeze mode", self.freeze, registry.MODES)
        _name("scale", self.scale_name, registry.SCALES)
        _seed("seed", self.seed)
        _seed("data seed", self.data_seed)
        _seed("protocol", self.protocol)
        if not isinstance(self.scale_fields, Mapping):
            raise ValueError(f"invalid scale_fields {self.scale_fields!r}; accepted: an object of Scale fields")
        accepted = [n for n in _SCALE_FIELDS if _scale_field_of(n, self.kind)]
        for name in self.scale_fields:
            _name(f"{self.kind} scale field", name, accepted)
        object.__setattr__(self, "scale_fields", MappingProxyType(copy.deepcopy(dict(self.scale_fields))))

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def formal(cls, task: str, model: str, freeze: str, seed: int, scale: str | Scale,
               data_seed: int = 0) -> RunConfig:
        """A formal-language run; the scale's lengths must hold valid lengths of the task."""
        from . import tasks

        _name("task", task, registry.TASKS)
        _name("model", model, registry.FORMAL_MODELS)
        _name("freeze mode", freeze, registry.MODES)
        sc = get_scale(scale).for_model(model)
        check_lengths(tasks.get(task), sc)
        return cls("formal", model, freeze, int(seed), int(data_seed), sc.name, scale_part(sc, "formal"), task=task)

    @classmethod
    def ptb(cls, model: str, freeze: str, seed: int, scale: str | Scale, embedding_group: str | None = None,
            data_seed: int = 0) -> RunConfig:
        """A Penn Treebank run (``embedding_group`` None: the registry's default)."""
        _name("model", model, registry.PTB_MODELS + registry.PTB_VARIANTS)
        sc = get_scale(scale).for_model(model)
        return cls("ptb", model, freeze, int(seed), int(data_seed), sc.name, scale_part(sc, "ptb"),
                   embedding_group=embedding_group or registry.DEFAULT_EMBEDDING_GROUP)

    @classmethod
    def from_dict(cls, config: Mapping | RunConfig) -> RunConfig:
        """The run of a config dict (a record's ``config``), checked: its fields are exactly
        those of its kind (:data:`CONFIG_FIELDS`) and every name is the registry's."""
        if isinstance(config, RunConfig):
            return config
        if not isinstance(config, Mapping):
            raise ValueError(f"invalid config {config!r}; accepted: an object with the fields of a run")
        kind = _name("run kind", config.get("kind"), KINDS)
        want = CONFIG_FIELDS[kind]
        for k in want:
            if k not in config:
                raise ValueError(f"a {kind} config lacks {k!r}; its fields: {', '.join(want)}")
        for k in config:
            if k not in want:
                raise ValueError(f"unknown field {k!r} in a {kind} config; its fields: {', '.join(want)}")
        return cls(kind, config["model"], config["freeze"], config["seed"], config["data_seed"], config["scale"],
                   config["scale_fields"], config["protocol"], task=config.get("task"),
                   embedding_group=config.get("embedding_group"))

    # ---- what follows from it ------------------------------------------------------------
    def to_dict(self) -> dict:
        """The config as records store it (a fresh dict, fields in :data:`CONFIG_FIELDS` order)."""
        values = {"kind": self.kind, "task": self.task, "model": self.model, "freeze": self.freeze,
                  "seed": self.seed, "embedding_group": self.embedding_group, "data_seed": self.data_seed,
                  "scale": self.scale_name, "scale_fields": copy.deepcopy(dict(self.scale_fields)),
                  "protocol": self.protocol}
        return {k: values[k] for k in CONFIG_FIELDS[self.kind]}

    @property
    def key(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of :meth:`to_dict`: the record's key."""
        return config_key(self.to_dict())

    def path(self, root: str | os.PathLike | None = None) -> Path:
        """Where the run's record lies in the store ``root`` (:func:`marnn.paths.results_dir`)."""
        return results_dir(root) / record_relpath(self.to_dict())

    @property
    def group_key(self) -> str:
        """Everything but freeze mode and seed: runs with equal group keys can share one batched model."""
        return canonical({k: v for k, v in self.to_dict().items() if k not in ("freeze", "seed")})

    @property
    def scale(self) -> Scale:
        """The exact Scale the run trains at (its stored fields, JSON lists back to tuples)."""
        return get_scale(self.scale_name).with_(**{k: _tuplify(v) for k, v in self.scale_fields.items()})

    @property
    def corpus(self) -> str:
        """What the run learns: its language, or ``"ptb"``."""
        return self.task if self.task is not None else "ptb"

    @property
    def is_formal(self) -> bool:
        return self.kind == "formal"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self):  # pickled as its dict (dask ships configs to its workers)
        return (RunConfig.from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        what = f"task={self.task!r}" if self.is_formal else f"embedding_group={self.embedding_group!r}"
        return (f"RunConfig({self.kind}, {what}, model={self.model!r}, freeze={self.freeze!r}, seed={self.seed}, "
                f"data_seed={self.data_seed}, scale={self.scale_name!r}, key={self.key})")


__all__ = ["RunConfig", "PROTOCOL", "SEED_MAX", "KINDS", "CONFIG_FIELDS", "canonical", "config_key",
           "record_relpath", "scale_part", "check_lengths"]
