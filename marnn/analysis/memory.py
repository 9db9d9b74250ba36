"""Memory indicators: how long, and how usably, a model's state keeps a symbol.

Zhang et al. (2020) describe RNN memory as shaped by *internal* factors (the
recurrent unit) and *external* ones (input length, truncation length), treat
the meaning of a sequence as a point set in a "Semantic Euclidean Space" and
define indicators there (docs: book/reference/claims.md, "Memory ability"). Their formulas are not
available to us; everything below is **this project's own
operationalisation**, inspired by that description, not taken from it.

The point set of a string
-------------------------
A string ``x_0 .. x_{T-1}`` is fed to a model; ``p_i`` is the model's state
*after reading* ``x_0 .. x_i`` (``i = 0 .. T-1``), so the string becomes the
point set (a trajectory) ``P(x) = {p_0, ..., p_{T-1}}`` in ``R^D``. Which state
(:data:`WHATS`):

* ``"hidden"``: the LSTM output ``h`` (what the classifier and the stack
  controller read);
* ``"cell"``: the LSTM cell ``c``;
* ``"reading"``: the stack reading the model will feed into the next step (a
  function of ``x_0 .. x_i`` only; the top of the stack, not what lies below);
* ``"state"``: ``[h ; c ; reading]``, everything of fixed size the model
  carries to the next step (``[h ; c]`` without a stack).

What lies below the top of a stack is not in the point set; it counts once a
pop brings it back into the reading.
``lag`` always means *the number of symbols read after the symbol in
question*: ``p_i`` is at lag ``i - k`` from ``x_k``.

The indicators
--------------
* :func:`divergence_curve` / :func:`memory_span`: two members that differ
  only at position ``k`` (up to where the flipped bit of ``w`` shows again);
  their normalised distance at lag ``l``

  .. math:: \\rho(l) = \\frac{\\operatorname{mean}\\,\\lVert p_{k+l}(x) - p_{k+l}(x')\\rVert}{D_0},
            \\qquad D_0 = \\operatorname{mean}_{a \\ne b,\\, i} \\lVert p_i(x_a) - p_i(x_b)\\rVert

  (``D_0``: the typical distance between unrelated strings of the same
  length); the span is the lag from which on ``rho`` stays below a threshold
  ``theta``: ``span = 1 + max{l : rho(l) >= theta}``.
* :func:`copy_decoding` (task-relevant): at every *copy point* of a copy-type
  language (the state from which the model must predict a copy of bit
  ``w_j``), a linear probe decodes ``w_j`` from the state; accuracy as a
  function of the lag from the bit's most recent occurrence.
* :func:`separation` (point sets): strings grouped into classes by the first
  half of ``w``; the ratio of the mean distance between point sets of
  different classes to that within a class, on the states that are read
  before the first half reappears in the input.

Every function returns a tidy :class:`pandas.DataFrame`; the model enters
only through a *state function* ``(B, T) int64 -> (R, B, T, D) float64`` (see
:func:`state_fn`), so the tests can feed hand-built "models" with known
answers. :func:`analyse_group` runs all three on a trained replica group
(:func:`marnn.analysis.weights.trained_group`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..tasks import Task, encode
from ..tasks import get as get_task

WHATS = ("hidden", "cell", "reading", "state")
SPAN_THRESHOLD = 0.1  # theta: a change "is remembered" while it moves the state by >= 10% of D_0
MIN_COUNT = 10  # lags seen in fewer string pairs than this are too noisy to decide a span
PROBES = ("ridge", "centroid")
RIDGE = 1e-2  # ridge penalty per sample on z-scored features (probe fits, not a tuned value)

StateFn = Callable[[np.ndarray], np.ndarray]  # (B, T) int64 -> (R, B, T, D) float64


# ---- states ------------------------------------------------------------------
def _check_what(what: str) -> str:
    if what not in WHATS:
        raise ValueError(f"unknown state {what!r}; valid: {', '.join(WHATS)}")
    return what


@torch.no_grad()
def forward_states(model, x) -> dict[str, np.ndarray]:
    """Run ``model`` over ``x`` (B, T) one symbol at a time and keep every state.

    Uses only the public forward contract (``model(x, state, return_stack)``),
    carrying ``Output.state`` from step to step. Returns float64 arrays:
    ``hidden`` and ``cell`` (R, B, T, H): ``h`` and ``c`` after reading
    ``x[:, :i+1]``; ``reading`` (R, B, T, M): the stack reading fed into step
    ``i + 1`` (absent without a stack; it depends on ``x[:, :i+1]`` only, so it
    is read off one extra step on a padding symbol); ``logits`` (R, B, T+1, V):
    ``logits[..., i, :]`` predicts ``x[:, i]`` (the last one EOS).
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.long)
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"x must be (B, T) with T >= 1, got {tuple(x.shape)}")
    if not getattr(model, "include_initial", False):
        raise ValueError("memory indicators need a formal-language model (include_initial=True)")
    if getattr(model.config, "prune", False):  # a pruned pass cannot be continued step by step
        model = model.with_config(prune=False)
    stack = model.core is not None
    T = x.shape[1]
    padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # (B, T+1): the pad only shows the last reading
    state, hidden, cell, reading, logits = None, [], [], [], []
    for t in range(T + 1):
        out = model(padded[:, t:t + 1], state=state, return_stack=stack)
        if stack:
            reading.append(out.stack["readings"][:, :, 0])  # (R, B, M): fed into step t
        if t == T:
            break
        if t == 0:
            logits.append(out.logits[:, :, 0])  # from h_0
        logits.append(out.logits[:, :, -1])  # (R, B, V)
        state = out.state
        hidden.append(state.h)
        cell.append(state.c)
    found = {"hidden": torch.stack(hidden, 2), "cell": torch.stack(cell, 2), "logits": torch.stack(logits, 2)}
    if stack:
        found["reading"] = torch.stack(reading[1:], 2)
    return {k: v.double().numpy() for k, v in found.items()}


def _select(found: dict[str, np.ndarray], what: str, name: str = "this model") -> np.ndarray:
    if what == "state":
        return np.concatenate([found[k] for k in ("hidden", "cell", "reading") if k in found], axis=-1)
    if what not in found:
        raise ValueError(f"{name} has no stack, so no stack reading")
    return found[what]


