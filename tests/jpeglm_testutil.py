"""Builders several test files share: hand-made sentencepiece model protos, the tokenizer
trained on the bundled photos, a tiny Hugging Face Llama configuration."""

from __future__ import annotations

import struct
from typing import Any

from jpeglm import codec
from jpeglm.data import bundled


def pb_varint(v: int) -> bytes:
    """A protobuf varint (negative numbers as 64-bit two's complement)."""
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def pb(field: int, wire: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint (wire 0), 4 raw bytes (wire 5) or length-delimited (2)."""
    key = pb_varint(field << 3 | wire)
    if wire == 0:
        return key + pb_varint(value)  # type: ignore[arg-type]
    if wire == 5:
        return key + value  # type: ignore[operator]
    return key + pb_varint(len(value)) + value  # type: ignore[arg-type,operator]


def sp_model(
    pieces: list[tuple[str, float, int]],
    model_type: int = 2,
    trainer: dict[int, int] | None = None,
    normalizer: dict[int, int] | None = None,
    dummy_prefix: bool = False,
) -> bytes:
    """A sentencepiece ``ModelProto`` by hand: ``pieces`` (piece, score, type), the trainer
    spec's ``model_type`` (2: BPE) and other varint ``trainer`` fields (35: byte_fallback),
    an identity normalizer with ``add_dummy_prefix`` and other varint ``normalizer`` fields."""
    out = b""
    for piece, score, kind in pieces:
        body = pb(1, 2, piece.encode()) + pb(2, 5, struct.pack("<f", score)) + pb(3, 0, kind)
        out += pb(1, 2, body)
    spec = pb(3, 0, model_type)
    for f, v in (trainer or {}).items():
        spec += pb(f, 0, v)
    out += pb(2, 2, spec)
    norm = pb(1, 2, b"identity") + pb(3, 0, int(dummy_prefix))
    for f, v in (normalizer or {}).items():
        norm += pb(f, 0, v)
    return out + pb(3, 2, norm)


def photo_tokenizer(vocab_size: int = 300) -> Any:
    """A tokenizer trained on the bundled photos at quality 20/25/30 and 16/32 px."""
    from jpeglm.tokenizer import Tokenizer

    streams = [codec.encode(p, quality=q, size=s) for p in bundled.photo_paths()
               for q in (20, 25, 30) for s in (16, 32)]  # fmt: skip
    return Tokenizer.train(streams, vocab_size=vocab_size, progress=False)


def tiny_llama_config(transformers: Any, **over: Any) -> Any:
    """A tiny ``LlamaConfig`` with JPEG-LM's ids (vocabulary 320, BOS 1, EOS 2, untied)."""
    kw = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
              bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    return transformers.LlamaConfig(**{**kw, **over})
