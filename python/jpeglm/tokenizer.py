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
:mod:`jpeglm._bpe_reference` is the same in a page of plain Python.

Text interop (HF ``tokenizers``, sentencepiece): those work on strings, so each byte ``b`` is
mapped to the character ``chr(b + 0x2800)`` (the Braille Patterns block, as the official JPEG-LM
code does): :func:`bytes_to_braille` and :func:`braille_to_bytes` apply the mapping.

File format of :meth:`Tokenizer.save` (UTF-8 text, one item per line; lines starting with
``#`` and blank lines are ignored). A header, then one line per id from 0 to ``vocab_size - 1``:
``<id> token <bytes as hex> <rank>`` (rank: merge priority, lower first) or
``<id> special <name as a JSON string>``. ``bos``/``eos``/``pad``/``unk`` are ids or ``none``;
``fuse_unk 1``: a run of bytes without a token is one unk (sentencepiece); ``whole_token 1``: an
input equal to a token's bytes is that token (tiktoken)::

    jpeglm-bpe 1
    vocab_size 320
    bos 317
    eos 318
    pad 319
    unk none
    fuse_unk 0
    whole_token 1
    tokens
    0 token 00 0
    ...
    256 token ffd0 256
    ...
    317 special "<s>"
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jpeglm import _core
from jpeglm._io import atomic_write_bytes

__all__ = [
    "Tokenizer",
    "BPEError",
    "bytes_to_braille",
    "braille_to_bytes",
    "BRAILLE_OFFSET",
    "MAX_VOCAB_SIZE",
    "MAX_FILE_BYTES",
    "load_file",
]

#: Raised for bad ids, bad vocabularies and bad corpora (a subclass of ValueError).
BPEError = _core.BPEError

#: Byte ``b`` is the character ``chr(b + BRAILLE_OFFSET)`` for text-based tokenizers.
BRAILLE_OFFSET = 0x2800
#: The largest vocabulary (ids are below this).
MAX_VOCAB_SIZE: int = _core.BPE_MAX_VOCAB_SIZE
#: The largest tokenizer file :meth:`Tokenizer.load` / :meth:`Tokenizer.from_sentencepiece` read.
MAX_FILE_BYTES = 64 << 20

#: Default special tokens, in the order they follow the merges.
SPECIALS = ("<s>", "</s>", "<pad>")
_FORMAT = "jpeglm-bpe"
_FORMAT_VERSION = 1

BytesLike = bytes | bytearray | memoryview | np.ndarray
TokenIds = Sequence[int] | np.ndarray
PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------------------------
# Byte <-> character mapping


def bytes_to_braille(data: BytesLike) -> str:
    """``data`` as text: byte ``b`` -> ``chr(b + 0x2800)`` (what HF/sentencepiece models see)."""
    a = np.frombuffer(_as_bytes(data, "data"), dtype=np.uint8)
    utf8 = np.empty((a.size, 3), dtype=np.uint8)  # U+2800 + b is E2, A0 | b >> 6, 80 | b & 63
    utf8[:, 0] = 0xE2
    utf8[:, 1] = 0xA0 | (a >> 6)
    utf8[:, 2] = 0x80 | (a & 0x3F)
    return utf8.tobytes().decode("utf-8")


def braille_to_bytes(text: str) -> bytes:
    """Inverse of :func:`bytes_to_braille`; ValueError for a character outside U+2800..U+28FF."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    utf8 = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if utf8.size % 3 == 0:
        u = utf8.reshape(-1, 3)
        if np.all((u[:, 0] == 0xE2) & ((u[:, 1] & 0xFC) == 0xA0)):
            return (((u[:, 1] & 3) << 6) | (u[:, 2] & 0x3F)).astype(np.uint8).tobytes()
    bad = next(c for c in text if not 0x2800 <= ord(c) <= 0x28FF)
    raise ValueError(f"character {bad!r} (U+{ord(bad):04X}) is not a braille-mapped byte")


# ------------------------------------------------------------------------------------------------
# Argument checks


def _as_bytes(data: Any, what: str) -> Any:
    """A contiguous byte buffer for the native code (no copy for bytes-like input)."""
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, str):
        raise TypeError(f"{what}: expected bytes, got str (use .encode() or bytes_to_braille)")
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"{what}: expected a uint8 array, got {data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    if isinstance(data, memoryview):
        return data
    try:
        memoryview(data)
    except TypeError:
        raise TypeError(
            f"{what}: expected a bytes-like object, got {type(data).__name__}"
        ) from None
    return data


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


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0  # all cores
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return int(threads)


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the package's one crash-safe writer)."""
    atomic_write_bytes(path, data)


def _read_limited(path: PathLike, what: str) -> bytes:
    """A file's bytes, refusing anything over MAX_FILE_BYTES."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such {what} file: {path}")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a {what} file")
    return data


# ------------------------------------------------------------------------------------------------
# The tokenizer


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

    @classmethod
    def _create(
        cls, tokens: list[bytes | None], ranks: list[int], names: dict[int, str], **kw: Any
    ) -> Tokenizer:
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
        nthreads = _threads(threads)

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
        return cls._create(
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
    def special_tokens(self) -> dict[str, int]:
        """Special token names -> ids."""
        return {name: i for i, name in self._names.items()}

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> id, for every non-special token (tiktoken's ``mergeable_ranks``;
        ids are ranks for tokenizers trained here)."""
        return {b: i for i, b in enumerate(self._tokens) if b is not None}

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

    def _state(self) -> tuple:
        return (
            self._tokens,
            self._ranks,
            self._names,
            self._bos,
            self._eos,
            self._pad,
            self._unk,
            self._fuse_unk,
            self._whole_token,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._state() == other._state()

    def __hash__(self) -> int:
        return hash((len(self._tokens), self._bos, self._eos))

    def __reduce__(self) -> tuple:
        return (_from_state, (self._state(),))

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, data: BytesLike) -> list[int]:
        """Token ids of ``data`` (bytes, bytearray, memoryview or a contiguous uint8 buffer)."""
        return self._bpe.encode(_as_bytes(data, "data"))

    def encode_to_numpy(self, data: BytesLike) -> np.ndarray:
        """Token ids as a numpy array: uint16 when the vocabulary fits, else uint32."""
        return self._bpe.encode_to_numpy(_as_bytes(data, "data"))

    def _items(self, items: Iterable[BytesLike], what: str) -> list:
        if isinstance(items, (bytes, bytearray, memoryview, str)):
            raise TypeError(f"{what} expects a sequence of bytes objects; use encode() for one")
        return [_as_bytes(x, f"item {i}") for i, x in enumerate(items)]

    def encode_batch(
        self, items: Iterable[BytesLike], threads: int | None = None
    ) -> list[list[int]]:
        """:meth:`encode` over many inputs, natively on ``threads`` threads (None: all cores)."""
        return self._bpe.encode_batch(self._items(items, "encode_batch"), _threads(threads))

    def encode_batch_to_numpy(
        self, items: Iterable[BytesLike], threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All inputs' ids in one flat array, and int64 ``offsets`` of length ``n + 1``:
        item ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``. No per-item Python objects."""
        return self._bpe.encode_batch_to_numpy(
            self._items(items, "encode_batch_to_numpy"), _threads(threads)
        )

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, tokens: TokenIds, skip_special: bool = True) -> bytes:
        """The bytes of ``tokens`` (a sequence of ints or a 1-D integer numpy array).

        Special tokens (BOS, EOS, pad, unk) have no bytes: skipped, or a ValueError when
        ``skip_special`` is False. An id outside the vocabulary is a ValueError.
        """
        return self._bpe.decode(_as_ids(tokens, "tokens"), bool(skip_special))

    def decode_batch(
        self, batch: Iterable[TokenIds], skip_special: bool = True, threads: int | None = None
    ) -> list[bytes]:
        """:meth:`decode` over many id sequences, natively on ``threads`` threads."""
        if isinstance(batch, np.ndarray) and batch.ndim == 1:
            raise TypeError("decode_batch expects a sequence of id sequences; use decode()")
        seqs = [_as_ids(t, f"item {i}") for i, t in enumerate(batch)]
        return self._bpe.decode_batch(seqs, bool(skip_special), _threads(threads))

    # -- files ------------------------------------------------------------------------------------

    def save(self, path: PathLike) -> None:
        """Write the tokenizer in the text format of this module's docstring, atomically."""

        def opt(i: int | None) -> str:
            return "none" if i is None else str(i)

        lines = [
            "# jpeglm byte-level BPE tokenizer; format: see jpeglm.tokenizer",
            f"{_FORMAT} {_FORMAT_VERSION}",
            f"vocab_size {self.vocab_size}",
            f"bos {opt(self._bos)}",
            f"eos {opt(self._eos)}",
            f"pad {opt(self._pad)}",
            f"unk {opt(self._unk)}",
            f"fuse_unk {int(self._fuse_unk)}",
            f"whole_token {int(self._whole_token)}",
            "tokens",
        ]
        for i, (b, r) in enumerate(zip(self._tokens, self._ranks)):
            if b is None:
                lines.append(f"{i} special {json.dumps(self._names[i])}")
            else:
                lines.append(f"{i} token {b.hex()} {r}")
        _write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: PathLike) -> Tokenizer:
        """Read a file written by :meth:`save`; ValueError (naming the line) when malformed."""
        data = _read_limited(path, "tokenizer")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a jpeglm tokenizer file (not UTF-8)") from e
        try:
            return cls._parse(text)
        except _ParseError as e:
            raise ValueError(f"{path}: line {e.line}: {e.msg}") from None

    @classmethod
    def _parse(cls, text: str) -> Tokenizer:
        rows = [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1)]
        rows = [(n, line) for n, line in rows if line and not line.startswith("#")]
        if not rows or rows[0][1] != f"{_FORMAT} {_FORMAT_VERSION}":
            raise _ParseError(
                rows[0][0] if rows else 1, f"expected the header '{_FORMAT} {_FORMAT_VERSION}'"
            )
        header: dict[str, str] = {}
        k = 1
        while k < len(rows) and rows[k][1] != "tokens":
            n, line = rows[k]
            key, _, value = line.partition(" ")
            if key not in {"vocab_size", "bos", "eos", "pad", "unk", "fuse_unk", "whole_token"}:
                raise _ParseError(n, f"unknown field {key!r}")
            if key in header:
                raise _ParseError(n, f"duplicate field {key!r}")
            header[key] = value.strip()
            k += 1
        if k == len(rows):
            raise _ParseError(rows[-1][0], "no 'tokens' section (truncated file?)")
        for key in ("vocab_size", "bos", "eos", "pad", "unk", "fuse_unk", "whole_token"):
            if key not in header:
                raise _ParseError(rows[k][0], f"missing field {key!r}")

        def integer(n: int, s: str, lo: int, hi: int, what: str) -> int:
            if not (s.isascii() and s.isdigit()) or len(s) > 12 or not lo <= int(s) <= hi:
                raise _ParseError(n, f"bad {what} {s!r} (expected an integer in {lo}..{hi})")
            return int(s)

        hn = rows[k][0]
        size = integer(hn, header["vocab_size"], 1, MAX_VOCAB_SIZE, "vocab_size")
        roles = {
            key: None if header[key] == "none" else integer(hn, header[key], 0, size - 1, key)
            for key in ("bos", "eos", "pad", "unk")
        }
        flags = {
            key: integer(hn, header[key], 0, 1, key) == 1 for key in ("fuse_unk", "whole_token")
        }
        body = rows[k + 1 :]
        if len(body) != size:
            n = body[-1][0] if body else rows[k][0]
            raise _ParseError(n, f"expected {size} token lines, found {len(body)} (truncated?)")
        tokens: list[bytes | None] = []
        ranks: list[int] = []
        names: dict[int, str] = {}
        for i, (n, line) in enumerate(body):
            parts = line.split(" ", 2)
            if len(parts) < 3 or parts[0] != str(i):
                raise _ParseError(n, f"expected '{i} token <hex> <rank>' or '{i} special <name>'")
            if parts[1] == "token":
                fields = parts[2].split(" ")
                if len(fields) != 2:
                    raise _ParseError(n, "expected '<hex bytes> <rank>'")
                try:
                    b = bytes.fromhex(fields[0])
                except ValueError:
                    raise _ParseError(n, "bad hex bytes") from None
                if not b:
                    raise _ParseError(n, "a token needs at least one byte")
                tokens.append(b)
                ranks.append(integer(n, fields[1], 0, 0xFFFFFFFE, "rank"))
            elif parts[1] == "special":
                try:
                    name = json.loads(parts[2])
                except ValueError:
                    name = None
                if not isinstance(name, str) or not name:
                    raise _ParseError(n, "a special token needs a name (a JSON string)")
                tokens.append(None)
                ranks.append(0)
                names[i] = name
            else:
                raise _ParseError(n, f"unknown token kind {parts[1]!r}")
        try:
            return cls._create(tokens, ranks, names, **roles, **flags)
        except ValueError as e:
            raise _ParseError(hn, str(e)) from None

    def save_tiktoken(self, path: PathLike) -> None:
        """Write tiktoken's rank file (``base64(token bytes) rank`` per line), atomically.

        Needs a tiktoken-compatible vocabulary: all 256 single bytes, ids ordered as the ranks
        (true for tokenizers trained here). Load it with ``tiktoken.load.load_tiktoken_bpe``.
        """
        self._check_tiktoken()
        lines = [
            f"{base64.b64encode(b).decode('ascii')} {i}"
            for i, b in enumerate(self._tokens)
            if b is not None
        ]
        _write_atomic(path, ("\n".join(lines) + "\n").encode("ascii"))

    def _check_tiktoken(self) -> None:
        if len(self._tokens) < 256 or any(self._tokens[b] != bytes([b]) for b in range(256)):
            raise ValueError("not tiktoken-compatible: ids 0..255 must be the single bytes")
        previous = -1
        for i, b in enumerate(self._tokens):
            if b is not None and len(b) > 1:
                if self._ranks[i] <= previous:
                    raise ValueError("not tiktoken-compatible: merge ranks are not in id order")
                previous = self._ranks[i]
        if not self._whole_token or self._unk is not None:
            raise ValueError("not tiktoken-compatible: sentencepiece-style unk/merging rules")

    def to_tiktoken(self, name: str = "jpeglm") -> Any:
        """A ``tiktoken.Encoding`` with the same ranks; ``._encode_bytes(b)`` equals
        :meth:`encode` for any bytes. Needs the ``tiktoken`` package."""
        import tiktoken

        self._check_tiktoken()
        return tiktoken.Encoding(
            name,
            pat_str=r"[\s\S]+",  # one piece: BPE over the whole input, no regex splitting
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )

    def save_hf(self, path: PathLike) -> None:
        """Write a HF ``tokenizers`` ``tokenizer.json`` (atomically) that encodes identically.

        HF works on text: feed it :func:`bytes_to_braille` of the bytes (byte ``b`` is
        ``chr(b + 0x2800)``); its ids are then those of :meth:`encode`. The model is BPE with
        no normalizer or pre-tokenizer (the whole input is one word), ``ignore_merges`` for the
        whole-token rule, and a merge for every way two tokens concatenate to a token, ordered by
        the rank of the result. Its decoder fuses the pieces; map them back with
        :func:`braille_to_bytes`.
        """
        vocab: dict[str, int] = {}
        by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(self._tokens):
            if b is None:
                vocab[self._names[i]] = i
            else:
                vocab[bytes_to_braille(b)] = i
                by_bytes[b] = i
        merges: list[tuple[int, int, int]] = []  # (rank of result, left, right)
        for i, b in enumerate(self._tokens):
            if b is None or len(b) < 2:
                continue
            for s in range(1, len(b)):
                left, right = by_bytes.get(b[:s]), by_bytes.get(b[s:])
                if left is not None and right is not None:
                    merges.append((self._ranks[i], left, right))
        merges.sort()
        strs = {i: bytes_to_braille(b) for i, b in enumerate(self._tokens) if b is not None}
        added = [
            {
                "id": i,
                "content": name,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, name in sorted(self._names.items())
        ]
        doc = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": None,
            "post_processor": None,
            "decoder": {"type": "Fuse"},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None if self._unk is None else self._names[self._unk],
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": self._fuse_unk,
                "byte_fallback": False,
                "ignore_merges": self._whole_token,
                "vocab": vocab,
                "merges": [f"{strs[a]} {strs[b]}" for _, a, b in merges],
            },
        }
        _write_atomic(path, json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))

    @classmethod
    def from_sentencepiece(cls, model: PathLike | bytes) -> Tokenizer:
        """Load a sentencepiece BPE ``.model`` whose pieces are braille-mapped bytes (byte ``b``
        is ``chr(b + 0x2800)``, as the official JPEG-LM tokenizer), keeping its ids, its unk,
        BOS and EOS (pad: the model's pad, else unk). ``model``: a path or the file's bytes.

        Encodes as sentencepiece does on :func:`bytes_to_braille` of the input: merge priority
        is the piece score (higher first, leftmost on ties), a byte without a piece is unk and a
        run of them one unk. sentencepiece itself is not needed (the protobuf is parsed here).
        Pieces with characters outside the braille block (e.g. ``▁``) can never match bytes:
        they become special tokens. Not supported (ValueError): unigram models, byte fallback,
        user-defined and unused pieces.
        """
        if isinstance(model, (bytes, bytearray, memoryview)):
            data, where = bytes(model), "sentencepiece model"
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"sentencepiece model larger than {MAX_FILE_BYTES} bytes")
        else:
            data, where = _read_limited(model, "sentencepiece model"), str(model)
        try:
            pieces, trainer, normalizer = _parse_sentencepiece(data)
        except _ParseError as e:
            raise ValueError(f"{where}: not a valid sentencepiece model: {e.msg}") from None
        return cls._from_pieces(pieces, trainer, normalizer, where)

    @classmethod
    def _from_pieces(
        cls,
        pieces: list[tuple[str, float, int]],
        trainer: dict[int, int],
        normalizer: dict[int, Any],
        where: str,
    ) -> Tokenizer:
        model_type = trainer.get(3, 1)
        if model_type != 2:
            kind = {1: "UNIGRAM", 3: "WORD", 4: "CHAR"}.get(model_type, str(model_type))
            raise ValueError(f"{where}: a {kind} sentencepiece model; only BPE is supported")
        if trainer.get(35, 0):
            raise ValueError(f"{where}: byte-fallback sentencepiece models are not supported")
        if not pieces:
            raise ValueError(f"{where}: the model has no pieces")
        if len(pieces) > MAX_VOCAB_SIZE:
            raise ValueError(f"{where}: {len(pieces)} pieces exceed the limit of {MAX_VOCAB_SIZE}")
        tokens: list[bytes | None] = []
        names: dict[int, str] = {}
        scores: dict[int, float] = {}
        inert: list[str] = []
        for i, (piece, score, kind) in enumerate(pieces):
            if kind == 1:  # NORMAL
                if piece and all(0x2800 <= ord(c) <= 0x28FF for c in piece):
                    b = braille_to_bytes(piece)
                    tokens.append(b)
                    if len(b) > 1:
                        if math.isnan(score):
                            raise ValueError(f"{where}: piece {i} has a NaN score")
                        scores[i] = score
                    continue
                inert.append(piece)
            elif kind not in (2, 3):  # UNKNOWN, CONTROL
                what = {4: "user-defined", 5: "unused", 6: "byte"}.get(kind, f"type-{kind}")
                raise ValueError(f"{where}: piece {i} ({piece!r}) is a {what} piece; not supported")
            if not piece or i in names or piece in names.values():
                raise ValueError(f"{where}: piece {i} has an empty or duplicate name")
            tokens.append(None)
            names[i] = piece
        if inert:
            warnings.warn(
                f"{where}: {len(inert)} pieces are not braille-mapped bytes (e.g. {inert[0]!r}); "
                "they become special tokens that encoding never produces",
                stacklevel=3,
            )
        # Ranks: higher score first; equal scores share a rank (then the leftmost pair wins).
        distinct = sorted(set(scores.values()), reverse=True)
        rank_of = {s: r for r, s in enumerate(distinct)}
        ranks = [rank_of.get(scores.get(i, math.nan), 0) for i in range(len(tokens))]

        def role(field: int, default: int, kinds: tuple[int, ...]) -> int | None:
            i = trainer.get(field, default)
            return i if 0 <= i < len(pieces) and pieces[i][2] in kinds else None

        unk = role(40, 0, (2,))
        if unk is None:
            unk = next((i for i, p in enumerate(pieces) if p[2] == 2), None)
        bos, eos = role(41, 1, (3,)), role(42, 2, (3,))
        pad = role(43, -1, (2, 3))
        if normalizer.get(3, 1) or normalizer.get(1, "identity") not in ("identity", ""):
            warnings.warn(
                f"{where}: the model's normalizer adds a dummy prefix or normalizes text; "
                "this tokenizer encodes the raw bytes only",
                stacklevel=3,
            )
        return cls._create(
            tokens,
            ranks,
            names,
            bos=bos,
            eos=eos,
            pad=pad if pad is not None else unk,
            unk=unk,
            fuse_unk=True,
            whole_token=False,
        )


