"""Byte-level BPE tokenizer for canonical JPEG bytes, with tiktoken's semantics and API.

Ids ``0..255`` are the single bytes (id = byte value); merge ``k`` gets id ``256 + k`` and its
rank equals its id, so ``tiktoken.Encoding(..., mergeable_ranks=tok.mergeable_ranks)`` encodes
any bytes exactly as :meth:`Tokenizer.encode` does. The special tokens ``<s>`` (BOS), ``</s>``
(EOS) and ``<pad>`` come after the merges and never come out of plain bytes. JPEG-LM's
``vocab_size=320`` is 256 bytes + 61 merges + 3 specials.

Encoding rule: repeatedly merge the adjacent pair of symbols whose concatenated bytes is the
token of the lowest rank (the leftmost among equal ranks); an input that is exactly one token's
bytes is that token (as tiktoken). Decoding is exact: ``decode(encode(b)) == b``.
Training is plain BPE over documents (ties between equally frequent pairs go to the smallest
``(left, right)`` pair of ids). The algorithm is native (``csrc/bpe.cpp``, the GIL released);
:mod:`jpeglm.reference.bpe` is the same in a page of plain Python.

The limits, the special tokens' default names and the byte <-> braille mapping of text
tokenizers (HF ``tokenizers``, sentencepiece) are in :mod:`jpeglm.tokenizer.base`.

Files (jpeglm's own text format, tiktoken's rank file, HF ``tokenizer.json``) are read and
written by :mod:`jpeglm.tokenizer.files`, sentencepiece ``.model`` files by
:mod:`jpeglm.tokenizer.sentencepiece`; the methods here call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from jpeglm import _core
from jpeglm._io import input_file
from jpeglm.codec import check_threads
from jpeglm.tokenizer import files as tokenizer_files
from jpeglm.tokenizer.base import (
    MAX_VOCAB_SIZE,
    SPECIALS,
    BytesLike,
    PathLike,
    TokenIds,
    _as_bytes,
)
from jpeglm.tokenizer.sentencepiece import load_sentencepiece
from jpeglm.tokenizer.sp_rules import SentencePieceRules

__all__ = ["Tokenizer", "load_file"]


# ------------------------------------------------------------------------------------------------
# Argument checks


def _as_ids(tokens: Any, what: str) -> Any:
    """Token ids for the native decoder: a list/tuple of ints or a 1-D native-endian int array."""
    if isinstance(tokens, (list, tuple)):
        return tokens
    if isinstance(tokens, np.ndarray):
        if tokens.dtype.kind not in "iu":
            raise TypeError(f"{what}: token ids must be integers, got a {tokens.dtype} array")
        if tokens.ndim != 1:
            raise ValueError(f"{what}: token ids must be a 1-D array, got shape {tokens.shape}")
        return np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("="))
    if isinstance(tokens, (bytes, bytearray, str)):
        raise TypeError(f"{what}: expected token ids, got {type(tokens).__name__}")
    if isinstance(tokens, Iterable):
        return list(tokens)
    raise TypeError(f"{what}: expected a sequence of token ids, got {type(tokens).__name__}")


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


# ------------------------------------------------------------------------------------------------
# The tokenizer


class Parts(NamedTuple):
    """All a tokenizer is: what its files store, its pickle carries and ``==`` compares."""

    tokens: list[bytes | None]  # id -> bytes; None for a special token
    ranks: list[int]  # id -> merge priority, lower first (0 for special tokens)
    names: dict[int, str]  # special token id -> name
    bos: int | None
    eos: int | None
    pad: int | None
    unk: int | None
    fuse_unk: bool  # a run of bytes without a token is one unk (sentencepiece)
    whole_token: bool  # an input equal to a token's bytes is that token (tiktoken)
    # sentencepiece's dummy prefix: special id -> merge rank of each "▁" + braille piece
    dummy_prefix: dict[int, int] | None = None
    byte_pieces: tuple[int, ...] | None = None  # sentencepiece's byte fallback: <0x00>..<0xFF>


class Tokenizer:
    """A byte-level BPE tokenizer (immutable; safe to share between threads; picklable).

    Build one with :meth:`train`, :meth:`load`, :meth:`from_sentencepiece`, or from tiktoken-style
    ``mergeable_ranks`` (token bytes -> id, which is also the merge rank; all 256 single bytes
    must be present) plus ``special_tokens`` (name -> id, the ids after the byte tokens).
    ``bos``/``eos``/``pad`` name the special tokens used as BOS, EOS and padding (by default
    ``<s>``, ``</s>`` and ``<pad>`` when present).
    """

    def __init__(
        self,
        mergeable_ranks: Mapping[bytes, int],
        special_tokens: Mapping[str, int] | None = None,
        *,
        bos: str | None = None,
        eos: str | None = None,
        pad: str | None = None,
    ) -> None:
        if special_tokens is None:
            special_tokens = {}
        size = len(mergeable_ranks) + len(special_tokens)
        if size > MAX_VOCAB_SIZE:
            raise ValueError(f"vocabulary of {size} tokens exceeds the limit of {MAX_VOCAB_SIZE}")
        tokens: list[bytes | None] = [None] * size
        names: dict[int, str] = {}
        for b, i in mergeable_ranks.items():
            if not isinstance(b, bytes):
                raise TypeError(f"mergeable_ranks keys must be bytes, got {type(b).__name__}")
            i = _check_int(i, "a rank")
            if not 0 <= i < size or tokens[i] is not None:
                raise ValueError(f"ranks must be distinct ids in 0..{size - 1}; bad rank {i}")
            tokens[i] = b
        for name, i in special_tokens.items():
            if not isinstance(name, str) or not name:
                raise TypeError("special token names must be non-empty strings")
            i = _check_int(i, "a special token id")
            if not 0 <= i < size or tokens[i] is not None or i in names:
                raise ValueError(f"special token {name!r} has a bad or duplicate id {i}")
            names[i] = name
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:
            raise ValueError(f"mergeable_ranks lacks single bytes, e.g. {bytes([missing[0]])!r}")
        ids = {name: i for i, name in names.items()}
        roles = {}
        for role, name, default in zip(("bos", "eos", "pad"), (bos, eos, pad), SPECIALS):
            if name is None:
                name = default if default in ids else None
            elif name not in ids:
                raise ValueError(f"{role} token {name!r} is not among the special tokens")
            roles[role] = None if name is None else ids[name]
        self._init(
            tokens, list(range(size)), names, unk=None, fuse_unk=False, whole_token=True, **roles
        )

    def _init(
        self,
        tokens: list[bytes | None],
        ranks: list[int],
        names: dict[int, str],
        *,
        bos: int | None,
        eos: int | None,
        pad: int | None,
        unk: int | None,
        fuse_unk: bool,
        whole_token: bool,
        dummy_prefix: dict[int, int] | None = None,
        byte_pieces: tuple[int, ...] | None = None,
    ) -> None:
        for role, i in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
            if i is not None and not (0 <= i < len(tokens) and tokens[i] is None):
                raise ValueError(f"{role} id {i} is not a special token")
        self._tokens = tokens
        self._ranks = [0 if t is None else r for t, r in zip(tokens, ranks)]  # specials: no rank
        self._names = dict(names)
        self._bos, self._eos, self._pad, self._unk = bos, eos, pad, unk
        self._fuse_unk, self._whole_token = bool(fuse_unk), bool(whole_token)
        self._bpe = _core.BPE(tokens, ranks, -1 if unk is None else unk, fuse_unk, whole_token)
        self._sp: SentencePieceRules | None = None  # sentencepiece's rules, emulated around it
        self._dummy_prefix = None if dummy_prefix is None else dict(dummy_prefix)
        self._byte_pieces = None if byte_pieces is None else tuple(byte_pieces)
        if dummy_prefix is not None or byte_pieces is not None:
            self._sp = SentencePieceRules(
                tokens, self._ranks, names, unk, self._fuse_unk, dummy_prefix, byte_pieces
            )

    @classmethod
    def from_parts(
        cls, tokens: list[bytes | None], ranks: list[int], names: dict[int, str], **kw: Any
    ) -> Tokenizer:
        """A tokenizer from its parts (the bytes of each id, the merge ranks, the special
        tokens' names, their roles and flags as :class:`Parts` names them): the constructor
        the file-format readers of :mod:`jpeglm.tokenizer.files` use."""
        self = cls.__new__(cls)
        self._init(tokens, ranks, names, **kw)
        return self

    # -- training ---------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        corpus: Iterable[BytesLike],
        vocab_size: int = 320,
        threads: int | None = None,
        progress: bool = True,
    ) -> Tokenizer:
        """Learn a tokenizer of ``vocab_size`` ids (256 bytes + merges + 3 specials).

        ``corpus``: an iterable of bytes-like documents (e.g. canonical JPEG streams); pairs
        never span two documents. Deterministic: the same corpus gives the same tokenizer,
        whatever ``threads`` (which count the initial pairs; None: all cores). When the corpus
        runs out of pairs the vocabulary is smaller than asked. ``progress``: a tqdm bar.
        """
        vocab_size = _check_int(vocab_size, "vocab_size")
        low = 256 + len(SPECIALS)
        if not low <= vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be in {low}..{MAX_VOCAB_SIZE} (256 bytes + merges + "
                f"{len(SPECIALS)} special tokens), got {vocab_size}"
            )
        if isinstance(corpus, (bytes, bytearray, memoryview, str, np.ndarray)):
            raise TypeError(
                "corpus must be an iterable of documents (bytes objects), not a single "
                f"{type(corpus).__name__}; wrap it in a list"
            )
        if not isinstance(corpus, Iterable):
            raise TypeError(f"corpus must be an iterable of bytes, got {type(corpus).__name__}")
        docs = [_as_bytes(d, f"corpus item {i}") for i, d in enumerate(corpus)]
        if not any(len(d) for d in docs):
            raise ValueError("the corpus is empty (no bytes to train on)")
        num_merges = vocab_size - low
        nthreads = check_threads(threads)

        bar = None
        callback = None
        if progress and num_merges > 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_merges, desc="BPE merges", unit="merge")

            def callback(done: int, total: int) -> None:
                bar.update(done - bar.n)

        try:
            merges = _core.bpe_train(docs, num_merges, nthreads, callback)
        finally:
            if bar is not None:
                bar.close()
        tokens: list[bytes | None] = [bytes([b]) for b in range(256)]
        for a, b in merges:
            tokens.append(tokens[a] + tokens[b])  # type: ignore[operator]
        first = len(tokens)
        names = {first + k: name for k, name in enumerate(SPECIALS)}
        tokens += [None] * len(SPECIALS)
        return cls.from_parts(
            tokens,
            list(range(len(tokens))),
            names,
            bos=first,
            eos=first + 1,
            pad=first + 2,
            unk=None,
            fuse_unk=False,
            whole_token=True,
        )

    # -- properties -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids: byte tokens, merges and special tokens."""
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        """Id of the BOS token (``<s>``)."""
        return self._bos

    @property
    def eos_id(self) -> int | None:
        """Id of the EOS token (``</s>``)."""
        return self._eos

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token (the unk token for sentencepiece models without a pad)."""
        return self._pad

    @property
    def unk_id(self) -> int | None:
        """Id of the unk token (sentencepiece models only; bytes without a token map to it)."""
        return self._unk

    @property
    def dummy_prefix(self) -> int | None:
        """Id of sentencepiece's dummy-prefix piece (``"▁"``) that :meth:`encode` puts before
        any non-empty input (or merged with its first bytes), None when there is none. A model
        trained on such encodings expects it after BOS: start an empty prompt with it."""
        return None if self._sp is None else self._sp.prefix_id

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token names -> ids."""
        return {name: i for i, name in self._names.items()}

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> id, for every non-special token (tiktoken's ``mergeable_ranks``;
        ids are ranks for tokenizers trained here)."""
        return {b: i for i, b in enumerate(self._tokens) if b is not None}

    def token_byte_values(self) -> dict[int, bytes]:
        """Id -> bytes for every non-special token (the inverse of :attr:`mergeable_ranks`; as
        tiktoken's ``Encoding.token_byte_values`` but keyed by id, since ids need not be dense:
        special tokens have no bytes and are left out). A new dict on every call."""
        return {i: b for i, b in enumerate(self._tokens) if b is not None}

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token id (ValueError for a special token or an unknown id)."""
        token = _check_int(token, "token")
        if not 0 <= token < len(self._tokens):
            raise ValueError(
                f"token id {token} is out of range for a vocabulary of {len(self._tokens)}"
            )
        b = self._tokens[token]
        if b is None:
            raise ValueError(f"token id {token} is the special token {self._names[token]!r}")
        return b

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self._bos}, "
            f"eos_id={self._eos}, pad_id={self._pad})"
        )

    def parts(self) -> Parts:
        """Everything this tokenizer is (what :mod:`jpeglm.tokenizer.files` writes;
        ``Tokenizer.from_parts`` takes it back)."""
        return Parts(
            self._tokens,
            self._ranks,
            self._names,
            self._bos,
            self._eos,
            self._pad,
            self._unk,
            self._fuse_unk,
            self._whole_token,
            self._dummy_prefix,
            self._byte_pieces,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.parts() == other.parts()

    def __hash__(self) -> int:
        return hash((len(self._tokens), self._bos, self._eos))

    def __reduce__(self) -> tuple:
        return (_from_state, (tuple(self.parts()),))

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, data: BytesLike) -> list[int]:
        """Token ids of ``data`` (bytes, bytearray, memoryview or a contiguous uint8 buffer)."""
        if self._sp is not None:
            return self._sp.encode(self._bpe, _as_bytes(data, "data"))
        return self._bpe.encode(_as_bytes(data, "data"))

    def encode_to_numpy(self, data: BytesLike) -> np.ndarray:
        """Token ids as a numpy array: uint16 when the vocabulary fits, else uint32."""
        if self._sp is not None:
            return np.asarray(self.encode(data), dtype=self._id_dtype())
        return self._bpe.encode_to_numpy(_as_bytes(data, "data"))

    def _id_dtype(self) -> type:
        return np.uint16 if len(self._tokens) <= 1 << 16 else np.uint32

    def _items(self, items: Iterable[BytesLike], what: str) -> list:
        if isinstance(items, (bytes, bytearray, memoryview, str)):
            raise TypeError(f"{what} expects a sequence of bytes objects; use encode() for one")
        return [_as_bytes(x, f"item {i}") for i, x in enumerate(items)]

    def encode_batch(
        self, items: Iterable[BytesLike], threads: int | None = None
    ) -> list[list[int]]:
        """:meth:`encode` over many inputs, natively on ``threads`` threads (None: all cores)."""
        if self._sp is not None:
            check_threads(threads)
            return [self.encode(x) for x in self._items(items, "encode_batch")]
        return self._bpe.encode_batch(self._items(items, "encode_batch"), check_threads(threads))

    def encode_batch_to_numpy(
        self, items: Iterable[BytesLike], threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All inputs' ids in one flat array, and int64 ``offsets`` of length ``n + 1``:
        item ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``. No per-item Python objects."""
        if self._sp is not None:
            seqs = self.encode_batch(self._items(items, "encode_batch_to_numpy"), threads)
            offsets = np.cumsum([0] + [len(s) for s in seqs], dtype=np.int64)
            flat = np.fromiter((t for s in seqs for t in s), self._id_dtype(), int(offsets[-1]))
            return flat, offsets
        return self._bpe.encode_batch_to_numpy(
            self._items(items, "encode_batch_to_numpy"), check_threads(threads)
        )

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, tokens: TokenIds, skip_special: bool = True) -> bytes:
        """The bytes of ``tokens`` (a sequence of ints or a 1-D integer numpy array).

        Special tokens (BOS, EOS, pad, unk) have no bytes: skipped, or a ValueError when
        ``skip_special`` is False. An id outside the vocabulary is a ValueError. sentencepiece's
        dummy-prefix and byte pieces decode to their bytes (:mod:`jpeglm.tokenizer.sp_rules`).
        """
        if self._sp is not None:
            return self._sp.decode(self._bpe, _as_ids(tokens, "tokens"), bool(skip_special))
        return self._bpe.decode(_as_ids(tokens, "tokens"), bool(skip_special))

    def decode_batch(
        self, batch: Iterable[TokenIds], skip_special: bool = True, threads: int | None = None
    ) -> list[bytes]:
        """:meth:`decode` over many id sequences, natively on ``threads`` threads."""
        if isinstance(batch, np.ndarray) and batch.ndim == 1:
            raise TypeError("decode_batch expects a sequence of id sequences; use decode()")
        seqs = [_as_ids(t, f"item {i}") for i, t in enumerate(batch)]
        if self._sp is not None:
            check_threads(threads)
            return [self._sp.decode(self._bpe, t, bool(skip_special)) for t in seqs]
        return self._bpe.decode_batch(seqs, bool(skip_special), check_threads(threads))

    # -- files: jpeglm.tokenizer.files and jpeglm.tokenizer.sentencepiece ---------------------

    def save(self, path: PathLike) -> None:
        """Write the tokenizer in jpeglm's text format, atomically (the format:
        :mod:`jpeglm.tokenizer.files`)."""
        tokenizer_files.save_jpeglm(self, path)

    @classmethod
    def load(cls, path: PathLike) -> Tokenizer:
        """Read a file written by :meth:`save`; ValueError (naming the line) when malformed."""
        return tokenizer_files.load_jpeglm(path, cls)

    def save_tiktoken(self, path: PathLike) -> None:
        """Write tiktoken's rank file (``base64(token bytes) rank`` per line), atomically; for
        ``tiktoken.load.load_tiktoken_bpe``. ValueError unless the vocabulary is
        tiktoken-compatible (true for tokenizers trained here)."""
        tokenizer_files.save_tiktoken(self, path)

    def to_tiktoken(self, name: str = "jpeglm") -> Any:
        """A ``tiktoken.Encoding`` with the same ranks; ``._encode_bytes(b)`` equals
        :meth:`encode` for any bytes. Needs the ``tiktoken`` package."""
        return tokenizer_files.to_tiktoken(self, name)

    def save_hf(self, path: PathLike) -> None:
        """Write a HF ``tokenizers`` ``tokenizer.json`` (atomically) that encodes identically
        on :func:`bytes_to_braille` of the bytes (see
        :func:`jpeglm.tokenizer.files.save_hf`)."""
        tokenizer_files.save_hf(self, path)

    @classmethod
    def from_sentencepiece(cls, model: PathLike | bytes) -> Tokenizer:
        """Load a sentencepiece BPE ``.model`` (a path or the file's bytes) whose pieces are
        braille-mapped bytes, as the official JPEG-LM tokenizer; it encodes as sentencepiece
        does on :func:`bytes_to_braille` of the input (dummy prefix, byte fallback included),
        without sentencepiece. Emulated and refused: :mod:`jpeglm.tokenizer.sentencepiece`."""
        return load_sentencepiece(model, cls, stacklevel=3)


def _from_state(state: tuple) -> Tokenizer:
    """The tokenizer of a :class:`Parts` tuple (how pickles are loaded)."""
    st = Parts(*state)
    return Tokenizer.from_parts(
        st.tokens,
        st.ranks,
        st.names,
        bos=st.bos,
        eos=st.eos,
        pad=st.pad,
        unk=st.unk,
        fuse_unk=st.fuse_unk,
        whole_token=st.whole_token,
        dummy_prefix=st.dummy_prefix,
        byte_pieces=st.byte_pieces,
    )


def load_file(path: PathLike) -> Tokenizer:
    """A tokenizer file of either format: the official sentencepiece ``.model`` (JPEG-LM's
    published tokenizer) or jpeglm's own (anything else). ``FileNotFoundError`` when missing."""
    path = input_file(path, "tokenizer")
    if path.suffix == ".model":
        return load_sentencepiece(path, Tokenizer, stacklevel=3)
    return tokenizer_files.load_jpeglm(path, Tokenizer)
