"""Grammar-constrained sampling: the canonical scan as an automaton over bytes and tokens.

With the standard Huffman tables and a restart marker after every MCU, the entropy-coded
scan of a canonical JPEG-LM stream is a regular language. :class:`ScanAutomaton` follows a
stream byte by byte and says which next bytes keep it decodable; :class:`TokenConstraint`
lifts that to a BPE vocabulary — a (batch, vocab) mask of allowed next tokens, computed
natively — so a sampler can make undecodable output impossible. The slow, readable twin is
:mod:`jpeglm.reference.grammar`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jpeglm import _core
from jpeglm.codec import check_size

__all__ = ["ScanAutomaton", "TokenConstraint"]


class ScanAutomaton:
    """One canonical stream of a ``size`` x ``size`` image, followed byte by byte.

    ``at_scan=True`` starts after the fixed header (whose bytes are :attr:`header`).
    """

    def __init__(self, size: int = 256, at_scan: bool = False) -> None:
        size = check_size(size)
        self.grammar = _core.ScanGrammar(size, size)
        self.state = self.grammar.initial(at_scan)

    @property
    def header(self) -> bytes:
        return self.grammar.header

    @property
    def total_mcus(self) -> int:
        return self.grammar.total_mcus

    @property
    def phase(self) -> str:
        """header | scan | marker | marker_code | done | reject"""
        return self.state.phase

    @property
    def done(self) -> bool:
        return self.state.phase == "done"

    @property
    def mcu(self) -> int:
        return self.state.mcu

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Advance over ``data``; -1 when all of it is legal, else the index of the first
        illegal byte (the automaton is then in the ``reject`` phase)."""
        return self.grammar.feed(self.state, data)

    def accepts(self, data: bytes) -> bool:
        """Whether ``data`` is a complete legal stream from the current state (no change)."""
        st = self.state.copy()
        return self.grammar.feed(st, data) == -1 and st.phase == "done"

    def allowed_bytes(self) -> np.ndarray:
        """(256,) bool: which bytes may come next."""
        return self.grammar.allowed_bytes(self.state)

    def copy(self) -> ScanAutomaton:
        new = object.__new__(ScanAutomaton)
        new.grammar, new.state = self.grammar, self.state.copy()
        return new


class TokenConstraint:
    """Allowed-token masks for a batch of streams over a BPE vocabulary.

    ``tokens[i]`` is the byte string of token ``i`` (``b""`` for special tokens). EOS is
    allowed exactly when a stream is complete (after EOI), and is then the only choice;
    other special tokens are never allowed.
    """

    def __init__(self, tokens: Sequence[bytes], eos_id: int, size: int = 256) -> None:
        size = check_size(size)
        if not tokens:
            raise ValueError("empty vocabulary")
        if not 0 <= eos_id < len(tokens):
            raise ValueError(f"eos_id {eos_id} outside the vocabulary of {len(tokens)}")
        self.size = size
        self.vocab_size = len(tokens)
        self.eos_id = int(eos_id)
        self._grammar = _core.TokenGrammar(_core.ScanGrammar(size, size), list(tokens), eos_id)
        self.batch: _core.TokenBatch | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer, size: int = 256) -> TokenConstraint:
        """Build from a :class:`jpeglm.tokenizer.bpe.Tokenizer` (its byte strings and EOS id)."""
        by_id = tokenizer.token_byte_values()
        tokens = [by_id.get(i, b"") for i in range(tokenizer.vocab_size)]
        if tokenizer.eos_id is None:
            raise ValueError("the tokenizer has no EOS token to end a stream with")
        return cls(tokens, tokenizer.eos_id, size)

    def start(self, n: int, prompts: Sequence[bytes] | None = None, at_scan: bool = False) -> None:
        """Begin ``n`` streams, each optionally advanced over its prompt bytes.

        A prompt that is not a legal prefix of a canonical stream raises ValueError.
        """
        self.batch = _core.TokenBatch(self._grammar, n, at_scan)
        if prompts is not None:
            if len(prompts) != n:
                raise ValueError(f"{len(prompts)} prompts for a batch of {n}")
            for i, p in enumerate(prompts):
                bad = self.batch.feed_bytes(i, p)
                if bad >= 0:
                    raise ValueError(f"prompt {i} is not a canonical stream prefix (byte {bad})")

    def _require(self) -> _core.TokenBatch:
        if self.batch is None:
            raise RuntimeError("call start() first")
        return self.batch

    def mask(self, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
        """(batch, vocab) bool: the allowed next tokens of every stream."""
        batch = self._require()
        if out is None:
            out = np.empty((len(batch), self.vocab_size), dtype=bool)
        batch.masks(out, threads)
        return out

    def advance(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Advance every stream by its sampled token; returns which were legal."""
        return self._require().advance(np.asarray(tokens, dtype=np.int64).reshape(-1))

    def phases(self) -> list[str]:
        return self._require().phases()
