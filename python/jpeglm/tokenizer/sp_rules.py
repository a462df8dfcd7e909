"""sentencepiece's dummy prefix and byte fallback, emulated in Python around the native BPE
(:class:`jpeglm.tokenizer.bpe.Tokenizer` builds a :class:`SentencePieceRules` only for a
sentencepiece model that has them; plain tokenizers never come here).

**Dummy prefix** (``add_dummy_prefix``, sentencepiece's default): sentencepiece encodes
``"▁" + text`` for a non-empty text (the empty text stays ``[]``). The ``"▁"`` symbol merges only
with what follows it, into pieces ``"▁" + braille`` (their ids are special tokens here: they
never come out of the native encoder). When ``"▁"`` alone is the only such piece the ids are
``[id("▁")] + encode(text)``. Otherwise the first symbol may absorb the first bytes:
:meth:`SentencePieceRules.encode` runs sentencepiece's score-ordered BPE in Python on a window
``"▁" + text[:p]`` to find the bytes ``text[:m]`` the first symbol ends with, encodes
``text[m:]`` natively, and accepts the result when ``p - m`` is a token boundary of that
encoding; else it doubles the window (at worst it is the whole text, which is exact by
construction). Why that is exact: symbols never merge across a final token boundary, so the
spans on either side of one evolve as if encoded alone, in the same relative order; if the
first symbol crossed ``m`` in the whole text, the same merge would come first in the window,
where it did not (the window's ``[m, p)`` evolves as ``text[m:p]`` alone since ``p`` is a
boundary of ``text[m:]``).

**Byte fallback** (``byte_fallback``): a byte without a braille piece is not unk but the three
UTF-8 bytes of its braille character, as the byte pieces ``<0xE2>`` ``<0xA0|b>>6>``
``<0x80|b&63>``; runs are not fused. Decoding reads a run of byte pieces as UTF-8 (invalid
sequences become U+FFFD, as Python's ``errors="replace"``) and keeps the braille characters
of it as bytes; any other character (U+FFFD, ``▁``, text) is dropped.
"""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ["SentencePieceRules"]

_BRAILLE = 0x2800


def _is_braille(c: str) -> bool:
    return _BRAILLE <= ord(c) <= _BRAILLE + 0xFF


def _braille_bytes(text: str) -> bytes | None:
    if not text or not all(map(_is_braille, text)):
        return None
    return bytes(ord(c) - _BRAILLE for c in text)