def trajectories(model, x, what: str = "state") -> np.ndarray:
    """The point sets ``P(x)`` of a batch: (R, B, T, D), ``p_i`` after reading ``x[:, :i+1]``."""
    _check_what(what)
    return _select(forward_states(model, x), what, model.config.name)


def state_fn(model, what: str = "state") -> StateFn:
    """``x -> trajectories(model, x, what)``: the form every indicator takes."""
    _check_what(what)
    return lambda x: trajectories(model, x, what)


def _states(fn: StateFn, x: np.ndarray) -> np.ndarray:
    P = np.asarray(fn(x), dtype=np.float64)
    if P.ndim != 4 or P.shape[1:3] != x.shape:
        raise ValueError(f"a state function must return (R, B, T, D) with (B, T) = {x.shape}, got {P.shape}")
    return P


# ---- distances ---------------------------------------------------------------
def step_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_i||`` for every step: (..., T, D) x2 -> (..., T) (leading axes broadcast)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"point sets of different shapes {a.shape} and {b.shape}")
    return np.sqrt(((a - b) ** 2).sum(-1))


def typical_distance(P: np.ndarray) -> np.ndarray:
    """``D_0`` per replica: mean ``||p_i(x_b) - p_i(x_{b+1})||`` over ``b`` (cyclic) and ``i``.

    ``P``: (R, B, T, D) point sets of ``B >= 2`` independently drawn strings of
    one length. Returns (R,).
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 4 or P.shape[1] < 2:
        raise ValueError(f"need (R, B >= 2, T, D) point sets, got {P.shape}")
    return step_distance(P, np.roll(P, -1, axis=1)).mean(axis=(1, 2))


# ---- strings ---------------------------------------------------------------
def _task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def word_tokens(task: Task | str, length: int) -> list[tuple[int, int, tuple]]:
    """``(position, bit j, renaming)`` of every template position that shows a bit of ``w``."""
    task = _task(task)
    k = task._check_length(length)
    toks = [(p, tok[1], tok[2]) for p, tok in enumerate(task.template(k)) if tok[0] == "w"]
    if not toks:
        raise ValueError(f"{task.name} has no random word w; memory indicators need one "
                         f"(e.g. marked-copy, marked-reverse-and-copy)")
    return toks


def copy_points(task: Task | str, length: int) -> pd.DataFrame:
    """Where a copy-type string repeats a bit it has shown before.

    One row per later occurrence (``target``) of bit ``j`` of ``w``: ``source``
    is the bit's most recent earlier occurrence, ``occurrence`` counts from 1
    (first repeat), ``lag = target - 1 - source`` = symbols read after the source
    before the state ``p_{target-1}`` must predict the copy.

    >>> copy_points("marked-copy", 5)[["bit", "source", "target", "lag"]].values.tolist()
    [[0, 0, 3, 2], [1, 1, 4, 2]]
    """
    last: dict[int, int] = {}
    seen: dict[int, int] = {}
    rows = []
    for pos, j, _ in word_tokens(task, length):
        if j in last:
            seen[j] = seen.get(j, 0) + 1
            rows.append({"bit": j, "source": last[j], "target": pos, "occurrence": seen[j],
                         "lag": pos - 1 - last[j]})
        last[j] = pos
    return pd.DataFrame(rows, columns=["bit", "source", "target", "occurrence", "lag"])


def fill_words(task: Task | str, length: int, bits: np.ndarray) -> np.ndarray:
    """The members of ``length`` with words ``bits`` (n, |w|), as indices (n, length)."""
    task = _task(task)
    k = task._check_length(length)
    bits = np.asarray(bits, dtype=np.int64)
    if bits.ndim != 2 or bits.shape[1] != task.free_bits(k):
        raise ValueError(f"need words of {task.free_bits(k)} bits for length {length}, got shape {bits.shape}")
    return encode(task, [task.fill(k, b.tolist()) for b in bits]).inputs.numpy()


def sample_words(task: Task | str, length: int, n: int, rng: np.random.Generator,
                 prefix: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform members of ``length`` as indices (n, length) and their words ``w`` (n, |w|).

    ``prefix``: fixed first bits of ``w`` (the rest uniform).
    """
    task = _task(task)
    k = task._check_length(length)
    nbits = task.free_bits(k)
    word_tokens(task, length)  # a language without w fails here
    bits = rng.integers(0, 2, size=(n, nbits))
    if prefix is not None:
        fixed = np.asarray(prefix, dtype=np.int64)
        if fixed.size > nbits:
            raise ValueError(f"prefix of {fixed.size} bits is longer than w ({nbits} bits)")
        bits[:, :fixed.size] = fixed
    return fill_words(task, length, bits), bits


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *map(int, parts)])


# ---- indicator 1: divergence and memory span --------------------------------
def divergence(P: np.ndarray, Q: np.ndarray, positions: Sequence[int] | np.ndarray,
               until: Sequence[int] | np.ndarray | None = None) -> pd.DataFrame:
    """Distances ``||p_i - q_i||`` at lags ``i - k``, one row per (replica, string, lag).

    ``P``, ``Q``: (R, B, T, D) point sets of strings whose first difference is
    at ``positions[b]``; ``until[b]``: the last state index to keep (default
    ``T - 1``). Rows: ``positions[b] <= i <= until[b]``.
    """
    d = step_distance(P, Q)  # (R, B, T)
    R, B, T = d.shape
    first = np.asarray(positions, dtype=np.int64)
    last = np.full(B, T - 1) if until is None else np.asarray(until, dtype=np.int64)
    if first.shape != (B,) or last.shape != (B,):
        raise ValueError(f"need one position and one end per string ({B}), got shapes "
                         f"{first.shape} and {last.shape}")
    i = np.arange(T)[None, :]
    keep = (i >= first[:, None]) & (i <= last[:, None])  # (B, T)
    lag = i - first[:, None]
    return pd.DataFrame({"replica": np.repeat(np.arange(R), keep.sum()),
                         "string": np.tile(np.nonzero(keep)[0], R),
                         "lag": np.tile(lag[keep], R), "distance": d[:, keep].reshape(-1)})


