"""The contract every marnn model follows (read this before writing a model or a trainer).

Replicas
--------
Every parameter carries a leading *replica* dimension ``R``: a model object
holds ``R`` independent parameter sets of one architecture (restarts with their
own seeds and learning rates, and freeze modes) and runs them as one batched
computation. ``R = 1`` is the ordinary single model. Replica ``r`` initialised
from seed ``s`` is bit-for-bit the ``R = 1`` model initialised from seed ``s``.

Forward
-------
``model(x, state=None, return_stack=False) -> Output``

* ``x``: ``(R, B, T)`` long input indices, or ``(B, T)`` shared by every
  replica. Formal-language inputs never contain EOS.
* ``Output.logits``: ``(R, B, T + 1, V)`` when ``model.include_initial`` (formal
  languages: ``h_0`` predicts the first symbol, ``h_T`` predicts EOS), else
  ``(R, B, T, V)`` (PTB: one prediction per input token).
* ``Output.state``: the carried state after the last step (LSTM state and stack
  state), to pass back as ``state=`` for the next chunk (truncated BPTT);
  ``marnn.models.detach_state(state)`` cuts the graph.
* ``Output.stack``: with ``return_stack=True`` a dict of per-step tensors for
  analysis (``"actions"``, ``"readings"``), else ``None``.

Loss
----
``model.nll(x, targets, state=None) -> (nll, state)`` (optional): the per-token
negative log-likelihood ``(R, B, T(+1))`` of ``targets`` and ``Output.state``,
the same numbers as ``token_nll(model(x, state).logits, targets)``. StackRNN's
fuses the PTB classifier with the loss (:func:`marnn.kernels.loss.classifier_nll`:
no (R, B, T, V) logits); the trainers call it through
:func:`marnn.train.evaluate.model_nll`, which falls back to the logits for a
model without one.

Parameter groups and freeze modes
---------------------------------
``model.group_of(param_name) -> str`` in ``{"controller", "memory",
"classifier", "embedding"}``; the embedding's effective group is decided by
``embedding_group`` (the groups, the freeze modes and the embedding's choices:
:mod:`marnn.registry`; how a mode is applied: :mod:`marnn.models.freeze`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Output:
    logits: torch.Tensor  # (R, B, T(+1), V)
    state: Any = None
    stack: dict[str, torch.Tensor] | None = None
