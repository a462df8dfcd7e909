"""Every public entry point on bad input: empty, truncated, corrupt, wrong type, huge, and a
non-existent path. Each case here is a row of the README's "Reliability" table; the outcome is
always a clear exception of the documented type (or, for tolerant decoding, a grey image), never
a crash or a hang."""

from __future__ import annotations

import numpy as np
import pytest

from jpeglm import codec
from jpeglm.grammar import ScanAutomaton, TokenConstraint
from jpeglm.tokenizer import MAX_FILE_BYTES, Tokenizer

JPEGError = codec.JPEGError


@pytest.fixture(scope="module")
def stream() -> bytes:
    rng = np.random.default_rng(0)
    return codec.encode(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), size=32)


def _corrupt(s: bytes) -> bytes:
    """32 one-bits (stuffed FF 00 pairs) in the middle of the scan: no Huffman code is all ones."""
    mid = len(s) // 2 + 100
    return s[:mid] + b"\xff\x00" * 4 + s[mid + 8 :]


# A SOF0 header claiming 65520 x 65520 pixels (more than the 2**28 pixel limit), then SOS.
HUGE_HEADER = bytes.fromhex(
    "ffd8ffc0001108fff0fff0030122000211010311 01ffda000c03010002110311003f00".replace(" ", "")
)

STRICT = {
    "decode": lambda d: codec.decode(d),
    "with_tables": lambda d: codec.with_tables(d),
    "header": lambda d: codec.header(d),
    "mcu_validity": lambda d: codec.mcu_validity(d),
    "coefficients": lambda d: codec.coefficients(d),
}


# ------------------------------------------------------------------------------------------------
# codec: decode / with_tables / header / mcu_validity / coefficients


@pytest.mark.parametrize("fn", STRICT)
def test_codec_empty(fn):
    with pytest.raises(JPEGError):
        STRICT[fn](b"")


@pytest.mark.parametrize("fn", STRICT)
def test_codec_truncated_header(fn, stream):
    cut = stream[: codec.header(stream)["scan_offset"] - 5]
    with pytest.raises(JPEGError, match="truncated"):
        STRICT[fn](cut)


@pytest.mark.parametrize("fn", ["decode", "coefficients"])
def test_codec_truncated_or_corrupt_scan_strict(fn, stream):
    for bad in (stream[:-10], _corrupt(stream)):
        with pytest.raises(JPEGError, match="libjpeg"):
            STRICT[fn](bad)


def test_codec_truncated_or_corrupt_scan_validity(stream):
    # Header-level functions read only the header; mcu_validity reports the damage per MCU.
    for bad in (stream[:-10], _corrupt(stream)):
        assert codec.header(bad)["width"] == 32
        assert len(codec.with_tables(bad)) > len(bad)
        v = codec.mcu_validity(bad)
        assert v.shape == (4,) and not v.all()


@pytest.mark.parametrize("fn", STRICT)
@pytest.mark.parametrize("bad", [3.5, None, [1, 2], np.zeros(4, np.int32), "image.jpg"])
def test_codec_wrong_type(fn, bad):
    with pytest.raises(TypeError):
        STRICT[fn](bad)


@pytest.mark.parametrize("fn", ["decode", "coefficients"])
def test_codec_huge_header(fn):
    with pytest.raises(JPEGError, match="too large"):
        STRICT[fn](HUGE_HEADER)


def test_codec_huge_header_validity():
    assert codec.header(HUGE_HEADER)["width"] == 65520
    with pytest.raises(JPEGError):
        codec.mcu_validity(HUGE_HEADER)


@pytest.mark.parametrize(
    "case", ["empty", "truncated_header", "truncated_scan", "corrupt", "huge", "garbage"]
)
def test_decode_tolerant_never_raises_on_data(case, stream):
    data = {
        "empty": b"",
        "truncated_header": stream[:20],
        "truncated_scan": stream[:-10],
        "corrupt": _corrupt(stream),
        "huge": HUGE_HEADER,
        "garbage": bytes(range(256)) * 4,
    }[case]
    r = codec.decode(data, tolerant=True, size=16)
    assert r.image.dtype == np.uint8 and r.image.shape[2] == 3
    assert 0 <= r.valid_mcus < r.total_mcus
    if case in ("truncated_scan", "corrupt"):
        assert r.image.shape == (32, 32, 3)
    else:
        assert r.image.shape == (16, 16, 3) and r.valid_mcus == 0


def test_decode_tolerant_wrong_type_and_huge_fallback():
    with pytest.raises(TypeError):
        codec.decode(3.5, tolerant=True)
    with pytest.raises(JPEGError, match="too large"):
        codec.decode(b"", tolerant=True, size=65504)


# ------------------------------------------------------------------------------------------------
# codec.encode / prepare