def divergence_curve(fn: StateFn, task: Task | str, lengths: Iterable[int], strings: int = 32,
                     seed: int = 0) -> pd.DataFrame:
    """``rho(lag)`` per (replica, length): flip one bit of ``w``, follow the distance.

    For each length, ``strings`` members ``x`` are drawn; ``x'`` is ``x`` with
    bit ``j = b mod |w|`` of string ``b``'s word flipped (every bit used about
    equally), so ``x'`` is a member too. The two differ first at the bit's
    first occurrence ``k``; the distance is followed from ``k`` up to the
    state before the bit shows up again (so up to there the strings differ
    *only* at ``k``, and what is left of the difference is memory, not new
    input). Columns: replica, length, lag, count (string pairs), distance
    (mean), reference (``D_0`` of that replica and length), ratio (distance /
    reference, the curve ``rho``).
    """
    task = _task(task)
    if strings < 2:
        raise ValueError(f"strings must be >= 2 (D_0 compares strings), got {strings}")
    frames = []
    for n in lengths:
        x, bits = sample_words(task, n, strings, _rng(seed, 1, n))
        occurrences: dict[int, list[int]] = {}
        for pos, j, _ in word_tokens(task, n):
            occurrences.setdefault(j, []).append(pos)
        j = np.arange(strings) % bits.shape[1]
        flipped = bits.copy()
        flipped[np.arange(strings), j] ^= 1
        positions = np.array([occurrences[int(b)][0] for b in j])
        until = np.array([occurrences[int(b)][1] - 1 if len(occurrences[int(b)]) > 1 else n - 1 for b in j])
        P = _states(fn, x)
        Q = _states(fn, fill_words(task, n, flipped))
        ref = typical_distance(P)  # (R,)
        d = divergence(P, Q, positions, until)
        g = d.groupby(["replica", "lag"])["distance"].agg(["count", "mean"]).reset_index()
        g = g.rename(columns={"mean": "distance"})
        g["reference"] = ref[g["replica"].to_numpy()]
        with np.errstate(divide="ignore", invalid="ignore"):
            g["ratio"] = g["distance"] / g["reference"]
        g.insert(1, "length", int(n))
        frames.append(g)
    return pd.concat(frames, ignore_index=True)


def memory_span(curve: pd.DataFrame, threshold: float = SPAN_THRESHOLD, min_count: int = MIN_COUNT,
                by: Sequence[str] | None = None) -> pd.DataFrame:
    """The span of every curve of :func:`divergence_curve`.

    ``span = 1 + max{lag : ratio >= threshold}`` over the lags seen in at least
    ``min_count`` string pairs (0 if the very flipped symbol moves the state by
    less than the threshold); ``inf`` when the ratio is still above the
    threshold at the last such lag (``censored``: memory outlasts what the
    strings can show). ``observed`` = that last lag + 1. ``by``: the columns
    naming one curve (default: every column but lag, count, distance,
    reference, ratio).
    """
    if not 0 < threshold:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    value_cols = {"lag", "count", "distance", "reference", "ratio"}
    missing = value_cols - set(curve.columns)
    if missing:
        raise ValueError(f"not a divergence curve: missing columns {sorted(missing)}")
    by = [c for c in curve.columns if c not in value_cols] if by is None else list(by)
    rows = []
    counted = curve[curve["count"] >= min_count]
    for key, part in (counted.groupby(by, sort=False) if by else [((), counted)] if len(counted) else []):
        part = part.sort_values("lag")
        above = part.loc[part["ratio"] >= threshold, "lag"]
        last = int(part["lag"].iloc[-1])
        censored = bool(len(above)) and int(above.iloc[-1]) == last
        span = math.inf if censored else (int(above.iloc[-1]) + 1 if len(above) else 0)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "span": float(span), "observed": last + 1,
                     "censored": censored})
    return pd.DataFrame(rows, columns=[*by, "span", "observed", "censored"])


# ---- indicator 2: decoding the bit to copy ---------------------------------
def probe_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                   method: str = "ridge", ridge: float = RIDGE) -> float:
    """Held-out accuracy of a binary probe (labels 0 / 1) on feature rows.

    * ``"ridge"``: least squares on ``y = +-1`` with features z-scored on the
      training rows, ``w = (Z^T Z + ridge * n I)^{-1} Z^T y``, predict
      ``sign(z w + mean(y))``;
    * ``"centroid"``: nearest class mean (Euclidean, raw features).

    A class missing from the training rows gives the majority-class guess.
    """
    if method not in PROBES:
        raise ValueError(f"unknown probe {method!r}; valid: {', '.join(PROBES)}")
    X_train, X_test = np.asarray(X_train, dtype=np.float64), np.asarray(X_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"features must be (n, D) with one D, got {X_train.shape} and {X_test.shape}")
    if len(y_train) != len(X_train) or len(y_test) != len(X_test) or len(y_test) == 0:
        raise ValueError("need one label per row and at least one test row")
    if set(np.unique(np.concatenate([y_train, y_test]))) - {0, 1}:
        raise ValueError("labels must be 0 or 1")
    if len(np.unique(y_train)) < 2:
        guess = int(y_train[0]) if len(y_train) else 0
        return float((y_test == guess).mean())
    if method == "centroid":
        mu = np.stack([X_train[y_train == c].mean(0) for c in (0, 1)])  # (2, D)
        dist = ((X_test[:, None, :] - mu[None]) ** 2).sum(-1)  # (n, 2)
        return float((dist.argmin(1) == y_test).mean())
    mean, std = X_train.mean(0), X_train.std(0)
    std = np.where(std > 1e-6, std, 1.0)  # constant features carry nothing; keep them finite
    Z, Zt = (X_train - mean) / std, (X_test - mean) / std
    y = 2.0 * y_train - 1.0
    n, D = Z.shape
    w = np.linalg.solve(Z.T @ Z + ridge * n * np.eye(D), Z.T @ (y - y.mean()))
    pred = (Zt @ w + y.mean()) > 0
    return float((pred.astype(np.int64) == y_test).mean())


def lag_bins(max_lag: int) -> list[tuple[int, int]]:
    """Bins ``[0, 0], [1, 1], [2, 3], [4, 7], ...`` covering ``0 .. max_lag``."""
    bins, lo = [(0, 0)], 1
    while lo <= max_lag:
        bins.append((lo, 2 * lo - 1))
        lo *= 2
    return bins


