"""sentencepiece ``.model`` files: :func:`train_sentencepiece` makes one the way the official
JPEG-LM tokenizer was made (needs the ``sentencepiece`` package); :func:`load_sentencepiece`
reads a braille-mapped BPE model into a tokenizer with a minimal protobuf parser (no
``sentencepiece`` needed). :meth:`jpeglm.tokenizer.bpe.Tokenizer.from_sentencepiece` calls it.

The reader refuses files over :data:`jpeglm.tokenizer.base.MAX_FILE_BYTES` and raises
ValueError for a malformed one. It takes ``cls``, the class to build (``Tokenizer`` or a
subclass).
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterable
from typing import Any

from jpeglm.tokenizer.base import (
    MAX_FILE_BYTES,
    MAX_VOCAB_SIZE,
    PathLike,
    TokenizerT,
    _ParseError,
    _read_limited,
    braille_to_bytes,
    bytes_to_braille,
)

__all__ = ["train_sentencepiece", "load_sentencepiece"]


def train_sentencepiece(
    docs: Iterable[bytes | str],
    vocab_size: int = 320,
    threads: int = 2,
    max_sentence_length: int = 1 << 17,
) -> bytes:
    """Train a sentencepiece BPE model the way the official JPEG-LM tokenizer was made: each
    document's bytes as braille characters (U+2800 + byte; a ``str`` is taken as already
    converted), no normalisation, no splitting, no dummy prefix, full character coverage.
    Returns the serialized model (what :func:`load_sentencepiece` and
    ``Tokenizer.from_sentencepiece`` read). Needs the ``sentencepiece`` package."""
    import io

    import sentencepiece as spm

    texts = (d if isinstance(d, str) else bytes_to_braille(bytes(d)) for d in docs)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=texts, model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_by_whitespace=False, split_by_unicode_script=False,
        split_by_number=False, max_sentence_length=max_sentence_length, hard_vocab_limit=False,
        input_sentence_size=0, num_threads=threads, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def load_sentencepiece(
    model: PathLike | bytes,
    cls: type[TokenizerT],
    *,
    stacklevel: int = 2,
) -> TokenizerT:
    """Load a sentencepiece BPE ``.model`` whose pieces are braille-mapped bytes (byte ``b``
    is ``chr(b + 0x2800)``, as the official JPEG-LM tokenizer), keeping its ids, its unk,
    BOS and EOS (pad: the model's pad, else unk). ``model``: a path or the file's bytes.

    Encodes as sentencepiece does on :func:`~jpeglm.tokenizer.base.bytes_to_braille` of the input:
    merge priority is the piece score (higher first, leftmost on ties), a byte without a piece
    is unk and a run of them one unk. sentencepiece itself is not needed (the protobuf is parsed
    here). Pieces with characters outside the braille block (e.g. ``▁``) can never match bytes:
    they become special tokens. Not supported (ValueError): unigram models, byte fallback,
    user-defined and unused pieces. ``stacklevel``: where warnings point, as ``warnings.warn``'s
    (2: the caller of this function).
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
    return _from_pieces(cls, pieces, trainer, normalizer, where, stacklevel + 1)


def _from_pieces(
    cls: type[TokenizerT],
    pieces: list[tuple[str, float, int]],
    trainer: dict[int, int],
    normalizer: dict[int, Any],
    where: str,
    stacklevel: int,
) -> TokenizerT:
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
            stacklevel=stacklevel,
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
            stacklevel=stacklevel,
        )
    return cls.from_parts(
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


# sentencepiece's ModelProto, read with a minimal protobuf wire-format parser


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