def test_encode_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        codec.encode(b"")
    png = (tmp_path / "x.png").as_posix()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    data = open(png, "rb").read()
    with pytest.raises(ValueError, match="cannot read"):
        codec.encode(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="cannot read"):
        codec.encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt
    with pytest.raises(TypeError):
        codec.encode(3)
    with pytest.raises(TypeError):
        codec.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="no pixels"):
        codec.encode(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="exceeds"):
        codec.encode(np.zeros((4, 4, 3), np.uint8), size=65536)
    with pytest.raises(FileNotFoundError):
        codec.encode(tmp_path / "missing.png")
    # A very long, thin image is cropped to its largest square: no blow-up.
    assert codec.decode(codec.encode(np.zeros((1, 70000, 3), np.uint8))).shape == (256, 256, 3)


# ------------------------------------------------------------------------------------------------
# Tokenizer.load / from_sentencepiece / encode / decode


@pytest.fixture(scope="module")
def tok(stream) -> Tokenizer:
    return Tokenizer.train([stream * 3], vocab_size=270, progress=False)


def test_tokenizer_load_bad_files(tok, tmp_path):
    good = tmp_path / "tok.txt"
    tok.save(good)
    text = good.read_bytes()
    cases = {
        "empty": b"",
        "truncated": text[: len(text) // 2],
        "corrupt": text.replace(b" token ", b" token zz", 1),
        "binary": b"\xff\xfe\x00\x01",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError):
            Tokenizer.load(p)
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no 64 MB write
    with pytest.raises(ValueError, match="larger than"):
        Tokenizer.load(huge)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path)  # a folder
    with pytest.raises(TypeError):
        Tokenizer.load(3)
    assert Tokenizer.load(good) == tok


def test_tokenizer_from_sentencepiece_bad(tmp_path):
    for data in (b"", b"\x0a\x05\x0a\x01", b"\xff" * 64, bytes(range(256))):
        with pytest.raises(ValueError):
            Tokenizer.from_sentencepiece(data)
    with pytest.raises(ValueError, match="larger than"):
        Tokenizer.from_sentencepiece(b"\x00" * (MAX_FILE_BYTES + 1))
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_sentencepiece(tmp_path / "missing.model")
    with pytest.raises(TypeError):
        Tokenizer.from_sentencepiece(3)


def test_tokenizer_encode_decode_bad(tok):
    assert tok.encode(b"") == [] and tok.decode([]) == b""
    with pytest.raises(TypeError):
        tok.encode("text")
    with pytest.raises(TypeError):
        tok.encode(3)
    for ids in ([tok.vocab_size], [-1], [2**70]):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode(ids)
    with pytest.raises(TypeError):
        tok.decode("abc")
    with pytest.raises(TypeError):
        tok.decode([1.5])
    with pytest.raises(TypeError):
        tok.decode(np.array([1.5]))


# ------------------------------------------------------------------------------------------------
# Grammar


def test_scan_automaton_bad(stream):
    assert ScanAutomaton(32).feed(b"") == -1
    a = ScanAutomaton(32)
    assert a.feed(stream[:20]) == -1 and a.phase == "header"  # truncated: just a prefix
    a = ScanAutomaton(32)
    bad = a.feed(_corrupt(stream))
    assert bad >= 0 and a.phase == "reject" and not a.allowed_bytes().any()
    a = ScanAutomaton(32)
    hdr = len(a.header)
    assert a.feed(stream[:hdr] + b"\x00" * 1_000_000) > 0  # huge: rejected where it goes wrong
    with pytest.raises(TypeError):
        ScanAutomaton(32).feed("text")
    with pytest.raises(TypeError):
        ScanAutomaton(32).feed(3)
    for size in (0, 17, 2**20):
        with pytest.raises(ValueError):
            ScanAutomaton(size)
    with pytest.raises(TypeError):
        ScanAutomaton(16.0)


def test_token_constraint_bad():
    with pytest.raises(ValueError, match="empty"):
        TokenConstraint([], 0)
    with pytest.raises(ValueError, match="eos_id"):
        TokenConstraint([b"a"], 5)
    with pytest.raises(TypeError):
        TokenConstraint([1, 2], 0)
    tc = TokenConstraint([bytes([b]) for b in range(256)] + [b""], eos_id=256, size=16)
    with pytest.raises(RuntimeError):
        tc.mask()
    tc.start(2, at_scan=True)
    ok = tc.advance([10**6, -5])  # out-of-range ids are refused, not a crash
    assert not ok.any() and tc.phases()[0] == "reject"
    with pytest.raises(ValueError, match="prompt"):
        tc.start(1, prompts=[b"\x00\x00"])


def test_hostile_checkpoint_json(tmp_path):
    pytest.importorskip("torch")
    from jpeglm.model import Transformer

    (tmp_path / "config.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="JSON object"):
        Transformer.from_pretrained(tmp_path)
    with open(tmp_path / "config.json", "wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB of zeros
    with pytest.raises(ValueError, match="larger than"):
        Transformer.from_pretrained(tmp_path)
