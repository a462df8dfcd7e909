"""Tests of jpeglm.tokenizer (bpe, base, files, sentencepiece): the native BPE against the
plain-Python reference, tiktoken, HF tokenizers and sentencepiece; files; bad input; fuzzing."""

from __future__ import annotations

import os
import pickle
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jpeglm_testutil import sp_model

from jpeglm import _core, codec
from jpeglm.data import bundled as samples
from jpeglm.reference import bpe as ref
from jpeglm.tokenizer import MAX_FILE_BYTES, BPEError, Tokenizer, braille_to_bytes, bytes_to_braille
from jpeglm.tokenizer import bpe as tokenizer
from jpeglm.tokenizer import files as formats
from jpeglm.tokenizer import sentencepiece as sp_formats

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ------------------------------------------------------------------------------------------------
# Corpora: canonical JPEG streams of the bundled photos (random crops, flips, scales)


def _crops(n: int, seed: int, size: int = 256) -> list[bytes]:
    """Canonical streams of ``n`` random crops (a quarter to all of the short side, mirrored at
    random) of the bundled photos."""
    return codec.encode_batch(samples.random_crops(n, seed, (0.25, 1.0), flip=True), size=size)


@pytest.fixture(scope="module")
def train_docs(photo_streams) -> list[bytes]:
    docs = [*photo_streams, *_crops(24, 1)]
    docs += [codec.encode(samples.synthetic(k, 64, seed=1)) for k in samples.SYNTHETIC]
    return docs


@pytest.fixture(scope="module")
def held_out() -> list[bytes]:
    return _crops(8, 2, size=128) + [codec.encode(samples.synthetic("noise", 96, seed=7))]


@pytest.fixture(scope="module")
def tok(small_tokenizer) -> Tokenizer:
    """The session's vocab-320 tokenizer (conftest's ``small_tokenizer``)."""
    return small_tokenizer


@pytest.fixture(scope="module")
def tok_big(train_docs) -> Tokenizer:
    return Tokenizer.train(train_docs, 2048, progress=False)


@pytest.fixture(scope="module")
def tok_deep() -> Tokenizer:
    """Trained on a 3-letter alphabet: long tokens, many merges per input, long segments."""
    rng = random.Random(5)
    docs = [
        bytes(rng.choice(b"\x00\x01\xff") for _ in range(rng.randrange(100, 3000)))
        for _ in range(20)
    ]
    docs += [b"\x00" * 5000, b"\x00\x01" * 700]
    return Tokenizer.train(docs, 600, progress=False)


def _reference_ids(t: Tokenizer, data: bytes) -> list[int]:
    return ref.encode(data, t.mergeable_ranks)


# ------------------------------------------------------------------------------------------------
# Layout and semantics


def test_layout(tok):
    assert tok.vocab_size == len(tok) == 320
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (317, 318, 319, None)
    assert tok.special_tokens == {"<s>": 317, "</s>": 318, "<pad>": 319}
    ranks = tok.mergeable_ranks
    assert len(ranks) == 317
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert sorted(ranks.values()) == list(range(317))
    assert tok.token_bytes(65) == b"A"
    with pytest.raises(ValueError):
        tok.token_bytes(317)
    with pytest.raises(ValueError):
        tok.token_bytes(320)


def test_token_byte_values(tok, tok_deep):
    pieces = SPECIAL_PIECES + [(_braille(b"ab"), -1.0, 1), (_braille(b"a"), -2.0, 1)]
    sp = Tokenizer.from_sentencepiece(sp_model(pieces))  # ids 0..2 special, no single "b"
    assert sp.token_byte_values() == {3: b"ab", 4: b"a"}
    for t in (tok, tok_deep, sp):
        values = t.token_byte_values()
        assert values == {i: b for b, i in t.mergeable_ranks.items()}
        assert values == {i: t.token_bytes(i) for i in values}
        assert set(values).isdisjoint(t.special_tokens.values())
        assert len(values) + len(t.special_tokens) == t.vocab_size
    values = tok.token_byte_values()
    assert list(values) == list(range(317)) and values[65] == b"A"
    values[65] = b"B"  # a copy: the tokenizer is unchanged
    assert tok.token_byte_values()[65] == b"A"