def copy_decoding(fn: StateFn, task: Task | str, lengths: Iterable[int], strings: int = 64,
                  seed: int = 0, method: str = "ridge", logits_fn: StateFn | None = None) -> pd.DataFrame:
    """Can the bit to be copied be read off the state at the copy point?

    For each length, ``strings`` members are drawn; even-numbered strings train
    the probe, odd-numbered ones test it (no string is in both). Every copy
    point (:func:`copy_points`) gives a row ``(p_{target-1}, w_j)``; rows are
    pooled over lengths and occurrences into lag bins (:func:`lag_bins`) and one
    probe is fit per (replica, bin). ``logits_fn``: optionally the model's own
    ``(B, T) -> (R, B, T+1, V)`` logits, to add its accuracy at the same points
    (column ``model_accuracy``; NaN otherwise). Columns: replica, lag_lo,
    lag_hi, train, test, probe_accuracy, model_accuracy.
    """
    task = _task(task)
    feats: dict[int, tuple] = {}  # per length: (states, logits, copy points, words)
    for n in lengths:
        x, bits = sample_words(task, n, strings, _rng(seed, 2, n))
        pts = copy_points(task, n)
        if pts.empty:
            raise ValueError(f"{task.name} never repeats a bit of w, so it has no copy points")
        P = _states(fn, x)
        L = None if logits_fn is None else np.asarray(logits_fn(x))
        feats[n] = (P, L, pts, bits)
    max_lag = max(int(f[2]["lag"].max()) for f in feats.values())
    R = next(iter(feats.values()))[0].shape[0]
    rows = []
    for lo, hi in lag_bins(max_lag):
        parts: dict[str, list] = {"train": [], "test": []}
        for n, (P, L, pts, bits) in feats.items():
            sel = pts[(pts["lag"] >= lo) & (pts["lag"] <= hi)]
            if sel.empty:
                continue
            t = sel["target"].to_numpy()
            j = sel["bit"].to_numpy()
            for split, rows_b in (("train", np.arange(0, strings, 2)), ("test", np.arange(1, strings, 2))):
                X = P[:, rows_b][:, :, t - 1]  # (R, b, points, D)
                y = bits[rows_b][:, j]  # (b, points)
                correct = None
                if L is not None:
                    sym = _copy_symbols(task, n, rows_b, t, j, bits)  # (b, points) indices
                    correct = (L[:, rows_b][:, :, t].argmax(-1) == sym[None])  # (R, b, points)
                parts[split].append((X.reshape(R, -1, X.shape[-1]), y.reshape(-1),
                                     None if correct is None else correct.reshape(R, -1)))
        if not parts["train"] or not parts["test"]:
            continue
        Xtr = np.concatenate([p[0] for p in parts["train"]], axis=1)
        ytr = np.concatenate([p[1] for p in parts["train"]])
        Xte = np.concatenate([p[0] for p in parts["test"]], axis=1)
        yte = np.concatenate([p[1] for p in parts["test"]])
        for r in range(R):
            acc = probe_accuracy(Xtr[r], ytr, Xte[r], yte, method)
            model_acc = (float(np.concatenate([p[2][r] for p in parts["test"]]).mean())
                         if logits_fn is not None else float("nan"))
            rows.append({"replica": r, "lag_lo": lo, "lag_hi": hi, "train": len(ytr), "test": len(yte),
                         "probe_accuracy": acc, "model_accuracy": model_acc})
    return pd.DataFrame(rows, columns=["replica", "lag_lo", "lag_hi", "train", "test", "probe_accuracy",
                                       "model_accuracy"])


def _copy_symbols(task: Task, length: int, rows: np.ndarray, targets: np.ndarray, bits_j: np.ndarray,
                  bits: np.ndarray) -> np.ndarray:
    """Alphabet indices of the symbols at ``targets`` (the copies of bits ``bits_j``): (rows, points)."""
    renaming = {p: ren for p, _, ren in word_tokens(task, length)}
    index = {s: i for i, s in enumerate(task.alphabet)}
    table = np.array([[index[renaming[int(t)][0]], index[renaming[int(t)][1]]] for t in targets])  # (points, 2)
    b = bits[rows][:, bits_j]  # (rows, points)
    return table[np.arange(len(targets))[None, :], b]


# ---- indicator 3: separation of point sets ---------------------------------
def prefix_window(task: Task | str, length: int, prefix_bits: int) -> tuple[int, int]:
    """State indices ``[start, stop)`` read after the prefix and before any of its bits reappears.

    ``start``: the state that has read one symbol past the prefix (``p_m`` for
    a prefix at positions ``0 .. m-1``); ``stop``: the position where a bit
    ``j < prefix_bits`` shows up again (``p_{stop-1}`` has not read it yet).
    """
    toks = word_tokens(task, length)
    first: dict[int, int] = {}
    for pos, j, _ in toks:
        first.setdefault(j, pos)
    if not 1 <= prefix_bits < len(first):
        raise ValueError(f"prefix_bits must be in [1, {len(first) - 1}] for length {length}, got {prefix_bits}")
    start = max(first[j] for j in range(prefix_bits)) + 1
    again = [pos for pos, j, _ in toks if j < prefix_bits and pos != first[j]]
    stop = min(again) if again else length
    if stop <= start:
        raise ValueError(f"no state between the prefix and its repetition at length {length}")
    return start, stop


def distinct_codes(rng: np.random.Generator, m: int, c: int) -> list[int]:
    """``c`` distinct random ``m``-bit codes (Python ints; ``c <= 2 ** m``). Up to 62 bits one draw
    without replacement; longer codes (the prefixes of the paper's test lengths run to 200 bits, past
    any machine integer) bit by bit, a repeat drawn again."""
    if c > 2 ** m:
        raise ValueError(f"{c} distinct codes of {m} bits asked for; there are only {2 ** m}")
    if m <= 62:
        return [int(x) for x in rng.choice(2 ** m, size=c, replace=False)]
    out: list[int] = []
    while len(out) < c:
        code = int("".join(map(str, rng.integers(0, 2, size=m).tolist())), 2)
        if code not in out:
            out.append(code)
    return out


