"""Every name marnn accepts, one table of per-model facts, and the one error type for an unknown name.

This module imports nothing of marnn (a leaf: every other module may read it).

* :data:`MODELS`: one row per model (:class:`Model`): the grid it belongs to,
  whether it is one of the paper's, its colour in every figure, its relative
  training cost, its place in the ``paper-2core`` campaign and its speed targets
  (docs: book/reference/models.md). :data:`FORMAL_MODELS`, :data:`PTB_MODELS`
  (the paper's, in table order) and :data:`PTB_VARIANTS` are read off it;
  :data:`NAME_FORMS`: the name patterns :func:`marnn.models.parse_name` accepts
  (other sizes of the same architectures);
* :data:`TASKS`: the seven languages, in the order of the paper's tables (each
  implemented by a class in :mod:`marnn.tasks.languages`); :data:`SCALES`: the
  scales (each a :class:`marnn.scales.Scale`);
* :data:`GROUPS`: the parameter groups; :data:`FREEZE_MODES`: which groups
  each freeze mode keeps at initialisation; :data:`MODES` their names;
  :data:`EMBEDDING_GROUPS`: where the PTB input embedding may belong.

Every other list of these names or facts in the package derives from this module
(tests check that the languages and scales defined elsewhere match it).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

T = TypeVar("T")


# ---- models ------------------------------------------------------------------------------
class BenchTarget(NamedTuple):
    """A speed target of ``marnn bench``: the step ``kind`` (``train``, ``eval``, ``replicas``,
    ``ptb``) at sequence length ``n`` with ``replicas`` replicas on ``threads`` threads takes at
    most ``limit`` times its bound (FLOPs / measured peak, or bytes / bandwidth)."""
    kind: str
    n: int
    replicas: int
    threads: int
    limit: float


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # "formal" | "ptb": the grid (and the record kind) it trains in
    paper: bool  # one of the paper's models (its tables' rows); else a variant a run may name
    colour: str | None  # its colour in every figure: a name of marnn.plotting.OKABE_ITO (unique per kind)
    cost: float  # relative training cost per replica (quick scale, 2-core CPU): the grid starts dear groups first
    ptb_table3: bool = False  # trained in phase 1 of paper-2core (Table 3's runs, marnn.campaign)
    ptb_epoch_min: float | None = None  # CPU-minutes per epoch of one PTB replica on the full streams
    bench: tuple[BenchTarget, ...] = ()  # marnn bench: the speed targets it is held to


_PTB_CHUNK = BenchTarget("ptb", 35, 1, 2, 3.0)  # one 32 x 35 PTB chunk, at most 3x its bound
# PTB CPU-minutes per epoch: ``marnn bench`` on the idle development machine, one thread (marnn/scales.py)
MODELS: dict[str, Model] = {m.name: m for m in (
    Model("lstm", "formal", True, "blue", 1.0),
    Model("jm-10", "formal", True, "orange", 1.8, bench=(BenchTarget("replicas", 60, 40, 2, 8.0),)),
    Model("jm-3.3.3", "formal", True, "green", 1.8),
    Model("jm-hidden", "formal", True, "vermillion", 1.8),
    Model("rns-3-3", "formal", True, "purple", 15.0,
          bench=(BenchTarget("train", 60, 1, 2, 8.0), BenchTarget("eval", 400, 1, 2, 8.0))),
    Model("lstm-256", "ptb", True, "blue", 1.0, True, 7.6, (_PTB_CHUNK,)),
    Model("jm-hidden-247", "ptb", True, "vermillion", 2.0, True, 8.4, (_PTB_CHUNK,)),
    Model("jm-learned-22", "ptb", True, "orange", 2.0, True, 8.0, (_PTB_CHUNK,)),
    Model("rns-4-5", "ptb", True, "purple", 100.0, True, 21.0, (_PTB_CHUNK,)),
    Model("vrns-3-3-5", "ptb", True, "green", 150.0, False, 14.0, (_PTB_CHUNK,)),
    # the VRNS with the bottom vector where the published implementation wrote it (marnn.models)
    Model("vrns-3-3-5-published", "ptb", False, None, 150.0, True, 14.0),
)}

FORMAL_MODELS: tuple[str, ...] = tuple(n for n, m in MODELS.items() if m.kind == "formal" and m.paper)
PTB_MODELS: tuple[str, ...] = tuple(n for n, m in MODELS.items() if m.kind == "ptb" and m.paper)
MEMORY_MODELS: tuple[str, ...] = tuple(m for m in FORMAL_MODELS if m != "lstm")  # with a stack (Figure 3)
# variants a PTB run may name besides the paper's models (not in the default grids)
PTB_VARIANTS: tuple[str, ...] = tuple(n for n, m in MODELS.items() if m.kind == "ptb" and not m.paper)
PTB_TABLE3: tuple[str, ...] = tuple(n for n, m in MODELS.items() if m.ptb_table3)
SETTINGS: dict[str, tuple[str, ...]] = {"formal": FORMAL_MODELS, "ptb": PTB_MODELS}
NAME_FORMS: tuple[str, ...] = ("lstm", "lstm-<H>", "jm-<m>", "jm-<a>.<b>.<c>", "jm-learned-<m>", "jm-hidden",
                               "jm-hidden-<H>", "rns-<Q>-<S>", "vrns-<Q>-<S>-<m>", "vrns-<Q>-<S>-<m>-published")
DEFAULT_COST = 1.0  # a model outside the table (another size of an architecture)


def cost(model: str) -> float:
    """Relative training cost per replica of ``model`` (:data:`DEFAULT_COST` outside :data:`MODELS`)."""
    row = MODELS.get(model)
    return row.cost if row is not None else DEFAULT_COST


# ---- languages and scales ------------------------------------------------------------------
TASKS: tuple[str, ...] = ("count-3", "marked-reverse-and-copy", "count-and-copy", "marked-copy",
                          "unmarked-copy-different-alphabets", "unmarked-reverse-and-copy", "unmarked-copy")
SCALES: tuple[str, ...] = ("smoke", "quick", "paper-2core", "paper")

# ---- parameter groups and freeze modes ----------------------------------------------------
GROUPS: tuple[str, ...] = ("controller", "memory", "classifier", "embedding")
# Which groups stay at their random initialisation (docs: book/reference/models.md, "Freeze modes").
FREEZE_MODES: dict[str, tuple[str, ...]] = {
    "none": (),
    "m": ("memory",),
    "c": ("controller",),
    "cm": ("controller", "memory"),
}
MODES: tuple[str, ...] = tuple(FREEZE_MODES)
FROZEN_MODES: tuple[str, ...] = tuple(m for m, frozen in FREEZE_MODES.items() if frozen)
# Which freezable group the PTB input embedding joins. The paper does not say;
# the default keeps it with the controller (it feeds the LSTM). "memory" is the
# hypothesis that explains lstm-256 losing 10 points in mode m; "trained" never
# freezes it. Formal-language models have no embedding (one-hot inputs).
EMBEDDING_GROUPS: tuple[str, ...] = ("controller", "memory", "trained")
DEFAULT_EMBEDDING_GROUP = "controller"


# ---- unknown names ----------------------------------------------------------------------------
class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the valid choices."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")


def lookup(kind: str, name: str, mapping: Mapping[str, T]) -> T:
    try:
        return mapping[name]
    except (KeyError, TypeError):
        raise UnknownNameError(kind, name, mapping) from None
