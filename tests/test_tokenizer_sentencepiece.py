"""sentencepiece models trained "the official way" (sentencepiece's defaults: dummy prefix,
nmt_nfkc, whitespace options, character coverage < 1) and with byte fallback load without a
warning and encode id for id as ``SentencePieceProcessor.encode(bytes_to_braille(x))``; decode
inverts. Small models trained here from the bundled photos at sizes 16/32/64, plus hand-made
models (random pieces over a 3-letter alphabet) against sentencepiece itself."""

from __future__ import annotations

import contextlib
import pickle
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from jpeglm_testutil import sp_model

from jpeglm import codec
from jpeglm.data import bundled
from jpeglm.tokenizer import Tokenizer, braille_to_bytes, bytes_to_braille, sp_rules
from jpeglm.tokenizer.sentencepiece import train_sentencepiece

spm = pytest.importorskip("sentencepiece")

PREFIX = "\u2581"


@pytest.fixture(scope="module")
def docs() -> list[bytes]:
    return [codec.encode(p, quality=q, size=s) for p in bundled.photo_paths() for q in (20, 25)
            for s in (16, 32, 64)]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(docs) -> list[bytes]:
    rng = random.Random(0)
    out = list(docs) + [bytes([b]) for b in range(256)] + [b""]
    out += [rng.randbytes(rng.randrange(1, 3000)) for _ in range(20)]
    out += [d[:k] for d in docs[:4] for k in range(1, 40)]  # cut inside the merged header
    out += [d[k:] for d in docs[:4] for k in (1, 2, 3, 7)]
    return out


