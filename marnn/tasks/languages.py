"""The seven languages of Das & Mali (2024), Section 5 (docs: book/reference/languages.md).

Each class only states its template; everything else comes from :class:`Task`.
``W(k)`` is the word ``w`` itself, ``R(k)`` its reverse.
"""
from __future__ import annotations

from ..registry import TASKS, lookup
from .base import IDENTITY, Task

PHI = ("2", "3")  # unmarked-copy-different-alphabets: 0 -> 2, 1 -> 3


def W(k: int, ren=IDENTITY):
    return [("w", j, ren) for j in range(k)]


def R(k: int):
    return [("w", j, IDENTITY) for j in reversed(range(k))]


def lit(sym: str, times: int = 1):
    return [("lit", sym)] * times


class Count3(Task):
    """a^n b^n c^n: no randomness, the first ``b`` reveals n."""

    name = "count-3"
    alphabet = ("a", "b", "c")
    sections = 3

    def template(self, k):
        return lit("a", k) + lit("b", k) + lit("c", k)

    def free_bits(self, k):
        return 0

    def _identifiable_correct(self, lengths):
        # Prefix a^t: lengths with n > t predict "a", n = t predicts "b";
        # after the first b everything (2n symbols incl. EOS) is determined.
        ns = [self.k_of(n) for n in lengths]
        p = 1.0 / len(ns)
        total = sum(max(p * sum(n > t for n in ns), p * sum(n == t for n in ns)) for t in range(max(ns) + 1))
        return total + p * sum(2 * n for n in ns)


class MarkedReverseAndCopy(Task):
    """w # reverse(w) # w."""

    name = "marked-reverse-and-copy"
    alphabet = ("0", "1", "#")
    sections, markers = 3, 2

    def template(self, k):
        return W(k) + lit("#") + R(k) + lit("#") + W(k)


class CountAndCopy(Task):
    """w #^|w| w."""

    name = "count-and-copy"
    alphabet = ("0", "1", "#")
    sections = 3

    def template(self, k):
        return W(k) + lit("#", k) + W(k)


class MarkedCopy(Task):
    """w # w."""

    name = "marked-copy"
    alphabet = ("0", "1", "#")
    sections, markers = 2, 1

    def template(self, k):
        return W(k) + lit("#") + W(k)


class UnmarkedCopyDifferentAlphabets(Task):
    """w phi(w) with phi: 0 -> 2, 1 -> 3."""

    name = "unmarked-copy-different-alphabets"
    alphabet = ("0", "1", "2", "3")
    sections = 2

    def template(self, k):
        return W(k) + W(k, PHI)


class UnmarkedReverseAndCopy(Task):
    """w reverse(w) w: nothing marks where w ends."""

    name = "unmarked-reverse-and-copy"
    alphabet = ("0", "1")
    sections = 3
    identifiable = False

    def template(self, k):
        return W(k) + R(k) + W(k)


class UnmarkedCopy(Task):
    """w w: nothing marks where w ends."""

    name = "unmarked-copy"
    alphabet = ("0", "1")
    sections = 2
    identifiable = False

    def template(self, k):
        return W(k) + W(k)


# Every language by its name, in the order of the paper's tables (:data:`marnn.registry.TASKS`,
# which names them; a class missing here fails at import).
_CLASSES = {cls.name: cls for cls in (Count3, MarkedReverseAndCopy, CountAndCopy, MarkedCopy,
                                      UnmarkedCopyDifferentAlphabets, UnmarkedReverseAndCopy, UnmarkedCopy)}
REGISTRY: dict[str, type[Task]] = {name: _CLASSES[name] for name in TASKS}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def names() -> tuple[str, ...]:
    """Task names in the order of the paper's tables."""
    return NAMES


def get(name: str) -> Task:
    """The task called ``name``; an unknown name lists every valid one."""
    return lookup("task", name, REGISTRY)()
