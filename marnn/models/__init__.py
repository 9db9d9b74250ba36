"""The models of the paper, built by name (docs: book/reference/models.md).

>>> from marnn import models, tasks
>>> m = models.build("jm-3.3.3", task=tasks.get("marked-copy"), replicas=4, seeds=[0, 1, 2, 3])
>>> m(torch.zeros(10, 40, dtype=torch.long)).logits.shape
torch.Size([4, 10, 41, 4])

Names are parsed from patterns, so other sizes work too (:data:`marnn.registry.NAME_FORMS`):

* ``lstm`` (20 units) / ``lstm-<H>``: plain LSTM;
* ``jm-<m>`` = ``jm-learned-<m>``: one superposition stack pushing learned
  ``m``-vectors; ``jm-<a>.<b>.<c>``: several stacks of those sizes, each with its
  own push/pop/no-op distribution; ``jm-hidden`` / ``jm-hidden-<H>``: push the
  controller's hidden state (``m = H``);
* ``rns-<Q>-<S>``: renormalizing nondeterministic stack; ``vrns-<Q>-<S>-<m>``:
  its vector version, with the bottom vector where the equations put it (only
  at the start state and bottom symbol); ``vrns-<Q>-<S>-<m>-published``: the
  same model with the bottom vector at every state and symbol of the initial
  stack, as the published implementation (which produced the paper's VRNS
  numbers) writes it (:class:`marnn.models.rns._PublishedBottom`).

The setting is picked by the keyword: ``task=`` (formal languages: one-hot
inputs, 20 units, ``include_initial``, per-group init) or ``vocab_size=`` (PTB:
embeddings of size H, 256 units unless the name says otherwise, superposition
depth limit 10, RNS window 35, all parameters U(-0.05, 0.05), state carried).
"""
from __future__ import annotations

import dataclasses
import re

from ..registry import DEFAULT_EMBEDDING_GROUP, NAME_FORMS, SETTINGS, UnknownNameError
from .base import Output
from .stack_rnn import ModelConfig, ModelState, StackRNN, detach_state

# Setting defaults (docs: book/reference/models.md, "Model names" and "Initialisation")
_FORMAL = dict(hidden_size=20, depth=None, window=None, embedding=False, include_initial=True,
               init="formal", prune=True)
_PTB = dict(hidden_size=256, depth=10, window=35, embedding=True, include_initial=False,
            init="ptb", prune=False)

_PATTERNS = [
    (re.compile(r"lstm(?:-(\d+))?"), lambda g: dict(hidden_size=g[0])),
    (re.compile(r"jm-(?:learned-)?(\d+(?:\.\d+)*)"),
     lambda g: dict(memory="superposition", stack_sizes=tuple(int(s) for s in g[0].split(".")))),
    (re.compile(r"jm-hidden(?:-(\d+))?"), lambda g: dict(memory="superposition", push="hidden", hidden_size=g[0])),
    (re.compile(r"rns-(\d+)-(\d+)"), lambda g: dict(memory="rns", states=int(g[0]), symbols=int(g[1]))),
    (re.compile(r"vrns-(\d+)-(\d+)-(\d+)(-published)?"),
     lambda g: dict(memory="vrns", states=int(g[0]), symbols=int(g[1]), vector_size=int(g[2]),
                    **({"bottom": "published"} if g[3] else {}))),
]


def names(setting: str = "formal") -> tuple[str, ...]:
    """The paper's model names for ``"formal"`` or ``"ptb"``, in table order."""
    if setting not in SETTINGS:
        raise UnknownNameError("setting", setting, SETTINGS)
    return SETTINGS[setting]


def parse_name(name: str) -> dict:
    """Architecture fields encoded in a model name (setting-independent)."""
    for pattern, fields in _PATTERNS:
        mt = pattern.fullmatch(str(name))
        if mt:
            spec = fields(mt.groups())
            if spec.get("hidden_size") is None:
                spec.pop("hidden_size", None)
            else:
                spec["hidden_size"] = int(spec["hidden_size"])
            sizes = [v for k, v in spec.items() if k in ("hidden_size", "states", "symbols", "vector_size")]
            sizes += list(spec.get("stack_sizes", ()))
            if all(s > 0 for s in sizes):
                return spec
    raise UnknownNameError("model", name, NAME_FORMS)


def make_config(name: str, *, task=None, vocab_size: int | None = None, **overrides) -> ModelConfig:
    """The :class:`ModelConfig` for ``name`` in the formal (``task``) or PTB (``vocab_size``) setting."""
    if (task is None) == (vocab_size is None):
        raise ValueError("pass exactly one of task= (formal languages) or vocab_size= (PTB)")
    spec = parse_name(name)
    base: dict[str, object]
    if task is not None:
        if isinstance(task, str):
            from .. import tasks as _tasks
            task = _tasks.get(task)
        base = dict(_FORMAL, input_size=len(task.alphabet), output_size=len(task.alphabet) + 1)
    else:
        assert vocab_size is not None  # exactly one of task / vocab_size, checked above
        base = dict(_PTB, input_size=int(vocab_size), output_size=int(vocab_size))
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "input_size", "output_size"}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"unknown model override(s) {bad}; valid: {sorted(fields)}")
    cfg = ModelConfig(name=name, **{**base, **spec, **overrides})
    if cfg.memory in ("rns", "vrns") and task is not None and "window" not in overrides:
        cfg = dataclasses.replace(cfg, window=None)  # formal languages: unwindowed
    return cfg


def build(name: str, *, task=None, vocab_size: int | None = None, replicas: int = 1, seeds=None,
          embedding_group: str = DEFAULT_EMBEDDING_GROUP, device=None, dtype=None, **overrides) -> StackRNN:
    """Build ``replicas`` copies of model ``name``; replica ``r`` is initialised from ``seeds[r]``.

    ``task``: a :class:`marnn.tasks.Task` (or its name) for the formal setting;
    ``vocab_size``: PTB setting. ``overrides``: any :class:`ModelConfig` field
    (e.g. ``hidden_size``, ``depth``, ``prune``, ``window``, ``fused``).
    """
    cfg = make_config(name, task=task, vocab_size=vocab_size, **overrides)
    model = StackRNN(cfg, replicas=replicas, seeds=seeds, embedding_group=embedding_group)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model


__all__ = ["build", "names", "parse_name", "make_config", "detach_state", "ModelConfig", "ModelState", "StackRNN",
           "Output"]
