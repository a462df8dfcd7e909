"""Tokenizer files: jpeglm's own text format, tiktoken's rank file, HF ``tokenizer.json`` and
sentencepiece ``.model`` files (with a minimal protobuf parser), as plain functions.

:class:`jpeglm.tokenizer.bpe.Tokenizer` is the facade: its ``save``/``load``, ``save_tiktoken``,
``to_tiktoken``, ``save_hf`` and ``from_sentencepiece`` methods call the functions here (as
tiktoken's ``core.py`` leaves files to ``load.py``). Every writer is atomic; every reader
refuses files over :data:`jpeglm.tokenizer.bpe.MAX_FILE_BYTES` and raises ValueError for a malformed
one. Readers take ``cls``, the class to build (``Tokenizer`` or a subclass).

jpeglm's format (:func:`save_jpeglm`, :func:`load_jpeglm`; UTF-8 text, one item per line;
lines starting with ``#`` and blank lines are ignored). A header, then one line per id from 0 to
``vocab_size - 1``: ``<id> token <bytes as hex> <rank>`` (rank: merge priority, lower first) or
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
import struct
import warnings
from collections.abc import Iterable
from typing import Any

from jpeglm._io import atomic_write_bytes, input_file
from jpeglm.tokenizer import (
    MAX_FILE_BYTES,
    MAX_VOCAB_SIZE,
    PathLike,
    Tokenizer,
    braille_to_bytes,
    bytes_to_braille,
)

__all__ = [
    "save_jpeglm",
    "load_jpeglm",
    "save_tiktoken",
    "to_tiktoken",
    "save_hf",
    "load_sentencepiece",
    "load_file",
]

_FORMAT = "jpeglm-bpe"
_FORMAT_VERSION = 1


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


def load_file(path: PathLike, cls: type[Tokenizer] = Tokenizer) -> Tokenizer:
    """A tokenizer file of either format: the official sentencepiece ``.model`` (JPEG-LM's
    published tokenizer) or jpeglm's own (anything else). ``FileNotFoundError`` when missing."""
    path = input_file(path, "tokenizer")
    if path.suffix == ".model":
        return load_sentencepiece(path, cls, stacklevel=3)
    return load_jpeglm(path, cls)


# ------------------------------------------------------------------------------------------------
# jpeglm's own format