def _load(model: bytes) -> tuple[Tokenizer, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "the official way" loads without a warning
        t = Tokenizer.from_sentencepiece(model)
    return t, spm.SentencePieceProcessor(model_proto=model)


def _prefix_pieces(sp) -> list[str]:
    return [sp.id_to_piece(i) for i in range(sp.vocab_size()) if sp.id_to_piece(i)[0] == PREFIX]


def _without_rules(t: Tokenizer) -> Tokenizer:
    """The same pieces with no dummy prefix and no byte fallback."""
    st = t.parts()._replace(dummy_prefix=None, byte_pieces=None)
    rest = {k: v for k, v in st._asdict().items() if k not in ("tokens", "ranks", "names")}
    return Tokenizer.from_parts(st.tokens, st.ranks, st.names, **rest)


def _check(t: Tokenizer, sp, inputs: list[bytes]) -> None:
    for x in inputs:
        ids = t.encode(x)
        assert ids == sp.encode(bytes_to_braille(x)), x[:16]
        if t.unk_id not in ids:
            assert t.decode(ids) == x
    assert t.encode_batch(inputs[:30]) == [t.encode(x) for x in inputs[:30]]
    flat, offsets = t.encode_batch_to_numpy(inputs[:30])
    assert flat.tolist() == sum((t.encode(x) for x in inputs[:30]), [])
    assert offsets.tolist() == np.cumsum([0] + [len(t.encode(x)) for x in inputs[:30]]).tolist()
    assert t.encode_to_numpy(inputs[0]).tolist() == t.encode(inputs[0])
    assert t.encode_to_numpy(inputs[0]).dtype == np.uint16
    batch = [t.encode(x) for x in inputs[:10]]
    assert t.decode_batch(batch) == [t.decode(b) for b in batch]


@pytest.fixture(scope="module")
def official(docs):
    return _load(train_sentencepiece(docs, 320, official=True))


def test_official_model(official, inputs):
    t, sp = official
    assert t.dummy_prefix == sp.piece_to_id(PREFIX)
    assert len(_prefix_pieces(sp)) > 1  # the JPEG header merges into "▁" pieces
    assert t.encode(b"") == sp.encode("") == []
    _check(t, sp, inputs)
    assert t.decode([t.dummy_prefix]) == b""
    assert t.decode([t.dummy_prefix], skip_special=False) == b""
    for i in range(sp.vocab_size()):  # every "▁" piece decodes to its braille bytes
        piece = sp.id_to_piece(i)
        if piece[0] == PREFIX:
            assert t.decode([i]) == braille_to_bytes(piece[1:])
    assert pickle.loads(pickle.dumps(t)) == t
    assert pickle.loads(pickle.dumps(t)).encode(inputs[0]) == t.encode(inputs[0])
    assert t.parts().dummy_prefix is not None and t.parts().byte_pieces is None


def test_official_model_not_written_where_it_cannot_be(official, tmp_path):
    t, _ = official
    for write in (t.save, t.save_hf, t.save_tiktoken):
        with pytest.raises(ValueError, match="dummy prefix") as e:
            write(tmp_path / "tok")
        assert "\n" not in str(e.value)
        assert not (tmp_path / "tok").exists()


def test_single_prefix_piece(docs, inputs):
    """Documents starting anywhere: "▁" is never merged; ids are [▁] + the plain encoding."""
    rng = random.Random(3)
    shifted = [d[rng.randrange(len(d)) :] + d for d in docs for _ in range(3)]
    t, sp = _load(train_sentencepiece(shifted, 320, official=True))
    assert _prefix_pieces(sp) == [PREFIX]
    _check(t, sp, inputs)
    plain = _without_rules(t)  # the same pieces without the prefix
    assert all(t.encode(x) == [t.dummy_prefix] + plain.encode(x) for x in inputs if x)


def test_many_prefix_merges(docs, inputs):
    """Short documents: the prefix is frequent and merges deep into the header."""
    t, sp = _load(train_sentencepiece([d[:12] for d in docs] + [d[:30] for d in docs], 320,
                                      official=True))  # fmt: skip
    assert len(_prefix_pieces(sp)) > 4
    assert sum(sp.is_unknown(sp.piece_to_id(chr(0x2800 + b))) for b in range(256)) > 100
    _check(t, sp, inputs)


@pytest.mark.parametrize("rule", ["nmt_nfkc", "nfkc", "identity", "nmt_nfkc_cf", "nfkc_cf"])
def test_normalization_rules(docs, rule):
    t, sp = _load(train_sentencepiece(docs, 300, official=True, normalization_rule_name=rule))
    every = bytes(range(256))
    assert sp.encode(bytes_to_braille(every)) == t.encode(every)
    assert [sp.encode(chr(0x2800 + b)) for b in range(256)] == [
        t.encode(bytes([b])) for b in range(256)
    ]
    assert sp.normalize(bytes_to_braille(every)).lstrip(PREFIX) == bytes_to_braille(every)


def test_custom_normalization_warns(docs, tmp_path):
    tsv = tmp_path / "rules.tsv"
    tsv.write_text("2800\t2801\n")  # a rule that does change braille
    model = train_sentencepiece(docs, 300, official=True, normalization_rule_tsv=str(tsv))
    with pytest.warns(UserWarning, match="normalizer") as record:
        Tokenizer.from_sentencepiece(model)
    assert len(record) == 1


@pytest.mark.parametrize(
    "options",
    [
        dict(remove_extra_whitespaces=False),
        dict(split_by_whitespace=False),
        dict(split_by_unicode_script=False, split_by_number=False),
        dict(character_coverage=0.98),
    ],
)
def test_whitespace_and_coverage_options(docs, inputs, options):
    t, sp = _load(train_sentencepiece(docs, 320, official=True, **options))
    _check(t, sp, inputs[:60] + inputs[-30:])


@pytest.fixture(scope="module")
def byte_fallback(docs):
    model = train_sentencepiece(docs, 560, official=True, byte_fallback=True,
                                character_coverage=0.98)  # fmt: skip
    return _load(model)


def test_byte_fallback(byte_fallback, inputs):
    t, sp = byte_fallback
    missing = [b for b in range(256) if sp.is_unknown(sp.piece_to_id(chr(0x2800 + b)))]
    assert missing  # some bytes have no piece: they fall back to byte pieces
    assert t.parts().byte_pieces == tuple(sp.piece_to_id(f"<0x{b:02X}>") for b in range(256))
    _check(t, sp, inputs)
    x = bytes(missing) * 2 + b"\xff\xd8"
    ids = t.encode(x)
    assert t.unk_id not in ids and len(ids) >= 3 * len(missing) * 2
    assert t.decode(ids) == x
    # arbitrary byte-piece runs (invalid UTF-8, other characters): their braille, as sp's text
    rng = random.Random(2)
    pieces = list(t.parts().byte_pieces) + [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    normal = [i for i in range(sp.vocab_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
    for _ in range(200):
        seq = [rng.choice(pieces if rng.random() < 0.7 else normal) for _ in range(12)]
        text = sp.decode(seq)
        want = bytes(ord(c) - 0x2800 for c in text if 0x2800 <= ord(c) <= 0x28FF)
        assert t.decode(seq) == want, seq
    with pytest.raises(ValueError, match="byte fallback"):
        t.save_hf("unused.json")


# ------------------------------------------------------------------------------------------------
# hand-made models: random pieces over 3 letters, with "▁" merges, against sentencepiece


def _model(pieces: list[tuple[str, float, int]], byte_fallback: bool = False) -> bytes:
    return sp_model(pieces, trainer={35: int(byte_fallback)}, dummy_prefix=True)


def _random_model(rng: random.Random) -> list[tuple[str, float, int]]:
    letters = "\u2800\u2801\u2802"[: rng.choice((2, 3))]  # (inputs also have a third byte)
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), (PREFIX, -100.0, 1)]
    seen = {PREFIX}
    for c in letters:
        pieces.append((c, -101.0, 1))
        seen.add(c)
    for _ in range(rng.randrange(3, 14)):
        s = "".join(rng.choice(letters) for _ in range(rng.randrange(2, 5)))
        if rng.random() < 0.35:
            s = PREFIX + s[1:]
        if s not in seen:
            seen.add(s)
            pieces.append((s, float(rng.choice(range(-8, 0))), 1))
    return pieces


def test_handmade_prefix_merges(monkeypatch):
    windows: list[int] = []
    real = sp_rules.SentencePieceRules._window
    monkeypatch.setattr(sp_rules.SentencePieceRules, "_window",
                        lambda self, w: windows.append(len(w)) or real(self, w))  # fmt: skip
    rng = random.Random(11)
    for _ in range(150):
        pieces = _random_model(rng)
        t, sp = _load(_model(pieces))
        for _ in range(10):
            n = rng.choice((1, 2, 5, 30, 200, 700))
            x = bytes(rng.choice(b"\x00\x01\x02") for _ in range(n))
            ids = t.encode(x)
            assert ids == sp.encode(bytes_to_braille(x)), (pieces, x)
            if t.unk_id not in ids:
                assert t.decode(ids) == x
    assert max(windows) > 64  # the window had to grow (and the answer stayed exact)


def test_handmade_cascade():
    """ "▁⠀" steals the first byte of "⠀⠁" pairs; the rest re-pairs as "⠁⠀" to the end."""
    a, b = "\u2800", "\u2801"
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), (PREFIX + a, 0.0, 1),
              (b + a, -1.0, 1), (a + b, -2.0, 1), (PREFIX, -5.0, 1), (a, -6.0, 1),
              (b, -7.0, 1)]  # fmt: skip
    t, sp = _load(_model(pieces))
    for n in (1, 31, 32, 33, 100, 1000):
        x = b"\x00\x01" * n
        assert t.encode(x) == sp.encode(bytes_to_braille(x))
        assert t.decode(t.encode(x)) == x


