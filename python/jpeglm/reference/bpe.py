"""Byte-level BPE in plain Python: the specification the native code (``csrc/bpe.cpp``) is
tested against. Short and slow on purpose — read this to know what the fast code does.

* **Training** (:func:`train`): start from one symbol per byte (ids 0-255); at every step count
  all adjacent pairs (never across documents), take the most frequent — ties go to the smallest
  ``(left, right)`` pair of ids — and merge it everywhere, left to right. The new token gets the
  next id. A pair whose bytes equal an existing token merges into that token (no new id); a pair
  whose bytes would exceed :data:`MAX_TOKEN_BYTES` is never merged. Stops after ``num_merges``
  new tokens or when no pair is left.
* **Encoding** (:func:`encode`, tiktoken's rule): start from single bytes; repeatedly merge the
  adjacent pair whose concatenated bytes is the token of the lowest rank, the leftmost among
  equal ranks, until no adjacent pair concatenates to a token.
* **Decoding** (:func:`decode`): concatenate the tokens' bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["MAX_TOKEN_BYTES", "decode", "encode", "encode_pieces", "train", "vocab_from_merges"]

#: The longest token training may create (the native code's limit).
MAX_TOKEN_BYTES = 1 << 16


def _merge(seq: list[int], a: int, b: int, t: int) -> list[int]:
    """``seq`` with every ``(a, b)`` replaced by ``t``, scanning left to right."""
    out: list[int] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(t)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train(corpus: Iterable[bytes], num_merges: int) -> list[tuple[int, int]]:
    """The ``(left, right)`` pair that created each new token ``256, 257, ...``, in order."""
    seqs = [list(doc) for doc in corpus if len(doc) > 0]
    tokens = [bytes([b]) for b in range(256)]
    index = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[int, int]] = []
    excluded: set[tuple[int, int]] = set()
    while len(merges) < num_merges:
        counts: Counter[tuple[int, int]] = Counter()
        for seq in seqs:
            counts.update(zip(seq, seq[1:]))
        candidates = [(-c, pair) for pair, c in counts.items() if pair not in excluded]
        if not candidates:
            break
        _, (a, b) = min(candidates)  # highest count, then the smallest pair
        joined = tokens[a] + tokens[b]
        if len(joined) > MAX_TOKEN_BYTES:
            excluded.add((a, b))
            continue
        t = index.get(joined)
        if t is None:
            t = index[joined] = len(tokens)
            tokens.append(joined)
            merges.append((a, b))
        seqs = [_merge(seq, a, b, t) for seq in seqs]
    return merges


def vocab_from_merges(merges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Token bytes by id: the 256 single bytes, then one token per merge."""
    tokens = [bytes([b]) for b in range(256)]
    for a, b in merges:
        tokens.append(tokens[a] + tokens[b])
    return tokens


def encode_pieces(data: bytes, ranks: Mapping[bytes, int]) -> list[bytes]:
    """The byte strings ``data`` splits into (``ranks``: token bytes -> merge rank)."""
    parts = [data[i : i + 1] for i in range(len(data))]
    while True:
        best: tuple[int, int] | None = None  # (rank, position)
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def encode(data: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Token ids of ``data`` when ids equal ranks (tiktoken's ``mergeable_ranks``)."""
    return [ranks[p] for p in encode_pieces(data, ranks)]


def decode(ids: Iterable[int], tokens: Sequence[bytes]) -> bytes:
    """The bytes of ``ids`` (``tokens``: bytes by id)."""
    return b"".join(tokens[i] for i in ids)
