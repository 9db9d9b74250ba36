"""Compiled and fused kernels: fast forms of the maths in :mod:`marnn.models`, each tested against it.

A reader checking a model against book/reference/models.md reads
:mod:`marnn.models`; these modules make the same numbers fast, and the tests
named below compare each one with the plain model, in values and in every
gradient.

* :mod:`.fused_lstm`: the whole LSTM (+ equal-size superposition stacks)
  recurrence over a chunk as one autograd function with a hand-written
  backward pass; NumPy or torch array loop (``tests/test_superposition.py``
  against the step-by-step :class:`marnn.models.stack_rnn.StackRNN`).
* :mod:`.fused_lstm_numba`: the same loop compiled with Numba, one (replica,
  string) row at a time (formal-size controllers on the CPU).
* :mod:`.rns_tape`: the RNS / VRNS step on a renormalised tape with a
  hand-written backward pass (``tests/test_rns.py`` against the recurrences of
  :mod:`marnn.models.rns` followed literally).
* :mod:`.rns_numba`: that step compiled with Numba (``tests/test_rns_compiled.py``
  against the torch step of :mod:`.rns_tape`).
* :mod:`.rns_sequence`: whole strings of an RNS model (controller and stack) in one
  compiled call, forward and backward (``tests/test_rns_sequence.py`` against the
  per-step paths).
* :mod:`.loss`: the per-token cross-entropy over a large vocabulary in
  row blocks that stay in the cache (``tests/test_loss.py`` against
  ``F.cross_entropy``, bit for bit).
* :mod:`.backend`: the one switch between them (``$MARNN_FUSED_BACKEND``) and
  the thread pool their blocks share; :mod:`.arrays`: the NumPy / torch array
  namespaces of the fused loop.
"""
