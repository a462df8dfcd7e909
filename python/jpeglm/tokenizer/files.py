"""Tokenizer files: jpeglm's own text format, tiktoken's rank file and HF ``tokenizer.json``,
as plain functions (sentencepiece ``.model`` files: :mod:`jpeglm.tokenizer.sentencepiece`).

:class:`jpeglm.tokenizer.bpe.Tokenizer` is the facade: its ``save``/``load``, ``save_tiktoken``,
``to_tiktoken`` and ``save_hf`` methods call the functions here (as tiktoken's ``core.py``
leaves files to ``load.py``). Every writer is atomic; the reader refuses files over
:data:`jpeglm.tokenizer.base.MAX_FILE_BYTES` and raises ValueError for a malformed one. It takes
``cls``, the class to build (``Tokenizer`` or a subclass).

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
from typing import Any

from jpeglm._io import atomic_write_bytes
from jpeglm.tokenizer.base import (
    MAX_VOCAB_SIZE,
    PathLike,
    TokenizerLike,
    TokenizerT,
    _ParseError,
    _read_limited,
    bytes_to_braille,
)

__all__ = [
    "save_jpeglm",
    "load_jpeglm",
    "save_tiktoken",
    "to_tiktoken",
    "save_hf",
]

_FORMAT = "jpeglm-bpe"
_FORMAT_VERSION = 1


def _expressible(st: Any, what: str) -> None:
    """ValueError when ``st`` (a tokenizer's parts) has sentencepiece rules ``what`` cannot
    write (the dummy prefix, byte fallback): a file without them would encode differently."""
    rules = [n for n, v in (("dummy prefix", st.dummy_prefix), ("byte fallback", st.byte_pieces))
             if v is not None]  # fmt: skip
    if rules:
        raise ValueError(
            f"this tokenizer has sentencepiece's {' and '.join(rules)}, which {what} cannot "
            "express; keep its sentencepiece .model file instead"
        )


# ------------------------------------------------------------------------------------------------
# jpeglm's own format


def save_jpeglm(tok: TokenizerLike, path: PathLike) -> None:
    """Write ``tok`` in the text format of this module's docstring, atomically (ValueError for
    a sentencepiece model's dummy prefix or byte fallback, which the format cannot express)."""
    st = tok.parts()
    _expressible(st, "jpeglm's tokenizer format")

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


def load_jpeglm(path: PathLike, cls: type[TokenizerT]) -> TokenizerT:
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


def _parse_jpeglm(text: str, cls: type[TokenizerT]) -> TokenizerT:
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


def _check_tiktoken(tok: TokenizerLike) -> None:
    st = tok.parts()
    _expressible(st, "tiktoken")
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


def save_tiktoken(tok: TokenizerLike, path: PathLike) -> None:
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


def to_tiktoken(tok: TokenizerLike, name: str = "jpeglm") -> Any:
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


def save_hf(tok: TokenizerLike, path: PathLike) -> None:
    """Write a HF ``tokenizers`` ``tokenizer.json`` (atomically) that encodes as ``tok`` does.

    HF works on text: feed it :func:`~jpeglm.tokenizer.base.bytes_to_braille` of the bytes (byte
    ``b`` is ``chr(b + 0x2800)``); its ids are then those of ``tok.encode``. The model is BPE
    with no normalizer or pre-tokenizer (the whole input is one word), ``ignore_merges`` for the
    whole-token rule, and a merge for every way two tokens concatenate to a token, ordered by
    the rank of the result. Its decoder fuses the pieces; map them back with
    :func:`~jpeglm.tokenizer.base.braille_to_bytes`. ValueError for a sentencepiece model's
    dummy prefix or byte fallback (not written: keep the ``.model`` file).
    """
    st = tok.parts()
    _expressible(st, "this tokenizer.json writer")
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
