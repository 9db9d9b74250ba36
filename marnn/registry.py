"""Every name marnn accepts, in one place, and the one error type for an unknown name.

The paper's vocabulary (docs: book/reference/models.md and languages.md):

* :data:`FORMAL_MODELS`, :data:`PTB_MODELS`: the paper's models, in table
  order; :data:`NAME_FORMS`: the name patterns :func:`marnn.models.parse_name`
  accepts (other sizes of the same architectures);
* :data:`GROUPS`: the parameter groups; :data:`FREEZE_MODES`: which groups
  each freeze mode keeps at initialisation; :data:`MODES` their names;
  :data:`EMBEDDING_GROUPS`: where the PTB input embedding may belong;
* :func:`task_names` (defined by the language classes in
  :mod:`marnn.tasks.languages`) and :func:`scale_names` (the scale objects of
  :mod:`marnn.scales`), listed through functions so this module imports
  nothing of marnn.

Every other list of these names in the package derives from this module.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")

# ---- models ------------------------------------------------------------------------------
FORMAL_MODELS: tuple[str, ...] = ("lstm", "jm-10", "jm-3.3.3", "jm-hidden", "rns-3-3")
PTB_MODELS: tuple[str, ...] = ("lstm-256", "jm-hidden-247", "jm-learned-22", "rns-4-5", "vrns-3-3-5")
MEMORY_MODELS: tuple[str, ...] = tuple(m for m in FORMAL_MODELS if m != "lstm")  # with a stack (Figure 3)
# variants a PTB run may name besides the paper's models (not in the default grids)
PTB_VARIANTS: tuple[str, ...] = ("vrns-3-3-5-published",)
SETTINGS: dict[str, tuple[str, ...]] = {"formal": FORMAL_MODELS, "ptb": PTB_MODELS}
NAME_FORMS: tuple[str, ...] = ("lstm", "lstm-<H>", "jm-<m>", "jm-<a>.<b>.<c>", "jm-learned-<m>", "jm-hidden",
                               "jm-hidden-<H>", "rns-<Q>-<S>", "vrns-<Q>-<S>-<m>", "vrns-<Q>-<S>-<m>-published")

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


# ---- names defined by their objects --------------------------------------------------------
def task_names() -> tuple[str, ...]:
    """The seven languages, in the order of the paper's tables (:data:`marnn.tasks.NAMES`)."""
    from .tasks import NAMES
    return NAMES


def scale_names() -> tuple[str, ...]:
    """``smoke``, ``quick``, ``paper-2core``, ``paper`` (:data:`marnn.scales.SCALES`)."""
    from .scales import SCALES
    return tuple(SCALES)


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