def _from_state(state: tuple) -> Tokenizer:
    tokens, ranks, names, bos, eos, pad, unk, fuse_unk, whole_token = state
    return Tokenizer._create(
        tokens,
        ranks,
        names,
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        fuse_unk=fuse_unk,
        whole_token=whole_token,
    )


# ------------------------------------------------------------------------------------------------
# sentencepiece's ModelProto, read with a minimal protobuf wire-format parser


class _ParseError(Exception):
    def __init__(self, line: int, msg: str) -> None:
        super().__init__(msg)
        self.line, self.msg = line, msg


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if i >= len(buf):
            raise _ParseError(0, "truncated varint")
        c = buf[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7
    raise _ParseError(0, "malformed varint")


def _fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; value: int or bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _ParseError(0, "field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if i + size > n:
                raise _ParseError(0, "truncated fixed-size field")
            value, i = buf[i : i + size], i + size
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > n:
                raise _ParseError(0, "truncated length-delimited field")
            value, i = buf[i : i + size], i + size
        else:
            raise _ParseError(0, f"unsupported wire type {wire}")
        yield field, wire, value


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_sentencepiece(
    data: bytes,
) -> tuple[list[tuple[str, float, int]], dict[int, int], dict[int, Any]]:
    """(pieces as (piece, score, type), TrainerSpec ints by field, NormalizerSpec by field)."""
    pieces: list[tuple[str, float, int]] = []
    trainer: dict[int, int] = {}
    normalizer: dict[int, Any] = {}
    seen_trainer = False
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:  # SentencePiece
            if len(pieces) >= MAX_VOCAB_SIZE:
                raise _ParseError(0, f"more than {MAX_VOCAB_SIZE} pieces")
            piece, score, kind = None, 0.0, 1
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    try:
                        piece = v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _ParseError(0, "a piece is not UTF-8") from None
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    kind = v
            if piece is None:
                raise _ParseError(0, f"piece {len(pieces)} has no text")
            pieces.append((piece, score, kind))
        elif field == 2 and wire == 2:  # TrainerSpec
            seen_trainer = True
            for f, w, v in _fields(value):
                if w == 0:
                    trainer[f] = _int32(v)
        elif field == 3 and wire == 2:  # NormalizerSpec
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    normalizer[1] = v.decode("utf-8", "replace")
                elif w == 0:
                    normalizer[f] = v
    if not pieces or not seen_trainer:
        raise _ParseError(0, "no pieces or no trainer spec (not a sentencepiece model?)")
    return pieces, trainer, normalizer


def load_file(path: PathLike) -> Tokenizer:
    """A tokenizer file of either format: the official sentencepiece ``.model`` (JPEG-LM's
    published tokenizer) or jpeglm's own (anything else). ``FileNotFoundError`` when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such tokenizer file: {path}")
    if path.suffix == ".model":
        return Tokenizer.from_sentencepiece(path)
    return Tokenizer.load(path)