def test_handmade_byte_fallback_and_prefix():
    a = "\u2800"
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    pieces += [(PREFIX + a, -1.0, 1), (a + a, -2.0, 1), (PREFIX, -3.0, 1), (a, -4.0, 1)]
    t, sp = _load(_model(pieces, byte_fallback=True))
    for x in (b"", b"\x00", b"\x05", b"\x00\x05\x00\x00\x07\x07", bytes(range(256))):
        assert t.encode(x) == sp.encode(bytes_to_braille(x))
        assert t.decode(t.encode(x)) == x


@pytest.mark.parametrize(
    "pieces, byte_fallback, match",
    [
        ([("<0x41>", 0.0, 6)], False, "byte piece"),
        ([("\u2800", 0.0, 1)], True, "256 byte pieces"),
        ([("\u2800", 0.0, 1), (PREFIX + "\u2800", 0.0, 1)], False, "no piece for it"),
    ],
)
def test_refused(pieces, byte_fallback, match):
    base = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_sentencepiece(_model(base + pieces, byte_fallback))


# ------------------------------------------------------------------------------------------------
# the sampler starts an empty prompt with the dummy prefix


def test_empty_prompt_starts_with_the_prefix(official, monkeypatch):
    pytest.importorskip("torch")
    from jpeglm.inference import loop

    t, sp = official
    seen: list[list[list[int]]] = []

    def fake_run(model, tokenizer, prompts, prompt_bytes, *args, **kw):
        seen.append([list(p) for p in prompts])
        return [[] for _ in prompts]

    monkeypatch.setattr(loop, "_run", fake_run)
    monkeypatch.setattr(loop, "prepare_for_sampling", lambda model, dtype: None)
    monkeypatch.setattr(loop, "kernel_threads", lambda model: contextlib.nullcontext())
    model = SimpleNamespace(args=SimpleNamespace(max_seq_len=4096), training=False,
                            eval=lambda: None, train=lambda mode: None)  # fmt: skip
    opts = loop.SamplingSettings()
    head = codec.encode(bundled.photo_paths()[0], quality=25, size=16)[:20]
    loop._run_batches(model, t, [b"", head], 16, opts)  # two lengths: two batches
    want_head = [t.bos_id] + sp.encode(bytes_to_braille(head))
    assert sorted(seen) == sorted([[[t.bos_id, t.dummy_prefix]], [want_head]])
    seen.clear()
    loop._run_batches(model, t, loop.repeat_prompt(b"", 3), 16, opts)
    assert seen == [[[t.bos_id, t.dummy_prefix]] * 3]
    plain = _without_rules(t)  # no dummy prefix: [BOS] alone, as before
    seen.clear()
    loop._run_batches(model, plain, [b""], 16, opts)
    assert seen == [[[plain.bos_id]]]


