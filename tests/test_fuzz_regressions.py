"""Inputs the fuzzers (fuzz/, `make fuzz`) found, replayed through the Python API.

Each test names the harness that found the input and the fix. The raw crashing inputs are kept
in fuzz/crashers/ (replay natively: build/fuzz/fuzz_<target> fuzz/crashers/<file>).
"""

from __future__ import annotations

import numpy as np
import pytest

from jpeglm import _core, codec
from jpeglm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def bpe_with_specials():
    # Three specials (no bytes) and the 256 single bytes, as the crasher's vocabulary had.
    tokens = [None, None, None] + [bytes([b]) for b in range(256)] + [b"ab", b"abc"]
    ranks = [0] * 259 + [0, 1]
    return _core.BPE(tokens, ranks, 0)


def test_decode_only_special_ids_skipped(bpe_with_specials):
    """fuzz_bpe (fuzz/crashers/bpe-decode-into-null-out): decode_into with every id a skipped
    special wrote nothing but called memcpy(nullptr, ..., 0) (UBSan: null argument) when the
    output buffer was empty. Fixed in csrc/bpe.h: zero-length tokens are not copied."""
    bpe = bpe_with_specials
    assert bpe.decode([0, 1, 2, 2, 1], True) == b""
    assert bpe.decode(np.array([0, 1, 2], dtype=np.int32), True) == b""
    assert bpe.decode([], True) == b""
    assert bpe.decode([0, 3 + ord("a"), 1, 259, 2], True) == b"aab"
    with pytest.raises(ValueError, match="special"):
        bpe.decode([0], False)


def test_tokenizer_decode_only_specials():
    tok = Tokenizer.train([b"abcabcabc" * 10], vocab_size=262, progress=False)
    specials = list(tok.special_tokens.values())
    assert tok.decode(specials) == b""
    assert tok.decode_batch([specials, [], specials[:1]]) == [b"", b"", b""]


def test_tolerant_fallback_size_is_bounded():
    """Found reading decode_tolerant for the fuzz harness: a grey fallback of size 65504 would
    allocate 12.9 GB (size**2 * 3) for a few bytes of garbage. Fixed in csrc/codec.cpp: the
    fallback obeys the decoder's pixel limit (2**28) and raises JPEGError."""
    with pytest.raises(codec.JPEGError, match="too large"):
        codec.decode(b"garbage", tolerant=True, size=65504)
    r = codec.decode(b"garbage", tolerant=True, size=64)
    assert r.image.shape == (64, 64, 3) and r.valid_mcus == 0 and r.total_mcus == 16