def test_specials_never_produced(tok, held_out):
    for d in held_out:
        ids = tok.encode(d)
        assert max(ids) < 317


def test_every_token_encodes_to_itself(tok, tok_big, tok_deep):
    for t in (tok, tok_big, tok_deep):
        for b, i in t.mergeable_ranks.items():
            assert t.encode(b) == [i]


def test_matches_reference_encoder(tok, tok_big, tok_deep, held_out):
    rng = random.Random(0)
    for t in (tok, tok_big):
        for d in held_out[:4]:
            assert t.encode(d) == _reference_ids(t, d)
    for _ in range(20):
        d = bytes(rng.choice(b"\x00\x01\xff") for _ in range(rng.randrange(0, 400)))
        assert tok_deep.encode(d) == _reference_ids(tok_deep, d)


def test_leftmost_among_equal_ranks():
    # "aaa": the pair (a, a) at 0 and at 1 have the same rank; the leftmost merges.
    t = Tokenizer({**{bytes([b]): b for b in range(256)}, b"aa": 256})
    assert t.encode(b"aaa") == [256, ord("a")]
    assert t.encode(b"aaaa") == [256, 256]
    # Merges match bytes, not the training pair: (a, bc) -> abc even though abc = ab + c.
    ranks = {**{bytes([b]): b for b in range(256)}, b"bc": 256, b"ab": 257, b"abc": 258}
    t = Tokenizer(ranks)
    assert t.encode(b"abc") == [258]
    assert t.encode(b"xabcx") == [ord("x"), 258, ord("x")]


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_reference_and_roundtrip(tok, data):
    ids = tok.encode(data)
    assert ids == _reference_ids(tok, data)
    assert tok.decode(ids) == data
    assert tok.encode_to_numpy(data).tolist() == ids


@FUZZ
@given(data=st.lists(st.sampled_from([0, 1, 255]), max_size=600).map(bytes))
def test_small_alphabet_reference(tok_deep, data):
    ids = tok_deep.encode(data)
    assert ids == _reference_ids(tok_deep, data)
    assert tok_deep.decode(ids) == data


# ------------------------------------------------------------------------------------------------
# Parity with tiktoken, HF tokenizers and sentencepiece


def _tiktoken(t: Tokenizer):
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(
        "jpeglm-test",
        pat_str=r"[\s\S]+",
        mergeable_ranks=t.mergeable_ranks,
        special_tokens=t.special_tokens,
    )


def test_tiktoken_parity(tok, tok_big, tok_deep, held_out):
    for t in (tok, tok_big, tok_deep):
        enc = _tiktoken(t)
        for d in held_out:
            assert enc._encode_bytes(d) == t.encode(d)
        assert enc.decode_bytes(t.encode(held_out[0])) == held_out[0]
    assert tok.to_tiktoken()._encode_bytes(held_out[0]) == tok.encode(held_out[0])


@FUZZ
@given(data=st.one_of(st.binary(max_size=2000), st.text(max_size=300).map(str.encode)))
def test_tiktoken_parity_random(tok, tok_big, data):
    for t in (tok, tok_big):
        assert _tiktoken(t)._encode_bytes(data) == t.encode(data)


@FUZZ
@given(data=st.lists(st.sampled_from([0, 1, 255]), max_size=800).map(bytes))
def test_tiktoken_parity_deep(tok_deep, data):
    assert _tiktoken(tok_deep)._encode_bytes(data) == tok_deep.encode(data)


def test_save_tiktoken(tok, tmp_path):
    pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    tok.save_tiktoken(tmp_path / "t.tiktoken")
    assert load_tiktoken_bpe(str(tmp_path / "t.tiktoken")) == tok.mergeable_ranks