def test_unconditional_images_start_from_the_encoded_header(official, monkeypatch):
    """``generate`` (images) starts a dummy-prefix tokenizer's samples from the canonical
    header, encoded as training encoded every image: the "▁" piece the model learned after BOS
    is there, merged with the header's first bytes as sentencepiece merges it."""
    pytest.importorskip("torch")
    from jpeglm.grammar import ScanAutomaton
    from jpeglm.inference import loop, sample

    t, sp = official
    seen: list[tuple[list[int], bytes]] = []

    def fake_run(model, tokenizer, prompts, prompt_bytes, *args, **kw):
        seen.extend((list(p), bytes(b)) for p, b in zip(prompts, prompt_bytes))
        return [[] for _ in prompts]

    monkeypatch.setattr(loop, "_run", fake_run)
    monkeypatch.setattr(loop, "prepare_for_sampling", lambda model, dtype: None)
    monkeypatch.setattr(loop, "kernel_threads", lambda model: contextlib.nullcontext())
    model = SimpleNamespace(args=SimpleNamespace(max_seq_len=4096), training=False,
                            eval=lambda: None, train=lambda mode: None)  # fmt: skip
    for size in (16, 64):
        seen.clear()
        header = ScanAutomaton(size).header
        assert header == codec.encode(bundled.photo_paths()[0], size=size)[: len(header)]
        sample.generate(model, t, n=2, size=size)
        want = [t.bos_id] + sp.encode(bytes_to_braille(header))
        assert sp.id_to_piece(want[1]).startswith(PREFIX)
        assert seen == [(want, header)] * 2
    seen.clear()
    plain = _without_rules(t)  # no dummy prefix: BOS alone, as before
    sample.generate(model, plain, n=1, size=16)
    assert seen == [([plain.bos_id], b"")]