def separation(fn: StateFn, task: Task | str, lengths: Iterable[int], classes: int = 4, per_class: int = 8,
               seed: int = 0) -> pd.DataFrame:
    """Between- / within-class distance of point sets, classes = first half of ``w``.

    For each length: ``classes`` distinct random prefixes ``u`` of
    ``ceil(|w|/2)`` bits (fewer if there are not that many), ``per_class``
    strings each (the rest of ``w`` uniform). A string's point set is
    restricted to the window of :func:`prefix_window`; the
    distance of two point sets is the mean over the window of the step
    distance. ``between`` / ``within`` = mean distance over pairs of strings
    from different / the same class; ``ratio = between / within`` (1: the
    states carry nothing of ``u`` beyond what the rest of the string does;
    ``inf``: the states depend on ``u`` only). Columns: replica, length,
    classes, window (states per point set), between, within, ratio.
    """
    task = _task(task)
    if classes < 2 or per_class < 2:
        raise ValueError(f"need classes >= 2 and per_class >= 2, got {classes} and {per_class}")
    rows = []
    for n in lengths:
        k = task._check_length(n)
        m = math.ceil(task.free_bits(k) / 2)
        c = min(classes, 2 ** m)  # short words have fewer prefixes than asked for
        rng = _rng(seed, 3, n)
        xs = []
        for code in distinct_codes(rng, m, c):
            prefix = [(code >> (m - 1 - i)) & 1 for i in range(m)]
            xs.append(sample_words(task, n, per_class, rng, prefix=prefix)[0])
        x = np.concatenate(xs)  # (classes * per_class, n)
        label = np.repeat(np.arange(c), per_class)
        start, stop = prefix_window(task, n, m)
        P = _states(fn, x)[:, :, start:stop]  # (R, N, W, D)
        D = _pair_distances(P)  # (R, N, N)
        same = label[:, None] == label[None, :]
        off = ~np.eye(len(label), dtype=bool)
        between = D[:, ~same].mean(-1)
        within = D[:, same & off].mean(-1)
        for r in range(P.shape[0]):
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.float64(between[r]) / np.float64(within[r])
            rows.append({"replica": r, "length": int(n), "classes": c, "window": stop - start,
                         "between": float(between[r]),
                         "within": float(within[r]), "ratio": float(ratio)})
    return pd.DataFrame(rows, columns=["replica", "length", "classes", "window", "between", "within", "ratio"])


def _pair_distances(P: np.ndarray) -> np.ndarray:
    """Mean step distance between every pair of point sets: (R, N, W, D) -> (R, N, N)."""
    R, N = P.shape[:2]
    out = np.empty((R, N, N))
    for a in range(N):
        out[:, a] = step_distance(P[:, a:a + 1], P).mean(-1)
    return out


# ---- trained groups ------------------------------------------------------------
def probe_lengths(task: Task | str, train_lengths: tuple[int, int], longest: int, points: int = 5) -> list[int]:
    """Valid lengths from the shortest training length to ``longest``, about geometrically spaced.

    The first two are the training range's ends (inside what the model saw),
    the others spread geometrically up to ``longest``.
    """
    task = _task(task)
    lo, hi = train_lengths
    targets = [lo, hi] + list(np.geomspace(hi, longest, max(points - 1, 2))[1:])
    valid = task.valid_lengths(lo, longest)
    out = []
    for t in targets:
        below = [n for n in valid if n <= round(t)]
        n = below[-1] if below else valid[0]
        if n not in out:
            out.append(n)
    return out


def replica_labels(configs: list[dict], records: list[dict]) -> pd.DataFrame:
    """One row per replica: task, model, freeze, seed, valid_ce, best, accuracy_first, accuracy_last.

    ``best``: the lowest validation cross-entropy of its freeze mode, diverged
    runs excluded (:func:`marnn.store.best_records`); ``accuracy_first`` /
    ``accuracy_last``: test accuracy on the first / last test bin.
    """
    from ..store import best_records

    withc = [dict(rec, config=c, replica=r) for r, (c, rec) in enumerate(zip(configs, records, strict=True))]
    best = {rec["replica"] for rec in best_records(withc, ("freeze",)).values()}
    rows = []
    for r, (c, rec) in enumerate(zip(configs, records, strict=True)):
        ce = rec.get("valid", {}).get("cross_entropy")
        ok = rec.get("diverged") is None and ce is not None and np.isfinite(ce)
        bins = list(rec.get("bins", {}).values())
        rows.append({"replica": r, "task": c["task"], "model": c["model"], "freeze": c["freeze"],
                     "seed": c["seed"], "valid_ce": ce if ok else np.nan, "best": r in best,
                     "accuracy_first": bins[0]["accuracy"] if bins else np.nan,
                     "accuracy_last": bins[-1]["accuracy"] if bins else np.nan})
    return pd.DataFrame(rows)


def analyse_group(group, lengths: Sequence[int], *, strings: int = 32, probe_strings: int = 64,
                  classes: int = 4, per_class: int = 8, seed: int = 0, method: str = "ridge",
                  threshold: float = SPAN_THRESHOLD) -> dict[str, pd.DataFrame]:
    """All three indicators of one trained replica group, labelled per replica.

    ``group``: a :class:`marnn.analysis.weights.Group`. Returns frames
    ``curve``, ``span``, ``decoding`` (state ``"state"`` and, for stack
    models, ``"reading"`` alone: column ``what``) and ``separation``, each
    with the columns of :func:`replica_labels`.
    """
    model, task = group.model, group.configs[0]["task"]
    labels = replica_labels(group.configs, group.records)
    cache: dict[bytes, dict] = {}

    def run(x):
        key = bytes(str(x.shape), "ascii") + x.tobytes()
        if key not in cache:
            cache[key] = forward_states(model, x)
        return cache[key]

    def states(what):
        return lambda x: _select(run(x), what)

    curve = divergence_curve(states("state"), task, lengths, strings=strings, seed=seed)
    out = {"curve": curve, "span": memory_span(curve, threshold=threshold, by=["replica", "length"])}
    whats = ["state"] + (["reading"] if model.core is not None else [])
    dec = [copy_decoding(states(w), task, lengths, strings=probe_strings, seed=seed, method=method,
                         logits_fn=lambda x: run(x)["logits"]).assign(what=w) for w in whats]
    out["decoding"] = pd.concat(dec, ignore_index=True)
    out["separation"] = separation(states("state"), task, lengths, classes=classes, per_class=per_class,
                                   seed=seed)
    return {name: labels.merge(frame, on="replica").drop(columns="replica") for name, frame in out.items()}


