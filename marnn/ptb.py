"""Penn Treebank (Mikolov's 10k-word version), vendored in ``data/ptb/``.

Every file is checked against ``SHA256SUMS.txt`` (checksums of the
*uncompressed* text) before use; a missing or corrupted file fails with a
message naming the file and the expected checksum.

Tokens: the words of each line followed by ``<eos>``. The vocabulary is the
10,000 word types of the training file (``<unk>`` included) plus ``<eos>``,
10,001 entries used for inputs and outputs alike (this is what makes the
published lstm-256 count 5,656,849 parameters). Counts with ``<eos>``:
929,589 / 73,760 / 82,430.

Batching for truncated BPTT (B parallel streams, chunks of T tokens)::

    stream  w0 w1 w2 ... w(N-1)                 one long token stream
              |  cut into B equal pieces, dropping the ragged tail
              v
    data    [ w0        w1        ... w(L-1)   ]   stream 0     shape (B, L)
            [ wL        wL+1      ... w(2L-1)  ]   stream 1
            [ ...                              ]
    chunk j inputs  = data[:, jT : jT+T]
            targets = data[:, jT+1 : jT+T+1]      (the next token of each input)

The hidden and stack state of stream b at the end of chunk j is the initial
state of stream b in chunk j+1 (carried, detached).
"""
from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import PTB_DATA

ROOT = PTB_DATA
SPLITS = ("train", "valid", "test")
EOS = "<eos>"
BOS = "<bos>"  # reserved, never fed (see module docstring)
EXPECTED_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}


class ChecksumError(RuntimeError):
    """A PTB file is missing or does not match its recorded SHA-256."""


def _expected_checksums(root: Path) -> dict[str, str]:
    sums = root / "SHA256SUMS.txt"
    if not sums.exists():
        raise ChecksumError(f"{sums} is missing: cannot verify the PTB files")
    out = {}
    try:
        text = sums.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ChecksumError(f"{sums} cannot be read ({err})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        digest = parts[0].lower() if parts else ""
        if len(parts) != 2 or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise ChecksumError(f"{sums} line {i} is malformed ({line.strip()[:80]!r}); "
                                "accepted: '<64 hex digits> <file name>' per line")
        out[parts[1].lstrip("*")] = digest
    return out


def verify(root: str | Path | None = None) -> None:
    """Check every split's file against ``SHA256SUMS.txt`` (ChecksumError naming the
    file and the expected checksum otherwise), without tokenising them."""
    for split in SPLITS:
        _verified_bytes(split, Path(root) if root else ROOT)


def _verified_bytes(split: str, root: Path) -> bytes:
    name = f"ptb.{split}.txt"
    expected = _expected_checksums(root).get(name)
    path = root / f"{name}.gz"
    if expected is None:
        raise ChecksumError(f"{root / 'SHA256SUMS.txt'} has no entry for {name}")
    if not path.exists():
        raise ChecksumError(f"{path} is missing (expected SHA-256 of {name}: {expected})")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:
        raise ChecksumError(f"{path} is not a readable gzip file ({err}); "
                            f"expected SHA-256 of {name}: {expected}") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise ChecksumError(f"{path}: SHA-256 of {name} is {actual}, expected {expected}")
    return raw


def read_split(split: str, root: str | Path | None = None) -> list[str]:
    """Verified tokens of one split, ``<eos>`` after every line."""
    if split not in SPLITS:
        raise ValueError(f"unknown PTB split {split!r}; valid splits: {', '.join(SPLITS)}")
    raw = _verified_bytes(split, Path(root) if root else ROOT)
    tokens: list[str] = []
    for line in raw.decode("utf-8").splitlines():
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


@dataclass
class Corpus:
    vocab: list[str]  # index -> word; 10,001 entries, <eos> and <bos> last
    train: torch.Tensor  # (929589,) long
    valid: torch.Tensor  # (73760,) long
    test: torch.Tensor  # (82430,) long

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids) -> list[str]:
        return [self.vocab[int(i)] for i in ids]


def load_corpus(root: str | Path | None = None) -> Corpus:
    """Load and verify the three splits and build the vocabulary from training."""
    words = {s: read_split(s, root) for s in SPLITS}
    vocab = sorted(set(words["train"]) - {EOS}) + [EOS, BOS]
    index = {w: i for i, w in enumerate(vocab)}
    unk = index["<unk>"]
    tensors = {s: torch.tensor([index.get(w, unk) for w in ws], dtype=torch.long) for s, ws in words.items()}
    return Corpus(vocab, tensors["train"], tensors["valid"], tensors["test"])


def batchify(tokens: torch.Tensor, streams: int) -> torch.Tensor:
    """Cut one token stream into ``streams`` equal parallel streams: ``(B, L)``."""
    length = tokens.numel() // streams
    if length < 2:
        raise ValueError(f"{tokens.numel()} tokens are too few for {streams} streams")
    return tokens[: streams * length].view(streams, length)


def chunks(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(inputs, targets)`` chunks of at most ``bptt`` tokens, each ``(B, T)``."""
    for start in range(0, data.shape[1] - 1, bptt):
        t = min(bptt, data.shape[1] - 1 - start)
        yield data[:, start : start + t], data[:, start + 1 : start + 1 + t]


def num_chunks(data: torch.Tensor, bptt: int) -> int:
    return -(-(data.shape[1] - 1) // bptt)
