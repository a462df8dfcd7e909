"""sentencepiece ``.model`` files: :func:`train_sentencepiece` makes one (needs the
``sentencepiece`` package); :func:`load_sentencepiece` reads a braille-mapped BPE model into a
tokenizer with a minimal protobuf parser (no ``sentencepiece`` needed) that encodes each input
as ``SentencePieceProcessor.encode(bytes_to_braille(input))`` does, id for id.
:meth:`jpeglm.tokenizer.bpe.Tokenizer.from_sentencepiece` calls it.

Which settings of a model are emulated (silently):

- BPE merges by piece score (higher first, the leftmost on ties); unk, BOS, EOS, pad ids;
- ``character_coverage`` < 1: a byte without a piece is unk, a run of them one unk;
- ``add_dummy_prefix`` (the default): ``"▁"`` before a non-empty input, merged with its first
  bytes where the model has such pieces (:mod:`jpeglm.tokenizer.sp_rules`);
  ``Tokenizer.dummy_prefix`` is the ``"▁"`` id;
- ``byte_fallback``: a byte without a piece as the byte pieces of its braille character's UTF-8;
- normalization rules ``nmt_nfkc`` (the default), ``nfkc``, their ``_cf`` forms and
  ``identity``: they leave braille characters unchanged; ``remove_extra_whitespaces``,
  ``split_by_whitespace`` and the other splitting options: braille text has no whitespace,
  digits or script changes, so they never apply.

Warned about (the raw bytes are encoded anyway): other normalization rules (a custom
``normalization_rule_tsv``), pieces that can never match braille bytes (special tokens then).
Refused (ValueError): unigram, word and char models, user-defined and unused pieces,
``treat_whitespace_as_suffix`` with a dummy prefix, a dummy prefix without its piece, byte
pieces without byte fallback (or byte fallback without all 256).

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
    *,
    official: bool = False,
    **options: Any,
) -> bytes:
    """Train a sentencepiece BPE model on each document's bytes as braille characters
    (U+2800 + byte; a ``str`` is taken as already converted). Returns the serialized model
    (what :func:`load_sentencepiece` and ``Tokenizer.from_sentencepiece`` read). Needs the
    ``sentencepiece`` package.

    Both modes: ``model_type="bpe"``, ``vocab_size``, ``max_sentence_length`` (whole images),
    ``hard_vocab_limit=False``, ``input_sentence_size=0`` (every document), ``num_threads``.
    Default mode (plain byte BPE): ``character_coverage=1.0``, ``add_dummy_prefix=False``,
    ``normalization_rule_name="identity"``, ``remove_extra_whitespaces=False``, no splitting
    (``split_by_whitespace``, ``split_by_unicode_script``, ``split_by_number`` False).
    ``official=True`` (how JPEG-LM's tokenizer was presumably made; its settings were never
    published): sentencepiece's defaults for all the rest (``add_dummy_prefix=True``,
    ``normalization_rule_name="nmt_nfkc"``, ``remove_extra_whitespaces=True``,
    ``split_by_whitespace=True``, ``character_coverage=0.9995``, ``byte_fallback=False``).
    ``options``: more ``SentencePieceTrainer.train`` keywords, overriding either mode's.
    """
    import io

    import sentencepiece as spm

    texts = (d if isinstance(d, str) else bytes_to_braille(bytes(d)) for d in docs)
    model = io.BytesIO()
    settings: dict[str, Any] = dict(
        model_type="bpe", vocab_size=vocab_size, max_sentence_length=max_sentence_length,
        hard_vocab_limit=False, input_sentence_size=0, num_threads=threads, minloglevel=2,
    )  # fmt: skip
    if not official:
        settings.update(
            character_coverage=1.0, add_dummy_prefix=False, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_by_whitespace=False,
            split_by_unicode_script=False, split_by_number=False,
        )  # fmt: skip
    settings.update(options)
    spm.SentencePieceTrainer.train(sentence_iterator=texts, model_writer=model, **settings)
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
    is unk and a run of them one unk (or, with byte fallback, byte pieces), the dummy prefix
    ``"▁"`` first. sentencepiece itself is not needed (the protobuf is parsed here). The
    dummy-prefix and byte pieces are special tokens (the native encoder never gives them).
    What is emulated, warned about and refused: this module's docstring. ``stacklevel``: where
    warnings point, as ``warnings.warn``'s (2: the caller of this function).
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
    byte_fallback = bool(trainer.get(35, 0))
    # the dummy prefix: add_dummy_prefix (normalizer field 3, default on), "▁" unless
    # escape_whitespaces (5) is off; treat_whitespace_as_suffix (trainer 24) would append it
    mark = None
    if normalizer.get(3, 1):
        if trainer.get(24, 0):
            raise ValueError(f"{where}: treat_whitespace_as_suffix is not supported")
        mark = "\u2581" if normalizer.get(5, 1) else " "
    if not pieces:
        raise ValueError(f"{where}: the model has no pieces")
    if len(pieces) > MAX_VOCAB_SIZE:
        raise ValueError(f"{where}: {len(pieces)} pieces exceed the limit of {MAX_VOCAB_SIZE}")
    tokens: list[bytes | None] = []
    names: dict[int, str] = {}
    scores: dict[int, float] = {}
    inert: list[str] = []
    prefix: list[int] = []  # the dummy-prefix pieces: mark + braille
    byte_pieces: dict[int, int] = {}  # byte -> id of "<0xNN>"
    for i, (piece, score, kind) in enumerate(pieces):
        if kind == 1:  # NORMAL
            braille = _braille(piece)
            prefixed = not braille and mark is not None and piece[:1] == mark
            if prefixed and not _braille(piece[1:] or "\u2800"):
                prefixed = False
            if (braille or prefixed) and len(piece) > 1:
                if math.isnan(score):
                    raise ValueError(f"{where}: piece {i} has a NaN score")
                scores[i] = score
            if braille:
                tokens.append(braille_to_bytes(piece))
                continue
            if prefixed:
                prefix.append(i)
            else:
                inert.append(piece)
        elif kind == 6 and byte_fallback and len(piece) == 6 and piece[:3] + piece[5:] == "<0x>":
            try:
                byte_pieces.setdefault(int(piece[3:5], 16), i)
            except ValueError:
                raise ValueError(f"{where}: piece {i} ({piece!r}) is no byte piece") from None
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
    if byte_fallback and len(byte_pieces) != 256:
        raise ValueError(f"{where}: a byte-fallback model without its 256 byte pieces")

    def role(field: int, default: int, kinds: tuple[int, ...]) -> int | None:
        i = trainer.get(field, default)
        return i if 0 <= i < len(pieces) and pieces[i][2] in kinds else None

    unk = role(40, 0, (2,))
    if unk is None:
        unk = next((i for i, p in enumerate(pieces) if p[2] == 2), None)
    bos, eos = role(41, 1, (3,)), role(42, 2, (3,))
    pad = role(43, -1, (2, 3))
    rule = normalizer.get(1, "identity")
    if rule not in _BRAILLE_SAFE_RULES:
        warnings.warn(
            f"{where}: the model's normalizer applies the rule {rule!r}; "
            "this tokenizer encodes the raw bytes only",
            stacklevel=stacklevel,
        )
    if mark is not None and all(pieces[i][0] != mark for i in prefix):
        raise ValueError(f"{where}: the model adds a dummy prefix {mark!r} but has no piece for it")
    return cls.from_parts(
        tokens,
        ranks,
        names,
        bos=bos,
        eos=eos,
        pad=pad if pad is not None else unk,
        unk=unk,
        fuse_unk=not byte_fallback,
        whole_token=False,
        dummy_prefix={i: ranks[i] for i in prefix} if mark is not None else None,
        byte_pieces=tuple(byte_pieces[b] for b in range(256)) if byte_fallback else None,
    )


#: Normalization rules that leave every braille character as it is (checked against
#: sentencepiece in the tests): accepted silently.
_BRAILLE_SAFE_RULES = ("identity", "", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")


def _braille(text: str) -> bool:
    return bool(text) and all(0x2800 <= ord(c) <= 0x28FF for c in text)


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