# Sample sizes per scale: smoke only has to exercise the code (nbval, CI).
SAMPLE_SIZES = {
    "smoke": dict(strings=16, probe_strings=32, per_class=4),
    "default": dict(strings=64, probe_strings=128, per_class=12),
}


def indicators(scale: str, tasks: Sequence[str], models: Sequence[str], *, seed: int = 0,
               threads: int | None = None, root=None, **sizes) -> dict[str, pd.DataFrame]:
    """:func:`analyse_group` for every (task, model), from the weights the grid kept (trained first where missing).

    Lengths per task: :func:`probe_lengths` from the scale's shortest training
    length to the end of its last test bin. Training (when a run is
    missing) runs silently, so that a first execution prints what a re-run that
    only loads prints. ``sizes`` override :data:`SAMPLE_SIZES`. Returns the
    four frames concatenated, plus ``lengths`` (task, length, kind: "train" or
    "test") and ``train_lags`` (task, the largest copy-point lag inside the
    training lengths).
    """
    import contextlib
    import io
    import warnings

    from ..scales import get_scale
    from .weights import trained_group

    sc = get_scale(scale)
    size = {**SAMPLE_SIZES.get(sc.name, SAMPLE_SIZES["default"]), **sizes}
    parts: dict[str, list[pd.DataFrame]] = {}
    meta, lags = [], []
    for task in tasks:
        lengths = probe_lengths(task, sc.train_lengths, sc.test_bins[-1][1])
        lo, hi = sc.train_lengths
        meta += [{"task": task, "length": n, "kind": "train" if lo <= n <= hi else "test"} for n in lengths]
        longest_train = _task(task).valid_lengths(lo, hi)[-1]
        lags.append({"task": task, "train_lag": int(copy_points(task, longest_train)["lag"].max())})
        for model in models:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                group = trained_group(task, model, sc.name, root=root, threads=threads)
            for name, frame in analyse_group(group, lengths, seed=seed, **size).items():
                parts.setdefault(name, []).append(frame)
    out = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    out["lengths"] = pd.DataFrame(meta)
    out["train_lags"] = pd.DataFrame(lags)
    return out


def summary(frames: dict[str, pd.DataFrame], best_only: bool = True) -> pd.DataFrame:
    """One row per (task, model, freeze) replica: the indicators inside and beyond training.

    ``frames``: the output of :func:`indicators`. Columns: the replica labels,
    ``span_train`` / ``span_longest`` (at the longest training length / the
    longest length), ``probe_train`` / ``probe_beyond`` (mean probe accuracy
    on the state over the lag bins inside / wholly beyond the training lags),
    ``model_beyond`` (the model's own accuracy at the same copy points beyond),
    ``reading_train`` / ``reading_beyond`` (the probe on the stack reading
    alone; NaN without a stack), ``separation_train`` / ``separation_longest``.
    """
    labels = ["task", "model", "freeze", "seed", "valid_ce", "best", "accuracy_first", "accuracy_last"]
    lengths = frames["lengths"]
    train_len = lengths[lengths["kind"] == "train"].groupby("task")["length"].max()
    longest = lengths.groupby("task")["length"].max()
    train_lag = frames["train_lags"].set_index("task")["train_lag"]

    def at(frame, which, column, name):
        sel = frame[frame["length"] == frame["task"].map(which)]
        return sel[labels + [column]].rename(columns={column: name})

    dec = frames["decoding"].copy()
    limit = dec["task"].map(train_lag)
    dec["where"] = np.where(dec["lag_hi"] <= limit, "train", np.where(dec["lag_lo"] > limit, "beyond", "mixed"))
    dec = dec[dec["where"] != "mixed"]
    probe = dec.pivot_table(index=labels, columns=["what", "where"], values="probe_accuracy", aggfunc="mean")
    own = dec[dec["what"] == "state"].pivot_table(index=labels, columns="where", values="model_accuracy",
                                                 aggfunc="mean")
    cols = {("state", "train"): "probe_train", ("state", "beyond"): "probe_beyond",
            ("reading", "train"): "reading_train", ("reading", "beyond"): "reading_beyond"}
    probe = probe.reindex(columns=list(cols))
    probe.columns = list(cols.values())
    probe["model_beyond"] = own.get("beyond")
    out = at(frames["span"], train_len, "span", "span_train")
    for part in (at(frames["span"], longest, "span", "span_longest"), probe.reset_index(),
                 at(frames["separation"], train_len, "ratio", "separation_train"),
                 at(frames["separation"], longest, "ratio", "separation_longest")):
        out = out.merge(part, on=labels, how="left")
    if best_only:
        out = out[out["best"]]
    order = ["span_train", "span_longest", "probe_train", "probe_beyond", "model_beyond", "reading_train",
             "reading_beyond", "separation_train", "separation_longest"]
    return out[labels + order].reset_index(drop=True)


# ---- the page's sentences, decided over restarts ----------------------------------
# The unit is a restart: the runs of one restart share its seed (and learning rate) across languages, models and
# modes. Per restart an indicator is averaged over the (language, model) cells a sentence is about, then the
# t interval over restarts (marnn.verdicts) is set against the sentence's margin (stability.restart_claim).
CHANCE = 0.5  # a probe that guesses the bit
# Equality margin of two probe accuracies, and how far above chance a probe may be and still read nothing: a
# tenth of the way from chance to a perfect readout. A readout right 55% of the time carries 0.007 bits of the
# bit (1 - H(0.55)), so within the margin of chance the state holds the bit in name only; and one probe accuracy
# near chance has a binomial standard error of up to 0.028 (320 held-out copy points, the fewest a lag bin has at
# the quick scale), so smaller gaps are below what one probe resolves.
PROBE_MARGIN = 0.05
TRAINED, RANDOM = ("none", "m"), "cm"  # the controller is trained / the network is the untrained one
HIGHER, LOWER, SAME = "higher than", "lower than", "about the same as"
CLAIM_COLUMNS = ["claim", "measure", "decided by", "cells", "restarts", "mean", "lo", "hi", "verdict", "note",
                 "runs"]


