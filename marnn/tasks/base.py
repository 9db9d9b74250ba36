"""The base class shared by the seven formal languages.

Every language of the paper (docs: book/reference/languages.md) is a *template*
over a uniformly random binary word ``w`` of length ``k``: for each valid string
length the template lists, position by position, either a literal symbol
(a marker such as ``#``) or "symbol ``w[j]``, possibly renamed" (``phi`` maps
0->2, 1->3 in unmarked-copy-different-alphabets). Everything a split needs is
derived from that template *exactly*:

* ``sample`` fills the template with a random ``w``;
* ``contains`` checks a string against the template of its length;
* the lower bound is the entropy of the split's distribution,

  .. math:: H = \\frac{\\mathbb{E}[-\\log p(s)]}{\\mathbb{E}[|s|+1]},\\qquad
            -\\log p(s) = \\log N + k \\log 2

  with ``N`` valid lengths in the split and ``k`` free bits;
* the accuracy ceiling is the expected number of correct argmax predictions of
  the Bayes predictor (which knows the split's length distribution but not the
  string's length) over the expected number of predicted symbols;
* trivial baselines (chance, most frequent symbol, repeat the previous symbol)
  follow from symbol-equality probabilities of template positions.

A split ``[lo, hi]`` draws the length uniformly over the valid lengths in the
range and ``w`` uniformly given the length; EOS is predicted after the last
symbol and never fed as an input.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

EOS = "<eos>"

# A template token: ("lit", symbol) or ("w", index, renaming) where renaming is a
# tuple mapping bit 0/1 to the emitted symbol, e.g. ("0", "1") or ("2", "3").
Token = tuple

IDENTITY = ("0", "1")


@dataclass(frozen=True)
class Reference:
    """A split-level reference value: per-symbol accuracy and cross-entropy (nats).

    ``exact`` is False only where the value is a proven bound rather than the
    exact optimum (see :meth:`Task.accuracy_ceiling`).
    """

    accuracy: float
    cross_entropy: float = float("nan")
    exact: bool = True


class Task:
    """A formal language of the paper; subclasses define :meth:`template`."""

    name: str = ""
    alphabet: tuple[str, ...] = ()
    sections: int = 1  # how many equal parts (length - markers) divides into
    markers: int = 0  # literal marker symbols independent of the length
    identifiable: bool = True  # does the first symbol after w reveal |w|?

    # ---- structure -------------------------------------------------------
    def template(self, k: int) -> list[Token]:  # pragma: no cover - abstract
        raise NotImplementedError

    def free_bits(self, k: int) -> int:
        """Number of uniformly random bits in a string with parameter ``k``."""
        return k

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output symbols of a language model: the alphabet plus EOS (last)."""
        return self.alphabet + (EOS,)

    def k_of(self, length: int) -> int | None:
        rest = length - self.markers
        if length < 0 or rest < self.sections or rest % self.sections:
            return None
        return rest // self.sections

    def is_valid_length(self, length: int) -> bool:
        return self.k_of(length) is not None

    def valid_lengths(self, lo: int, hi: int) -> list[int]:
        """All valid string lengths in the closed range ``[lo, hi]``."""
        if lo > hi:
            raise ValueError(f"empty length range [{lo}, {hi}]")
        return [n for n in range(max(lo, 0), hi + 1) if self.is_valid_length(n)]

    def _check_length(self, length: int) -> int:
        k = self.k_of(int(length))
        if k is None:
            raise ValueError(
                f"{self.name}: length {length} is not valid; valid lengths are "
                f"{self.markers} + {self.sections}*k for k >= 1 "
                f"(e.g. {self.valid_lengths(1, 3 * self.sections + self.markers)[:4]})"
            )
        return k

    # ---- strings ---------------------------------------------------------
    def fill(self, k: int, bits: Sequence[int]) -> list[str]:
        return [tok[1] if tok[0] == "lit" else tok[2][bits[tok[1]]] for tok in self.template(k)]

    def sample(self, length: int, rng: np.random.Generator) -> list[str]:
        """A uniformly random member of the given length."""
        k = self._check_length(length)
        bits = rng.integers(0, 2, size=self.free_bits(k)).tolist()
        return self.fill(k, bits)

    def contains(self, symbols: Sequence[str]) -> bool:
        symbols = list(symbols)
        k = self.k_of(len(symbols))
        if k is None:
            return False
        bits: dict[int, int] = {}
        for sym, tok in zip(symbols, self.template(k), strict=True):
            if tok[0] == "lit":
                if sym != tok[1]:
                    return False
                continue
            _, j, ren = tok
            if sym not in ren:
                return False
            b = ren.index(sym)
            if bits.setdefault(j, b) != b:
                return False
        return True

    def enumerate(self, length: int):
        """Every member of the given length (small lengths only)."""
        k = self._check_length(length)
        for bits in product((0, 1), repeat=self.free_bits(k)):
            yield self.fill(k, bits)

    # ---- split-level references -----------------------------------------
    def _split(self, lo: int, hi: int) -> tuple[list[int], float]:
        lengths = self.valid_lengths(lo, hi)
        if not lengths:
            raise ValueError(f"{self.name}: no valid length in [{lo}, {hi}]")
        mean_predicted = sum(n + 1 for n in lengths) / len(lengths)
        return lengths, mean_predicted

    def lower_bound(self, lo: int, hi: int) -> float:
        """Optimal per-symbol cross-entropy (nats) of the split, EOS included."""
        lengths, denom = self._split(lo, hi)
        bits = sum(self.free_bits(self._check_length(n)) for n in lengths)
        nll = math.log(len(lengths)) + bits / len(lengths) * math.log(2)
        return nll / denom

    def accuracy_ceiling(self, lo: int, hi: int) -> Reference:
        """Per-symbol accuracy of the Bayes predictor for the split.

        Exact in closed form for languages whose length is revealed by the first
        symbol after ``w``; for the two unmarked languages it is exact by
        enumeration when the split has at most 2**16 strings, otherwise the
        exact accuracy of a predictor that is *told* the length (an upper bound,
        flagged ``exact=False``), because no finite-state shortcut is known for
        the accidental self-overlaps of ``w``.
        """
        lengths, denom = self._split(lo, hi)
        if self.identifiable:
            return Reference(self._identifiable_correct(lengths) / denom, self.lower_bound(lo, hi))
        if sum(2 ** self.free_bits(self._check_length(n)) for n in lengths) <= 2**16:
            return Reference(bayes_accuracy_bruteforce(self, lo, hi), self.lower_bound(lo, hi))
        oracle = sum(0.5 * self._check_length(n) + (n + 1 - self._check_length(n)) for n in lengths) / len(lengths)
        return Reference(oracle / denom, self.lower_bound(lo, hi), exact=False)

    def _identifiable_correct(self, lengths: list[int]) -> float:
        """Expected number of correct Bayes predictions per string.

        Before the first symbol after ``w`` (position ``t < k``) all lengths with
        ``k' >= t`` are consistent with any prefix; lengths with ``k' > t`` put
        probability 1/2 on each bit, ``k' = t`` puts all of it on the revealing
        symbol, so summing ``max_a P(prefix, a)`` over the ``2**t`` prefixes
        gives ``max(P(k > t) / 2, P(k = t))``. After the revealing symbol every
        remaining symbol, EOS included, is determined.
        """
        ks = [self._check_length(n) for n in lengths]
        p = 1.0 / len(ks)
        total = 0.0
        for t in range(max(ks) + 1):
            more = p * sum(k > t for k in ks)
            equal = p * sum(k == t for k in ks)
            total += max(more / 2, equal)
        total += p * sum(n - k for n, k in zip(lengths, ks, strict=True))
        return total

    def _symbol_expectations(self, k: int) -> tuple[dict[str, float], list[float]]:
        """Expected count of each output symbol, and P(s_i == s_{i-1}) for i >= 1."""
        tpl = self.template(k)
        counts: dict[str, float] = defaultdict(float)
        for tok in tpl:
            if tok[0] == "lit":
                counts[tok[1]] += 1
            else:
                counts[tok[2][0]] += 0.5
                counts[tok[2][1]] += 0.5
        counts[EOS] += 1

        def p_equal(a: Token, b: Token) -> float:
            if a[0] == "lit" and b[0] == "lit":
                return float(a[1] == b[1])
            if a[0] == "lit" or b[0] == "lit":
                lit, w = (a, b) if a[0] == "lit" else (b, a)
                return 0.5 if lit[1] in w[2] else 0.0
            if a[1] == b[1]:
                return float(a[2] == b[2])
            return 0.5 if a[2] == b[2] else 0.0

        repeats = [p_equal(tpl[i - 1], tpl[i]) for i in range(1, len(tpl))]
        return counts, repeats

    def baselines(self, lo: int, hi: int) -> dict[str, Reference]:
        """Trivial predictors, exactly: chance, most frequent symbol, repeat previous.

        * ``chance``: a uniform guess over the outputs (alphabet + EOS).
        * ``most-frequent``: always predict the split's most frequent output;
          its cross-entropy is that of the split's unigram distribution.
        * ``repeat-previous``: predict the previous symbol (the most likely first
          symbol at position 0, so EOS is never predicted); no cross-entropy.
        """
        lengths, denom = self._split(lo, hi)
        v = len(self.outputs)
        counts: dict[str, float] = defaultdict(float)
        repeat_correct = 0.0
        for n in lengths:
            k = self._check_length(n)
            c, rep = self._symbol_expectations(k)
            for s, x in c.items():
                counts[s] += x / len(lengths)
            first = self.template(k)[0]
            first_p = 1.0 if first[0] == "lit" else 0.5
            repeat_correct += (first_p + sum(rep)) / len(lengths)
        freqs = {s: x / denom for s, x in counts.items()}
        unigram_ce = -sum(f * math.log(f) for f in freqs.values() if f > 0)
        return {
            "chance": Reference(1.0 / v, math.log(v)),
            "most-frequent": Reference(max(freqs.values()), unigram_ce),
            "repeat-previous": Reference(repeat_correct / denom),
        }

    def __repr__(self) -> str:
        return f"<Task {self.name} alphabet={list(self.alphabet)}>"


def split_distribution(task: Task, lo: int, hi: int):
    """Yield (string, probability) over every member of the split (small splits only)."""
    lengths = task.valid_lengths(lo, hi)
    for n in lengths:
        k = task._check_length(n)
        p = 1.0 / len(lengths) / 2 ** task.free_bits(k)
        for s in task.enumerate(n):
            yield s, p


def bayes_accuracy_bruteforce(task: Task, lo: int, hi: int) -> float:
    """Bayes-optimal per-symbol accuracy by enumerating every string of the split."""
    joint: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    denom = 0.0
    for s, p in split_distribution(task, lo, hi):
        full = list(s) + [EOS]
        denom += p * len(full)
        for t, sym in enumerate(full):
            joint[tuple(full[:t])][sym] += p
    correct = sum(max(d.values()) for d in joint.values())
    return correct / denom