@pytest.fixture(scope="module")
def hf_pair(tok, tok_big, tok_deep, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    out = []
    for k, t in enumerate((tok, tok_big, tok_deep)):
        path = tmp_path_factory.mktemp("hf") / f"tokenizer{k}.json"
        t.save_hf(path)
        out.append((t, tokenizers.Tokenizer.from_file(str(path))))
    return out


def test_hf_parity(hf_pair, held_out):
    for t, hf in hf_pair:
        for d in held_out:
            ids = t.encode(d)
            assert hf.encode(bytes_to_braille(d)).ids == ids
            assert braille_to_bytes(hf.decode(ids)) == d
        assert hf.token_to_id("<s>") == t.bos_id
        assert hf.get_vocab_size() == t.vocab_size


@FUZZ
@given(data=st.binary(max_size=1500), deep=st.lists(st.sampled_from([0, 1, 255]), max_size=500))
def test_hf_parity_random(hf_pair, data, deep):
    for t, hf in hf_pair[:2]:
        assert hf.encode(bytes_to_braille(data)).ids == t.encode(data)
    t, hf = hf_pair[2]
    assert hf.encode(bytes_to_braille(bytes(deep))).ids == t.encode(bytes(deep))


@pytest.fixture(scope="module")
def sp_pair(train_docs, tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    from jpeglm.tokenizer.sentencepiece import train_sentencepiece

    model = train_sentencepiece(train_docs, 320, max_sentence_length=1 << 16)
    path = tmp_path_factory.mktemp("sp") / "jpeg.model"
    path.write_bytes(model)
    return Tokenizer.from_sentencepiece(path), spm.SentencePieceProcessor(model_file=str(path))


def test_sentencepiece_parity(sp_pair, held_out):
    t, sp = sp_pair
    assert t.vocab_size == sp.vocab_size()
    assert (t.bos_id, t.eos_id, t.unk_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert t.pad_id == sp.unk_id()  # the model has no pad: pad = unk, as JPEG-LM
    for d in held_out:
        ids = t.encode(d)
        assert sp.encode(bytes_to_braille(d)) == ids
        assert t.decode(ids) == d
    for i in range(sp.vocab_size()):
        if not (sp.is_control(i) or sp.is_unknown(i)):
            assert t.token_bytes(i) == braille_to_bytes(sp.id_to_piece(i))


@FUZZ
@given(data=st.binary(max_size=1500))
def test_sentencepiece_parity_random(sp_pair, data):
    t, sp = sp_pair
    assert sp.encode(bytes_to_braille(data)) == t.encode(data)


def test_sentencepiece_model_to_hf(sp_pair, held_out, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    t, sp = sp_pair
    t.save_hf(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    rng = random.Random(1)
    for d in held_out + [rng.randbytes(2000) for _ in range(5)]:
        assert hf.encode(bytes_to_braille(d)).ids == t.encode(d) == sp.encode(bytes_to_braille(d))


# ------------------------------------------------------------------------------------------------
# sentencepiece models built by hand (no sentencepiece needed)


def _braille(b: bytes) -> str:
    return "".join(chr(0x2800 + x) for x in b)


SPECIAL_PIECES = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]


def test_sentencepiece_handmade():
    pieces = SPECIAL_PIECES + [
        (_braille(b"ab"), -1.0, 1),
        (_braille(b"bc"), -1.0, 1),  # same score as "ab": the leftmost wins
        (_braille(b"abc"), -2.0, 1),
        (_braille(b"a"), -3.0, 1),
        (_braille(b"b"), -4.0, 1),
        (_braille(b"c"), -5.0, 1),
    ]
    t = Tokenizer.from_sentencepiece(sp_model(pieces))
    assert (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (0, 1, 2, 0)
    assert t.encode(b"abc") == [5]  # ab first (leftmost of equal scores), then ab + c
    assert t.encode(b"bcab") == [4, 3]
    assert t.encode(b"zzazz") == [0, 6, 0]  # a run of bytes without a piece is one unk
    assert t.decode([0, 6, 1, 2]) == b"a"
    with pytest.raises(ValueError):
        t.decode([0, 6], skip_special=False)
    with pytest.raises(ValueError, match="tiktoken"):
        t.to_tiktoken()
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_proto=sp_model(pieces))
    for s in (b"abc", b"bcab", b"zzazz", b"abcabcbca", b"cbacba"):
        assert sp.encode(_braille(s)) == t.encode(s)


def test_sentencepiece_pad_and_inert_pieces():
    pieces = SPECIAL_PIECES + [("<pad>", 0.0, 3), ("\u2581", -1.0, 1), (_braille(b"a"), -2.0, 1)]
    with pytest.warns(UserWarning, match="not braille") as record:
        t = Tokenizer.from_sentencepiece(sp_model(pieces, trainer={43: 3}))
    assert record[0].filename == __file__  # the warning points at the caller
    with pytest.warns(UserWarning, match="not braille") as record:
        sp_formats.load_sentencepiece(sp_model(pieces, trainer={43: 3}), Tokenizer)
    assert record[0].filename == __file__
    assert t.pad_id == 3
    assert t.special_tokens["\u2581"] == 4
    assert t.encode(b"aa") == [5, 5]


@pytest.mark.parametrize(
    "model, match",
    [
        (b"", "no pieces"),
        (b"\xff" * 20, "varint|wire"),
        (b"garbage that is not a model", "not a valid"),
        (sp_model(SPECIAL_PIECES + [(_braille(b"a"), 0.0, 1)], model_type=1), "UNIGRAM"),
        (sp_model(SPECIAL_PIECES + [(_braille(b"a"), 0.0, 1)], trainer={35: 1}), "fallback"),
        (sp_model(SPECIAL_PIECES + [("<0x41>", 0.0, 6)]), "byte piece"),
        (sp_model(SPECIAL_PIECES + [("x", 0.0, 4)]), "user-defined"),
        (sp_model(SPECIAL_PIECES + [(_braille(b"a"), 0.0, 1)] * 2), "same bytes"),
    ],
)
def test_sentencepiece_bad_models(model, match):
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_sentencepiece(model)


def test_sentencepiece_truncated(sp_pair, tmp_path):
    t, sp = sp_pair
    data = sp.serialized_model_proto()
    for cut in sorted({1, 2, 5, 17, len(data) // 3, len(data) // 2, len(data) - 1}):
        try:
            Tokenizer.from_sentencepiece(data[:cut])
        except ValueError:
            pass
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_sentencepiece(tmp_path / "missing.model")


# ------------------------------------------------------------------------------------------------
# Training


def test_training_matches_reference(train_docs):
    rng = random.Random(3)
    corpora = [
        [d[:300] for d in train_docs[:6]],
        [d[-500:] for d in train_docs[5:9]],
        [b"a" * 300, b"ab" * 100, b"\x00" * 17, b"", b"z"],
        [bytes(rng.randrange(4) for _ in range(400)) for _ in range(3)],
        [b"abcabcabc" * 20, b"bcabca" * 30],
    ]
    for corpus in corpora:
        expect = ref.train(corpus, 50)
        t = Tokenizer.train(corpus, 256 + 50 + 3, progress=False)
        merges = [(a, b) for a, b in _core.bpe_train(corpus, 50)]
        assert merges == expect
        assert t.vocab_size == 256 + len(expect) + 3
        tokens = ref.vocab_from_merges(expect)
        assert [t.token_bytes(i) for i in range(len(tokens))] == tokens


def test_training_runs_out_of_pairs():
    t = Tokenizer.train([b"abab", b"x"], 400, progress=False)
    assert t.vocab_size == 256 + 2 + 3  # ab, abab
    assert t.encode(b"abab") == [257]
    assert t.bos_id == 258


def test_training_tie_break():
    # (a, b) and (c, d) both occur twice: the smaller pair of ids goes first.
    t = Tokenizer.train([b"cdab", b"abcd"], 260, progress=False)
    assert t.token_bytes(256) == b"ab"


def test_training_deterministic(train_docs):
    big = train_docs * (1 + (1_100_000 // sum(map(len, train_docs))))  # > 1 MB: chunked counting
    a = Tokenizer.train(big, 400, threads=1, progress=False)
    b = Tokenizer.train(big, 400, threads=2, progress=False)
    c = Tokenizer.train(list(reversed(big)), 400, progress=False)
    assert a == b
    assert a.mergeable_ranks == c.mergeable_ranks  # counts do not depend on document order


def test_training_inputs(train_docs):
    arrays = [np.frombuffer(d, dtype=np.uint8) for d in train_docs[:4]]
    views = [memoryview(bytearray(d)) for d in train_docs[:4]]
    a = Tokenizer.train(train_docs[:4], 300, progress=False)
    assert Tokenizer.train(arrays, 300, progress=False) == a
    assert Tokenizer.train(iter(views), 300, progress=False) == a


def test_training_progress(train_docs, capsys):
    Tokenizer.train(train_docs[:3], 270, progress=True)
    assert "BPE merges" in capsys.readouterr().err


def test_training_callback_exception(train_docs):
    def boom(done, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _core.bpe_train(train_docs[:3], 20, 1, boom)


@pytest.mark.parametrize("vocab_size", [0, 256, 258, 10**9, -1])
def test_training_bad_vocab_size(train_docs, vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(train_docs[:2], vocab_size, progress=False)


@pytest.mark.parametrize("vocab_size", [True, 320.0, "320", None])
def test_training_vocab_size_type(train_docs, vocab_size):
    with pytest.raises(TypeError):
        Tokenizer.train(train_docs[:2], vocab_size, progress=False)


@pytest.mark.parametrize(
    "corpus, exc",
    [
        ([], ValueError),
        ([b"", b""], ValueError),
        (b"a single bytes object", TypeError),
        ("text", TypeError),
        ([b"ok", "text"], TypeError),
        ([b"ok", 5], TypeError),
        (12, TypeError),
        ([np.zeros(10, dtype=np.int32)], TypeError),
    ],
)
def test_training_bad_corpus(corpus, exc):
    with pytest.raises(exc):
        Tokenizer.train(corpus, 300, progress=False)


def test_training_bad_threads(train_docs):
    with pytest.raises(ValueError):
        Tokenizer.train(train_docs[:2], 300, threads=0, progress=False)


# ------------------------------------------------------------------------------------------------
# Encoding and decoding API


def test_input_types(tok, held_out):
    d = held_out[0]
    ids = tok.encode(d)
    arr = np.frombuffer(d, dtype=np.uint8)
    assert tok.encode(bytearray(d)) == ids
    assert tok.encode(memoryview(d)) == ids
    assert tok.encode(arr) == ids
    assert tok.encode(np.repeat(arr, 2)[::2]) == ids  # non-contiguous numpy: copied
    assert tok.encode(memoryview(d)[10:50]) == tok.encode(d[10:50])
    assert tok.encode(b"") == [] and tok.encode_to_numpy(b"").size == 0
    assert tok.encode(b"\xff") == [255]
    with pytest.raises(TypeError):
        tok.encode("text")
    with pytest.raises(TypeError):
        tok.encode(list(d))
    with pytest.raises(TypeError):
        tok.encode(None)
    with pytest.raises(TypeError):
        tok.encode(arr.astype(np.int16))
    with pytest.raises(ValueError):
        tok.encode(memoryview(d)[::2])


def test_numpy_output(tok, held_out):
    for d in held_out:
        a = tok.encode_to_numpy(d)
        assert a.dtype == np.uint16 and a.ndim == 1
        assert a.tolist() == tok.encode(d)


def test_wide_vocabulary_uses_uint32():
    ranks = {bytes([b]): b for b in range(256)}
    for x in range(256):
        for y in range(256):
            ranks[bytes([x, y])] = len(ranks)
    t = Tokenizer(ranks)
    assert t.vocab_size > 65536
    data = bytes(range(256)) * 3 + b"\x07"
    a = t.encode_to_numpy(data)
    assert a.dtype == np.uint32
    assert a.tolist() == t.encode(data) == _tiktoken(t)._encode_bytes(data)
    assert t.decode(a) == data
    flat, offsets = t.encode_batch_to_numpy([data, b"ab"])
    assert flat.dtype == np.uint32 and offsets.tolist() == [0, len(a), len(a) + 1]


def test_batch(tok, held_out):
    items = held_out + [b"", b"\x00", bytearray(b"\xff\xd8"), np.frombuffer(held_out[0], np.uint8)]
    single = [tok.encode(x) for x in items]
    for threads in (None, 1, 2):
        assert tok.encode_batch(items, threads=threads) == single
        flat, offsets = tok.encode_batch_to_numpy(items, threads=threads)
        assert flat.dtype == np.uint16 and offsets.dtype == np.int64
        assert offsets[0] == 0 and offsets[-1] == flat.size and len(offsets) == len(items) + 1
        assert [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(items))] == single
        parts = [flat[offsets[i] : offsets[i + 1]] for i in range(len(items))]
        assert tok.decode_batch(parts, threads=threads) == [bytes(x) for x in items]
        assert tok.decode_batch(single, threads=threads) == [bytes(x) for x in items]
    assert tok.encode_batch([]) == []
    flat, offsets = tok.encode_batch_to_numpy([])
    assert flat.size == 0 and offsets.tolist() == [0]
    assert tok.decode_batch([]) == []
    with pytest.raises(TypeError):
        tok.encode_batch(held_out[0])
    with pytest.raises(TypeError, match="item 1"):
        tok.encode_batch([b"ok", "text"])
    with pytest.raises(ValueError, match="item 1"):
        tok.decode_batch([[1, 2], [1, 10**6]])


def test_threads_share_a_tokenizer(tok, held_out):
    expect = [tok.encode(d) for d in held_out]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(tok.encode, held_out * 4))
    assert got == expect * 4


def test_decode_inputs(tok, held_out):
    d = held_out[1]
    ids = tok.encode(d)
    a = np.array(ids)
    for dtype in (np.uint16, np.int16, np.uint32, np.int32, np.int64, np.uint64):
        assert tok.decode(a.astype(dtype)) == d
    assert tok.decode(a.astype(">i4")) == d  # big-endian: converted
    assert tok.decode(np.repeat(a, 2)[::2]) == d  # strided: converted
    assert tok.decode(tuple(ids)) == d
    assert tok.decode(iter(ids)) == d
    assert tok.decode([np.int64(x) for x in ids]) == d
    assert tok.decode([]) == b""
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == d


@pytest.mark.parametrize(
    "tokens, exc",
    [
        ([320], ValueError),
        ([-1], ValueError),
        ([2**40], ValueError),
        ([2**70], ValueError),
        (np.array([320], dtype=np.uint16), ValueError),
        (np.array([-1], dtype=np.int8), ValueError),
        (np.array([2**63 + 5], dtype=np.uint64), ValueError),
        ([1.5], TypeError),
        (["a"], TypeError),
        ([None], TypeError),
        ("abc", TypeError),
        (b"abc", TypeError),
        (np.array([1.0]), TypeError),
        (np.array([True]), TypeError),
        (np.zeros((2, 2), dtype=np.int64), ValueError),
        (5, TypeError),
    ],
)
def test_decode_bad_ids(tok, tokens, exc):
    with pytest.raises(exc):
        tok.decode(tokens)


def test_decode_special_strict(tok):
    with pytest.raises(ValueError, match="special"):
        tok.decode([65, tok.eos_id], skip_special=False)
    assert tok.decode([65, 66], skip_special=False) == b"AB"
    with pytest.raises(BPEError):
        tok.decode([tok.vocab_size])


@FUZZ
@given(ids=st.lists(st.integers(min_value=-3, max_value=330), max_size=200))
def test_decode_random_ids(tok, ids):
    if all(0 <= i < tok.vocab_size for i in ids):
        expect = b"".join(tok.token_bytes(i) for i in ids if i < 317)
        assert tok.decode(ids) == expect
        assert tok.decode(np.array(ids, dtype=np.int32)) == expect
    else:
        with pytest.raises(ValueError):
            tok.decode(ids)
        with pytest.raises(ValueError):
            tok.decode(np.array(ids, dtype=np.int64))


def test_braille_helpers():
    data = bytes(range(256))
    text = bytes_to_braille(data)
    assert text == "".join(chr(0x2800 + b) for b in data)
    assert braille_to_bytes(text) == data
    assert bytes_to_braille(b"") == "" and braille_to_bytes("") == b""
    with pytest.raises(ValueError, match="U\\+0041"):
        braille_to_bytes("\u2800A")
    with pytest.raises(ValueError):
        braille_to_bytes("\u2900")
    with pytest.raises(TypeError):
        braille_to_bytes(b"\x00")


def test_pickle(tok, held_out):
    t = pickle.loads(pickle.dumps(tok))
    assert t == tok and t.encode(held_out[0]) == tok.encode(held_out[0])


# ------------------------------------------------------------------------------------------------
# Vocabulary validation


def test_bad_vocabularies():
    base = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="single bytes"):
        Tokenizer({bytes([b]): b for b in range(255)})
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer({**base, b"ab": 3})
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer({**base, b"ab": 300})
    with pytest.raises(TypeError):
        Tokenizer({**base, "ab": 256})
    with pytest.raises(ValueError, match="bos"):
        Tokenizer(base, {"<s>": 256}, bos="<start>")
    with pytest.raises(ValueError):
        Tokenizer({**base, b"": 256})
    with pytest.raises(ValueError, match="longer"):
        Tokenizer({**base, b"x" * (_core.BPE_MAX_TOKEN_BYTES + 1): 256})
    with pytest.raises(ValueError, match="same bytes"):
        _core.BPE([bytes([b]) for b in range(256)] + [b"ab", b"ab"], list(range(258)))
    with pytest.raises(ValueError, match="unk"):
        _core.BPE([b"a", None], [0, 0], unk_id=0)
    with pytest.raises(ValueError, match="no token"):
        _core.BPE([b"a", b"b"], [0, 1]).encode(b"abc")
    t = Tokenizer(base, {"<s>": 256, "</s>": 257})
    assert (t.bos_id, t.eos_id, t.pad_id) == (256, 257, None)


# ------------------------------------------------------------------------------------------------
# Files


def test_save_load(tok, tok_deep, sp_pair, held_out, tmp_path):
    for t in (tok, tok_deep, sp_pair[0]):
        path = tmp_path / "tok.txt"
        t.save(path)
        loaded = Tokenizer.load(path)
        assert loaded == t
        assert loaded.encode(held_out[0]) == t.encode(held_out[0])
        assert [p.name for p in tmp_path.iterdir()] == ["tok.txt"]  # no temporary files left
    text = (tmp_path / "tok.txt").read_text()
    assert text.splitlines()[1] == "jpeglm-bpe 1"


def test_format_functions_back_the_methods(tok, sp_pair, tmp_path):
    t, sp = sp_pair
    formats.save_jpeglm(tok, tmp_path / "f.txt")
    tok.save(tmp_path / "m.txt")
    assert (tmp_path / "f.txt").read_bytes() == (tmp_path / "m.txt").read_bytes()
    assert (
        formats.load_jpeglm(tmp_path / "m.txt", Tokenizer)
        == tok
        == tokenizer.load_file(tmp_path / "m.txt")
    )
    formats.save_hf(t, tmp_path / "f.json")
    t.save_hf(tmp_path / "m.json")
    assert (tmp_path / "f.json").read_bytes() == (tmp_path / "m.json").read_bytes()
    (tmp_path / "sp.model").write_bytes(sp.serialized_model_proto())
    assert tokenizer.load_file(tmp_path / "sp.model") == t
    assert sp_formats.load_sentencepiece(sp.serialized_model_proto(), Tokenizer) == t

    class Sub(Tokenizer):
        pass

    assert type(Sub.load(tmp_path / "m.txt")) is Sub
    assert type(Sub.from_sentencepiece(tmp_path / "sp.model")) is Sub


def test_save_is_atomic(tok, tmp_path, monkeypatch):
    path = tmp_path / "tok.txt"
    tok.save(path)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        Tokenizer.train([b"abcabc"], 260, progress=False).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tok.txt"]


def _lines(tok: Tokenizer, tmp_path: Path) -> list[str]:
    tok.save(tmp_path / "good.txt")
    return (tmp_path / "good.txt").read_text().splitlines()


@pytest.mark.parametrize(
    "edit",
    [
        lambda ls: ls[:5],
        lambda ls: ls[:-1],
        lambda ls: ls[:100],
        lambda ls: [ls[0], "jpeglm-bpe 2", *ls[2:]],
        lambda ls: [x.replace("vocab_size 320", "vocab_size 321") for x in ls],
        lambda ls: [x.replace("vocab_size 320", "vocab_size 99999999999") for x in ls],
        lambda ls: [x.replace("bos 317", "bos 12") for x in ls],
        lambda ls: [x.replace("bos 317", "bos -1") for x in ls],
        lambda ls: [x for x in ls if not x.startswith("eos")],
        lambda ls: [*ls[:3], ls[2], *ls[3:]],
        lambda ls: [x.replace("fuse_unk 0", "fuse_unk 2") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "12 token 0g 12") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "12 token 0d 12") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "13 token 0c 12") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "12 token  12") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "12 token 0c -4") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "12 token 0c ²") for x in ls],
        lambda ls: [x.replace("12 token 0c 12", "12 weird 0c 12") for x in ls],
        lambda ls: [x.replace('special "<s>"', "special <s>") for x in ls],
        lambda ls: [x.replace('special "<s>"', 'special ""') for x in ls],
        lambda ls: [x.replace("tokens", "tokenz") for x in ls],
        lambda ls: ls[:9] + ["color blue"] + ls[9:],
        lambda ls: [],
    ],
)
def test_load_corrupt(tok, tmp_path, edit):
    lines = edit(_lines(tok, tmp_path))
    (tmp_path / "bad.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError):
        Tokenizer.load(tmp_path / "bad.txt")


def test_load_garbage_and_limits(tmp_path):
    (tmp_path / "bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError):
        Tokenizer.load(tmp_path / "bin")
    with open(tmp_path / "huge", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse
    with pytest.raises(ValueError, match="larger"):
        Tokenizer.load(tmp_path / "huge")
    with pytest.raises(ValueError, match="larger"):
        Tokenizer.from_sentencepiece(tmp_path / "huge")
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing")


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=5000),
    flip=st.integers(0, 5000),
    byte=st.binary(min_size=1, max_size=1),
)
def test_load_mutated(tok, tmp_path_factory, cut, flip, byte):
    path = tmp_path_factory.mktemp("m") / "t.txt"
    tok.save(path)
    data = bytearray(path.read_bytes())
    data[flip % len(data)] = byte[0]
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        t = Tokenizer.load(path)
    except ValueError:
        return
    assert t.decode(t.encode(b"\xff\xd8abc")) == b"\xff\xd8abc"
