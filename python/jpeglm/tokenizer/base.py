"""What the tokenizer modules share: the limits and error type, the default special tokens, the
argument types, the byte <-> character mapping of text tokenizers, and what the file readers
(:mod:`jpeglm.tokenizer.files`, :mod:`jpeglm.tokenizer.sentencepiece`) need of a tokenizer and
of a file (a bounded read, a parse error naming the line).

Text interop (HF ``tokenizers``, sentencepiece): those work on strings, so each byte ``b`` is
mapped to the character ``chr(b + 0x2800)`` (the Braille Patterns block, as the official JPEG-LM
code does): :func:`bytes_to_braille` and :func:`braille_to_bytes` apply the mapping.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from jpeglm import _core
from jpeglm._io import input_file

__all__ = [
    "BPEError",
    "bytes_to_braille",
    "braille_to_bytes",
    "BRAILLE_OFFSET",
    "MAX_VOCAB_SIZE",
    "MAX_FILE_BYTES",
    "SPECIALS",
    "BytesLike",
    "TokenIds",
    "PathLike",
    "TokenizerLike",
    "TokenizerT",
]

#: Raised for bad ids, bad vocabularies and bad corpora (a subclass of ValueError).
BPEError = _core.BPEError

#: Byte ``b`` is the character ``chr(b + BRAILLE_OFFSET)`` for text-based tokenizers.
BRAILLE_OFFSET = 0x2800
#: The largest vocabulary (ids are below this).
MAX_VOCAB_SIZE: int = _core.BPE_MAX_VOCAB_SIZE
#: The largest tokenizer file the readers take (:meth:`jpeglm.tokenizer.bpe.Tokenizer.load`,
#: :meth:`~jpeglm.tokenizer.bpe.Tokenizer.from_sentencepiece`).
MAX_FILE_BYTES = 64 << 20

#: Default special tokens, in the order they follow the merges.
SPECIALS = ("<s>", "</s>", "<pad>")

BytesLike = bytes | bytearray | memoryview | np.ndarray
TokenIds = Sequence[int] | np.ndarray
PathLike = str | os.PathLike[str]

#: A tokenizer class the readers build (what they are given as ``cls``).
TokenizerT = TypeVar("TokenizerT", bound="TokenizerLike")


class TokenizerLike(Protocol):
    """What the file functions use of a tokenizer (:class:`jpeglm.tokenizer.bpe.Tokenizer`
    or a subclass): its parts, its tiktoken-style tables, and ``from_parts`` to build one."""

    @property
    def mergeable_ranks(self) -> dict[bytes, int]: ...

    @property
    def special_tokens(self) -> dict[str, int]: ...

    def parts(self) -> Any: ...

    @classmethod
    def from_parts(
        cls: type[TokenizerT],
        tokens: list[bytes | None],
        ranks: list[int],
        names: dict[int, str],
        **kw: Any,
    ) -> TokenizerT: ...


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


# ------------------------------------------------------------------------------------------------
# What the file readers share


class _ParseError(Exception):
    """A malformed file; ``line``: where (1-based; 0 when the format has no lines)."""

    def __init__(self, line: int, msg: str) -> None:
        super().__init__(msg)
        self.line, self.msg = line, msg


def _read_limited(path: PathLike, what: str) -> bytes:
    """A file's bytes, refusing anything over MAX_FILE_BYTES."""
    path = input_file(path, what)  # nothing, a folder, a link loop, a FIFO: one line
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a {what} file")
    return data