class SentencePieceRules:
    """The dummy prefix and byte fallback of one tokenizer (see the module docstring).

    ``prefix``: special token id -> merge rank of every piece made of the dummy-prefix character
    (``"▁"``) and braille characters, the bare prefix among them (its rank is unused); None
    when the model adds no dummy prefix. ``byte_pieces``: the ids of ``<0x00>`` .. ``<0xFF>``,
    or None. ``tokens``/``ranks``/``names``/``unk``/``fuse_unk``: the tokenizer's parts.
    ValueError for inconsistent parts.
    """

    def __init__(
        self,
        tokens: list[bytes | None],
        ranks: list[int],
        names: dict[int, str],
        unk: int | None,
        fuse_unk: bool,
        prefix: dict[int, int] | None,
        byte_pieces: tuple[int, ...] | None,
    ) -> None:
        def special(i: Any, what: str) -> int:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tokens):
                raise ValueError(f"{what} id {i!r} is out of range")
            if tokens[i] is not None:
                raise ValueError(f"{what} id {i} is not a special token")
            return i

        self.unk, self.fuse_unk = unk, fuse_unk
        self.lengths = [0 if t is None else len(t) for t in tokens]
        self.known = bytearray(256)  # the bytes that have a token of their own
        for t in tokens:
            if t is not None and len(t) == 1:
                self.known[t[0]] = 1
        # decoding: special ids that have bytes
        self.extra: dict[int, bytes] = {}
        self.prefix_id: int | None = None
        self.prefixed: dict[bytes, tuple[int, int]] = {}  # bytes after "▁" -> (rank, id)
        if prefix is not None:
            chars = set()
            for i, rank in prefix.items():
                name = names.get(special(i, "dummy-prefix piece"), "")
                rest = _braille_bytes(name[1:]) if len(name) > 1 else b""
                if rest is None or not isinstance(rank, int):
                    raise ValueError(f"dummy-prefix piece {i} ({name!r}) is not a prefix + bytes")
                chars.add(name[0])
                if rest in self.prefixed:
                    raise ValueError(f"dummy-prefix pieces {i} and {self.prefixed[rest][1]} agree")
                self.prefixed[rest] = (rank, i)
                self.extra[i] = rest
            if len(chars) > 1 or b"" not in self.prefixed:
                raise ValueError("the dummy-prefix pieces need one bare prefix piece (e.g. '▁')")
            self.prefix_id = self.prefixed[b""][1]
        self.merged = len(self.prefixed) > 1
        self.longest = max(map(len, self.prefixed), default=0)
        self.pieces = {t: r for t, r in zip(tokens, ranks) if t is not None and len(t) > 1}
        self.byte_ids: tuple[int, ...] | None = None
        self.byte_of: dict[int, int] = {}
        if byte_pieces is not None:
            if len(byte_pieces) != 256 or len(set(byte_pieces)) != 256:
                raise ValueError("byte fallback needs 256 distinct byte pieces")
            self.byte_ids = tuple(special(i, "byte piece") for i in byte_pieces)
            self.byte_of = {i: b for b, i in enumerate(self.byte_ids)}
            if unk is None or fuse_unk:
                raise ValueError("byte fallback needs an unk token and unfused unks")

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, bpe: Any, data: Any) -> list[int]:
        """sentencepiece's ids of ``data`` (a bytes-like buffer), ``bpe`` the native encoder."""
        mv = memoryview(data).cast("B")
        if self.prefix_id is None:
            ids, m = bpe.encode(mv), 0
        elif not len(mv):
            return []
        elif not self.merged:
            ids, m = bpe.encode(mv), 0
            ids.insert(0, self.prefix_id)
        else:
            b = bytes(mv)
            m, ids = self._prefixed(bpe, b)
            ids.insert(0, self.prefixed[b[:m]][1])
        if self.byte_ids is not None and self.unk in ids:
            ids = self._fall_back(ids, mv, m, 1 if self.prefix_id is not None else 0)
        return ids

    def _prefixed(self, bpe: Any, b: bytes) -> tuple[int, list[int]]:
        """(m, native ids of b[m:]): the first symbol is "▁" + b[:m] (module docstring)."""
        n = len(b)
        p = min(n, max(64, 4 * self.longest))
        while True:
            m = self._window(b[:p])
            rest = bpe.encode(memoryview(b)[m:])
            if p == n or self._boundary(rest, b, m, p):
                return m, rest
            p = min(n, 2 * p)

    def _window(self, w: bytes) -> int:
        """sentencepiece's BPE of "▁" + w: how many bytes of w the first symbol ends with.
        Symbol 0 is the prefix, symbol k >= 1 starts as byte w[k-1]; a pair is (rank, left
        symbol) in a heap, the lowest first (sentencepiece: highest score, then leftmost)."""
        n = len(w)
        end = list(range(n + 1))  # symbol k covers w[start(k):end[k]]; symbol 0: w[0:end[0]]
        nxt = list(range(1, n + 2))
        nxt[n] = -1
        prv = list(range(-1, n))
        alive = [True] * (n + 1)
        heap: list[tuple[int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j < 0:
                return
            if i == 0:
                hit = self.prefixed.get(w[: end[j]])
                rank = None if hit is None else hit[0]
            else:
                rank = self.pieces.get(w[i - 1 : end[j]])
            if rank is not None:
                heapq.heappush(heap, (rank, i, j, end[j]))

        for i in range(n):
            push(i)
        while heap:
            _, i, j, e = heapq.heappop(heap)
            if not (alive[i] and nxt[i] == j and alive[j] and end[j] == e):
                continue
            end[i], alive[j], nxt[i] = e, False, nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            push(i)
            if prv[i] >= 0:
                push(prv[i])
        return end[0]

    def _span(self, t: int, b: bytes | memoryview, pos: int) -> int:
        """Where token ``t`` of the native encoding of ``b`` starting at ``pos`` ends."""
        if t != self.unk:
            return pos + self.lengths[t]
        if not self.fuse_unk:
            return pos + 1
        pos += 1
        while pos < len(b) and not self.known[b[pos]]:
            pos += 1
        return pos

    def _boundary(self, rest: list[int], b: bytes, m: int, p: int) -> bool:
        """Whether ``p`` is a token boundary of ``rest``, the native ids of ``b[m:]``."""
        pos = m
        for t in rest:
            if pos >= p:
                break
            pos = self._span(t, b, pos)
        return pos == p

    def _fall_back(self, ids: list[int], b: memoryview, pos: int, skip: int) -> list[int]:
        """Each unk (one byte without a piece; unks are not fused) as the byte pieces of the
        UTF-8 of its braille character; ``ids[skip:]`` encode ``b[pos:]``."""
        out = ids[:skip]
        byte_ids = self.byte_ids
        assert byte_ids is not None
        for t in ids[skip:]:
            if t == self.unk:
                x = b[pos]
                out += (byte_ids[0xE2], byte_ids[0xA0 | x >> 6], byte_ids[0x80 | x & 0x3F])
            else:
                out.append(t)
            pos = self._span(t, b, pos)
        return out

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, bpe: Any, ids: Any, skip_special: bool) -> bytes:
        """The bytes of ``ids``: prefix pieces give their bytes (the ``"▁"`` dropped), runs of
        byte pieces their braille characters as bytes; the rest as the native decoder does."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if not any(i in self.extra or i in self.byte_of for i in ids):
            return bpe.decode(ids, skip_special)
        out: list[bytes] = []
        run: list[int] = []  # native ids
        raw = bytearray()  # byte pieces
        for i in [*ids, None]:
            if run and (i is None or i in self.extra or i in self.byte_of):
                out.append(bpe.decode(run, skip_special))
                run = []
            if raw and i not in self.byte_of:
                text = raw.decode("utf-8", "replace")
                out.append(bytes(ord(c) - _BRAILLE for c in text if _is_braille(c)))
                raw = bytearray()
            if i is None:
                break
            if i in self.byte_of:
                raw.append(self.byte_of[i])
            elif i in self.extra:
                out.append(self.extra[i])
            else:
                run.append(i)
        return b"".join(out)