def _paired_diff(table: pd.DataFrame, col: str, a: Sequence[str], b: Sequence[str], label: str) -> pd.DataFrame:
    """Per (task, model, seed): the mean of ``col`` over modes ``a`` minus that over modes ``b`` (both present)."""
    keys = ["task", "model", "seed"]
    means = [table[table["freeze"].isin(m)].groupby(keys)[col].agg(lambda v: v.mean(skipna=False)) for m in (a, b)]
    diff = (means[0] - means[1]).dropna().rename("diff").reset_index()
    return diff.assign(freeze=label)


def comparison(per_restart: np.ndarray, margin: float = PROBE_MARGIN) -> dict:
    """A two-way comparison over restarts in words: :data:`SAME` when the t interval of the restart differences
    lies within ``+-margin`` (two one-sided tests), else :data:`HIGHER` / :data:`LOWER` when it lies above /
    below 0, else ``cannot tell at this scale`` (with the reason). Columns of
    :func:`marnn.analysis.stability.restart_claim`; a difference decided but inside the margin is called equal."""
    from .. import verdicts
    from .stability import restart_claim

    same = restart_claim(per_restart, "within", margin, (-1.0, 1.0))
    if same["verdict"] in (verdicts.HOLDS, "no cell applies"):
        return {**same, "verdict": SAME if same["verdict"] == verdicts.HOLDS else same["verdict"]}
    up = restart_claim(per_restart, "above", 0.0, (-1.0, 1.0))
    down = restart_claim(per_restart, "below", 0.0, (-1.0, 1.0))
    word = (HIGHER if up["verdict"] == verdicts.HOLDS else LOWER if down["verdict"] == verdicts.HOLDS else
            verdicts.UNSURE)
    r = same["restarts"]
    why = ("one restart gives no interval" if r < 2 else
           f"the {verdicts.LEVEL:.0%} interval over {r} restarts reaches both sides of 0 and beyond ±{margin:g}")
    note = f"{why}. {verdicts.design_note(r)}" if word == verdicts.UNSURE else ""
    return {**same, "verdict": word, "note": note}


def claims(table: pd.DataFrame) -> pd.DataFrame:
    """What the page says, each sentence decided over restarts (index ``claim``).

    ``table``: :func:`summary` with ``best_only=False`` (every restart). Rows:

    * ``span_outlasts``: in most trained runs (modes none, m) a flipped bit still moves the state at the last lag
      the longest strings show (span censored): the share of censored cells per restart, lower limit above 1/2;
    * ``probe_beyond_chance``: beyond the training lags a linear probe reads the trained state no better than
      chance: probe accuracy per restart, upper limit below :data:`CHANCE` + :data:`PROBE_MARGIN`;
    * ``moves_after_unreadable``: both of the above ("a symbol keeps moving the state after it has stopped being
      readable"), holds when both hold, does not hold when one does not;
    * ``probe_train_vs_random`` / ``probe_beyond_vs_random``: the trained state (mean of modes none and m)
      against the untrained network (mode cm) of the same language, model and restart, inside / beyond the
      training lags (:func:`comparison`, margin :data:`PROBE_MARGIN`);
    * ``reading_train_m_vs_none`` / ``reading_beyond_m_vs_none``: the stack reading alone, memory frozen at
      random (m) against trained (none), stack models only, paired likewise.

    ``verdict``: holds / does not hold / cannot tell for the first two, a :func:`comparison` word for the
    others; ``mean``, ``lo``, ``hi``: the restart mean and its 95% t interval (cut to the possible range);
    ``runs``: the runs or pairs that entered."""
    from .. import verdicts
    from .stability import restart_claim, restart_means

    trained = table[table["freeze"].isin(TRAINED)]
    span = trained["span_longest"].astype(float)
    trained = trained.assign(censored=np.where(span.isna(), np.nan, np.isinf(span).astype(float)))
    stack = table[table["model"] != "lstm"]
    rows = []

    def add(claim, runs, col, decided, result):
        rows.append({"claim": claim, "measure": col, "decided by": decided, **result, "runs": len(runs)})

    per, used = restart_means(trained, "censored")
    add("span_outlasts", trained, "share of trained runs with a censored span", "lower limit > 0.5",
        {**restart_claim(per, "above", 0.5, (0.0, 1.0)), "cells": used})
    per, used = restart_means(trained, "probe_beyond")
    bound = CHANCE + PROBE_MARGIN
    add("probe_beyond_chance", trained, "probe_beyond (trained)", f"upper limit < {bound:g}",
        {**restart_claim(per, "below", bound, (0.0, 1.0)), "cells": used})
    said = (rows[0]["verdict"], rows[1]["verdict"])  # each at (1 - LEVEL) / 2, so their conjunction is too
    word = (verdicts.HOLDS if said == (verdicts.HOLDS, verdicts.HOLDS) else
            verdicts.FAILS if verdicts.FAILS in said else verdicts.UNSURE)
    rows.append({"claim": "moves_after_unreadable", "measure": "span_outlasts and probe_beyond_chance",
                 "decided by": "both hold", "cells": rows[0]["cells"], "restarts": rows[0]["restarts"],
                 "mean": np.nan, "lo": np.nan, "hi": np.nan, "verdict": word, "runs": rows[0]["runs"],
                 "note": "" if word != verdicts.UNSURE else "one of its two parts cannot tell."})
    for col, a, b, label, runs in (("probe_train", TRAINED, (RANDOM,), "trained - cm", table),
                                   ("probe_beyond", TRAINED, (RANDOM,), "trained - cm", table),
                                   ("reading_train", ("m",), ("none",), "m - none", stack),
                                   ("reading_beyond", ("m",), ("none",), "m - none", stack)):
        pair = _paired_diff(runs, col, a, b, label) if len(runs) else pd.DataFrame(
            columns=["task", "model", "seed", "diff", "freeze"])
        per, used = restart_means(pair, "diff")
        claim = f"{col}_vs_random" if label == "trained - cm" else f"{col}_m_vs_none"
        add(claim, pair, f"{col} ({label})", f"interval within ±{PROBE_MARGIN:g}: same; above / below 0",
            {**comparison(per), "cells": used})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS).set_index("claim")