def save_jpeglm(tok: Tokenizer, path: PathLike) -> None:
    """Write ``tok`` in the text format of this module's docstring, atomically."""
    st = tok.parts()

    def opt(i: int | None) -> str:
        return "none" if i is None else str(i)

    lines = [  # (the comment line is as it always was: files stay byte-identical)
        "# jpeglm byte-level BPE tokenizer; format: see jpeglm.tokenizer.bpe",
        f"{_FORMAT} {_FORMAT_VERSION}",
        f"vocab_size {len(st.tokens)}",
        f"bos {opt(st.bos)}",
        f"eos {opt(st.eos)}",
        f"pad {opt(st.pad)}",
        f"unk {opt(st.unk)}",
        f"fuse_unk {int(st.fuse_unk)}",
        f"whole_token {int(st.whole_token)}",
        "tokens",
    ]
    for i, (b, r) in enumerate(zip(st.tokens, st.ranks)):
        if b is None:
            lines.append(f"{i} special {json.dumps(st.names[i])}")
        else:
            lines.append(f"{i} token {b.hex()} {r}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def load_jpeglm(path: PathLike, cls: type[Tokenizer] = Tokenizer) -> Tokenizer:
    """Read a file written by :func:`save_jpeglm`; ValueError (naming the line) when malformed."""
    data = _read_limited(path, "tokenizer")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a jpeglm tokenizer file (not UTF-8)") from e
    try:
        return _parse_jpeglm(text, cls)
    except _ParseError as e:
        raise ValueError(f"{path}: line {e.line}: {e.msg}") from None


def _parse_jpeglm(text: str, cls: type[Tokenizer]) -> Tokenizer:
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
    flags = {key: integer(hn, header[key], 0, 1, key) == 1 for key in ("fuse_unk", "whole_token")}
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
            except (ValueError, RecursionError):  # a nested list is no name either
                name = None
            if not isinstance(name, str) or not name:
                raise _ParseError(n, "a special token needs a name (a JSON string)")
            tokens.append(None)
            ranks.append(0)
            names[i] = name
        else:
            raise _ParseError(n, f"unknown token kind {parts[1]!r}")
    try:
        return cls.from_parts(tokens, ranks, names, **roles, **flags)
    except ValueError as e:
        raise _ParseError(hn, str(e)) from None


# ------------------------------------------------------------------------------------------------
# tiktoken


def _check_tiktoken(tok: Tokenizer) -> None:
    st = tok.parts()
    if len(st.tokens) < 256 or any(st.tokens[b] != bytes([b]) for b in range(256)):
        raise ValueError("not tiktoken-compatible: ids 0..255 must be the single bytes")
    previous = -1
    for i, b in enumerate(st.tokens):
        if b is not None and len(b) > 1:
            if st.ranks[i] <= previous:
                raise ValueError("not tiktoken-compatible: merge ranks are not in id order")
            previous = st.ranks[i]
    if not st.whole_token or st.unk is not None:
        raise ValueError("not tiktoken-compatible: sentencepiece-style unk/merging rules")


def save_tiktoken(tok: Tokenizer, path: PathLike) -> None:
    """Write tiktoken's rank file (``base64(token bytes) rank`` per line), atomically.

    Needs a tiktoken-compatible vocabulary: all 256 single bytes, ids ordered as the ranks
    (true for tokenizers trained here). Load it with ``tiktoken.load.load_tiktoken_bpe``.
    """
    _check_tiktoken(tok)
    lines = [
        f"{base64.b64encode(b).decode('ascii')} {i}"
        for i, b in enumerate(tok.parts().tokens)
        if b is not None
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("ascii"))


def to_tiktoken(tok: Tokenizer, name: str = "jpeglm") -> Any:
    """A ``tiktoken.Encoding`` with ``tok``'s ranks; ``._encode_bytes(b)`` equals
    ``tok.encode(b)`` for any bytes. Needs the ``tiktoken`` package."""
    import tiktoken

    _check_tiktoken(tok)
    return tiktoken.Encoding(
        name,
        pat_str=r"[\s\S]+",  # one piece: BPE over the whole input, no regex splitting
        mergeable_ranks=tok.mergeable_ranks,
        special_tokens=tok.special_tokens,
    )


# ------------------------------------------------------------------------------------------------
# HF tokenizers


def save_hf(tok: Tokenizer, path: PathLike) -> None:
    """Write a HF ``tokenizers`` ``tokenizer.json`` (atomically) that encodes as ``tok`` does.

    HF works on text: feed it :func:`~jpeglm.tokenizer.bpe.bytes_to_braille` of the bytes (byte
    ``b`` is ``chr(b + 0x2800)``); its ids are then those of ``tok.encode``. The model is BPE
    with no normalizer or pre-tokenizer (the whole input is one word), ``ignore_merges`` for the
    whole-token rule, and a merge for every way two tokens concatenate to a token, ordered by
    the rank of the result. Its decoder fuses the pieces; map them back with
    :func:`~jpeglm.tokenizer.bpe.braille_to_bytes`.
    """
    st = tok.parts()
    vocab: dict[str, int] = {}
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(st.tokens):
        if b is None:
            vocab[st.names[i]] = i
        else:
            vocab[bytes_to_braille(b)] = i
            by_bytes[b] = i
    merges: list[tuple[int, int, int]] = []  # (rank of result, left, right)
    for i, b in enumerate(st.tokens):
        if b is None or len(b) < 2:
            continue
        for s in range(1, len(b)):
            left, right = by_bytes.get(b[:s]), by_bytes.get(b[s:])
            if left is not None and right is not None:
                merges.append((st.ranks[i], left, right))
    merges.sort()
    strs = {i: bytes_to_braille(b) for i, b in enumerate(st.tokens) if b is not None}
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
        for i, name in sorted(st.names.items())
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
            "unk_token": None if st.unk is None else st.names[st.unk],
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": st.fuse_unk,
            "byte_fallback": False,
            "ignore_merges": st.whole_token,
            "vocab": vocab,
            "merges": [f"{strs[a]} {strs[b]}" for _, a, b in merges],
        },
    }
    atomic_write_bytes(path, json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))


# ------------------------------------------------------------------------------------------------
# sentencepiece


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
    cls: type[Tokenizer] = Tokenizer,
    *,
    stacklevel: int = 2,
) -> Tokenizer:
    """Load a sentencepiece BPE ``.model`` whose pieces are braille-mapped bytes (byte ``b``
    is ``chr(b + 0x2800)``, as the official JPEG-LM tokenizer), keeping its ids, its unk,
    BOS and EOS (pad: the model's pad, else unk). ``model``: a path or the file's bytes.

    Encodes as sentencepiece does on :func:`~jpeglm.tokenizer.bpe.bytes_to_braille` of the input:
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
    cls: type[Tokenizer],
    pieces: list[tuple[str, float, int]],
    trainer: dict[int, int],
    normalizer: dict[int, Any],
    where: str,
    stacklevel: int,
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