def restart_mean(table: pd.DataFrame, col: str, modes: Sequence[str]) -> float:
    """The mean over restarts of ``col`` averaged per restart over the cells of ``modes`` (descriptive)."""
    from .stability import restart_means

    per, _ = restart_means(table[table["freeze"].isin(modes)], col)
    return float(per.mean()) if len(per) else float("nan")


def findings(table: pd.DataFrame) -> str:
    """The page's closing sentences from :func:`summary` (``best_only=False``): every number a mean over
    restarts, every verdict word from :func:`claims`; why the restarts cannot tell where they cannot."""
    from .. import verdicts

    c = claims(table)
    v, m = c["verdict"], c["mean"]
    trained = table[table["freeze"].isin(TRAINED)]
    rnd = table[table["freeze"] == RANDOM]
    restarts = int(table["seed"].nunique())
    cens = int(np.isinf(trained["span_longest"].astype(float)).sum())
    cens_cm = int(np.isinf(rnd["span_longest"].astype(float)).sum())
    span_cm = float(rnd["span_longest"].replace(np.inf, np.nan).median())
    mean = {(col, name): restart_mean(table, col, modes) for col in ("probe_train", "probe_beyond", "model_beyond",
                                                                     "separation_train", "separation_longest")
            for name, modes in (("trained", TRAINED), ("random", (RANDOM,)))}
    stack = table[table["model"] != "lstm"]
    reading = {(col, mode): restart_mean(stack, col, (mode,)) for col in ("reading_train", "reading_beyond")
               for mode in ("m", "none")}

    def compared(claim, what):
        if v[claim] in (HIGHER, LOWER, SAME):
            return f"{what} scores {v[claim]} the random one ({m[claim]:+.3f} [{c.at[claim, 'lo']:+.3f}, " \
                   f"{c.at[claim, 'hi']:+.3f}])"
        return f"{what} cannot be told from the random one ({v[claim]})"

    def said(claim):
        return f"**{v[claim]}** ({m[claim]:.3f} [{c.at[claim, 'lo']:.3f}, {c.at[claim, 'hi']:.3f}])"

    out = [
        f"**Span.** Over all {restarts} restarts (descriptive counts), in {cens} of {len(trained)} trained runs a "
        f"single flipped bit still moves the state by at least {SPAN_THRESHOLD:.0%} of the distance between "
        f"unrelated strings at the last lag the longest strings show (span censored), against {cens_cm} of "
        f"{len(rnd)} random networks, whose median span on the longest strings is {span_cm:.0f} symbols. "
        f"\"Most trained runs have a censored span\" (share per restart, lower limit above one half): "
        f"{said('span_outlasts')}.",
        f"**Readable memory.** A linear probe recovers the bit to copy from a trained state with accuracy "
        f"{mean['probe_train', 'trained']:.3f} at the lags seen in training and "
        f"{mean['probe_beyond', 'trained']:.3f} beyond them (chance {CHANCE}; means over restarts); the trained "
        f"models' own predictions at those copy points beyond are correct {mean['model_beyond', 'trained']:.1%} "
        f"of the time. \"Beyond the training lags the probe reads no more than chance + {PROBE_MARGIN:g}\": "
        f"{said('probe_beyond_chance')}.",
    ]
    if v["moves_after_unreadable"] == verdicts.HOLDS:
        out.append("So a symbol can keep moving the state long after it has stopped being readable.")
    elif v["moves_after_unreadable"] == verdicts.UNSURE:
        out.append("Whether a symbol keeps moving the state after it has stopped being readable the restarts "
                   "cannot tell.")
    out.append(f"Random networks give {mean['probe_train', 'random']:.3f} and {mean['probe_beyond', 'random']:.3f}: "
               f"{compared('probe_train_vs_random', 'inside the training lags the trained state')}, "
               f"{compared('probe_beyond_vs_random', 'beyond them it')} (paired by language, model and restart; "
               f"equal within ±{PROBE_MARGIN:g}).")
    word = {HIGHER: "higher than", LOWER: "lower than", SAME: "about the same as"}
    frozen = (f"{word[v['reading_train_m_vs_none']]} the {reading['reading_train', 'none']:.3f} of a trained stack "
              f"(mode none)" if v["reading_train_m_vs_none"] in word else
              f"which the restarts cannot tell from the {reading['reading_train', 'none']:.3f} of a trained stack "
              f"(mode none)")
    beyond = (f"{word[v['reading_beyond_m_vs_none']]} trained" if v["reading_beyond_m_vs_none"] in word else
              "cannot tell")
    out.append(f"**Frozen random memory.** The stack reading alone decodes the bit with accuracy "
               f"{reading['reading_train', 'm']:.3f} inside the training lags when the stack's layers are frozen at "
               f"random (mode m), {frozen}; beyond the training lags {reading['reading_beyond', 'm']:.3f} against "
               f"{reading['reading_beyond', 'none']:.3f} ({beyond}).")
    out.append(f"**Separation** (descriptive). Trained point sets separate strings by the first half of w with a "
               f"ratio of {mean['separation_train', 'trained']:.3f} at the longest training length and "
               f"{mean['separation_longest', 'trained']:.3f} on the longest strings; random networks "
               f"{mean['separation_train', 'random']:.3f} and {mean['separation_longest', 'random']:.3f}.")
    notes = [f"*{k}*: {n.split('. ', 1)[0].rstrip('.')}." for k, n in zip(c.index, c["note"], strict=True) if n]
    if notes:
        out.append("Why the restarts cannot tell: " + " ".join(notes) + " " + verdicts.design_note(restarts))
    return "\n\n".join(out)


__all__ = [
    "WHATS", "SPAN_THRESHOLD", "MIN_COUNT", "PROBES", "forward_states", "trajectories", "state_fn",
    "step_distance", "typical_distance", "word_tokens", "copy_points", "fill_words", "sample_words", "divergence",
    "divergence_curve", "memory_span", "probe_accuracy", "lag_bins", "copy_decoding", "prefix_window",
    "separation", "probe_lengths", "replica_labels", "analyse_group", "SAMPLE_SIZES", "indicators",
    "summary", "CHANCE", "PROBE_MARGIN", "comparison", "claims", "restart_mean", "findings",
]
