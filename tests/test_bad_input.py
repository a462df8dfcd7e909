"""Every public entry point on bad input: empty, truncated, corrupt, wrong type, huge, and a
non-existent path. Each case here is a row of the README's "Reliability" table; the outcome is
always a clear exception of the documented type (or, for tolerant decoding, a grey image), never
a crash or a hang."""

from __future__ import annotations

import numpy as np
import pytest

from jpeglm import codec
from jpeglm.data import bundled as samples
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


def test_tolerant_fallback_beyond_the_pixel_limit():
    """A fallback size within MAX_SIZE whose square exceeds the decoder's 2**28 pixel limit is
    refused natively (the size check alone would let it through)."""
    assert 16400 <= codec.MAX_SIZE and 16400**2 > 1 << 28
    with pytest.raises(JPEGError, match="too large"):
        codec.decode(b"", tolerant=True, size=16400)
    with pytest.raises(JPEGError, match="too large"):
        codec.decode_batch([b"", b"x"], tolerant=True, size=16400)


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
    with pytest.raises(TypeError):  # uint8, uint16 and float (0..1) arrays are images
        codec.encode(np.zeros((4, 4, 3), np.int32))
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
    special = [x for x in text.splitlines() if b" special " in x]
    assert special  # a special token's name nested 100,000 lists deep (a RecursionError before)
    cases["nested"] = text.replace(special[0], special[0].split(b" special ")[0]
                                   + b" special " + b"[" * 100_000, 1)  # fmt: skip
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
    from jpeglm.checkpoint.hf import load_pretrained

    (tmp_path / "config.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="JSON object"):
        load_pretrained(tmp_path)
    with open(tmp_path / "config.json", "wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB of zeros
    with pytest.raises(ValueError, match="larger than"):
        load_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------
# The command line: every bad input is one line on stderr (exit 2), no traceback, and the
# user's files are never replaced or removed. (`jpeglm.cli.main` in process; the signal tests
# run `python -m jpeglm.cli` in a subprocess.)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from jpeglm.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err, err
    for w in words:
        assert w in err, err


def _snapshot(folder) -> dict:
    """Every file under ``folder`` (names as bytes) with its content."""
    import os

    root = os.fsencode(folder)
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture
def photos(tmp_path):
    """A folder with a PNG photo, a JPEG photo and a stripped stream of the PNG."""
    import shutil

    from jpeglm.data import bundled as samples

    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(samples.photo_path("chelsea"), d / "photo.png")
    shutil.copy(samples.photo_path("rocket"), d / "x.jpg")
    (d / "photo.jlm").write_bytes(codec.encode(d / "photo.png", size=32))
    return d


def test_cli_outputs_never_replace_inputs(photos, capsys):
    before = _snapshot(photos)
    p = photos
    refused = [
        ["decode", "--tolerant", p / "photo.png", "-o", p],  # -> photo.png, the input itself
        ["decode", "--tolerant", p / "photo.jlm", p / "photo.png", "-o", p],  # the second
        ["encode", "--full", p / "x.jpg", "-o", p, "--size", "32"],  # -> x.jpg
        ["encode", "--full", p / "x.jpg", "-o", p / "sub" / "..", "--size", "32"],  # spelled apart
        ["train-tokenizer", p / "x.jpg", "-o", p / "x.jpg", "--quiet"],
        ["explain", p / "photo.png", "-o", p, "--size", "32"],  # no clash: allowed below
    ]
    (p / "3_block.png").write_bytes(before[b"photo.png"])  # an input named like explain's output
    before = _snapshot(photos)
    refused[-1] = ["explain", p / "3_block.png", "-o", p, "--size", "32"]
    for argv in refused:
        rc, out, err = _cli(capsys, *argv)
        assert rc == 2, argv
        _one_line(err, "refusing to overwrite the input")
        assert out == ""  # refused before any work
        assert _snapshot(photos) == before, argv  # byte for byte, and nothing added
    # prepare: a list file naming one of the files prepare writes
    tok = Tokenizer.train([codec.encode(p / "x.jpg", size=32)] * 2, vocab_size=270, progress=False)
    tok.save(p.parent / "tok.jpeglm")
    out = p.parent / "shards"
    out.mkdir()
    (out / "sources.txt").write_bytes(before[b"photo.png"])
    (p.parent / "list.txt").write_text(f"{p / 'x.jpg'}\n{out / 'sources.txt'}\n")
    rc, _, err = _cli(capsys, "prepare", p.parent / "list.txt", out, "--tokenizer",
                      p.parent / "tok.jpeglm", "--size", "32", "--quiet")  # fmt: skip
    assert rc == 2
    _one_line(err, "refusing to overwrite the input", "sources.txt")
    assert (out / "sources.txt").read_bytes() == before[b"photo.png"]


def test_cli_sampling_commands_refuse_inputs(photos, tmp_path, capsys):
    pytest.importorskip("torch")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the refusal comes first
    before = _snapshot(photos)
    (photos / "completion_000.png").write_bytes(before[b"photo.png"])
    (photos / "grid.png").write_bytes(before[b"photo.png"])
    before = _snapshot(photos)
    common = ["--model", model, "--tokenizer", tmp_path / "t", "-o", photos, "--size", "32",
              "--rows", "1"]  # fmt: skip
    for argv in (["complete", *common, photos / "completion_000.png"],
                 ["eval", *common, photos / "grid.png"]):  # fmt: skip
        rc, out, err = _cli(capsys, *argv)
        assert rc == 2
        _one_line(err, "refusing to overwrite the input")
        assert _snapshot(photos) == before


def test_cli_equal_stems_get_distinct_names(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    srcs = []
    for d, name in (("a", "x.png"), ("b", "x.png"), ("c", "x-1.png"), ("d", "X.png")):
        (tmp_path / d).mkdir()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / d / name)
        srcs.append(tmp_path / d / name)
    before = _snapshot(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for _ in range(2):  # a rerun replaces its own outputs, nothing else
        rc, _, err = _cli(capsys, "encode", *srcs, "-o", out, "--size", "32")
        assert rc == 0 and err == ""
        names = ["x.jlm", "x-1.jlm", "x-1-1.jlm", "X-2.jlm"]  # in input order, case-blind
        assert sorted(f.name for f in out.iterdir()) == sorted(
            names + ["notes.txt", ".jpeglm-outputs"]
        )
        for s, n in zip(srcs, names):
            assert (out / n).read_bytes() == codec.encode(s, size=32)
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x.jpg").write_bytes(codec.with_tables(codec.encode(srcs[1], size=32)))
    dec = tmp_path / "dec"
    rc, _, _ = _cli(capsys, "decode", out / "x.jlm", tmp_path / "e" / "x.jpg", "-o", dec)
    assert rc == 0 and sorted(f.name for f in dec.iterdir()) == [
        ".jpeglm-outputs",
        "x-1.png",
        "x.png",
    ]
    np.testing.assert_array_equal(
        np.asarray(Image.open(dec / "x-1.png")), codec.decode(codec.encode(srcs[1], size=32))
    )
    for k, v in before.items():
        assert (tmp_path / k.decode()).read_bytes() == v


def test_cli_output_folder_checked_before_the_work(photos, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "out"
    before = _snapshot(photos)
    cases = [
        ["encode", photos / "x.jpg", "-o", bad],
        ["decode", photos / "photo.jlm", "-o", bad],
        ["explain", photos / "x.jpg", "-o", bad, "--size", "32"],
        ["train-tokenizer", photos / "x.jpg", "-o", bad / "tok.jpeglm", "--quiet"],
        ["demo", "--out", bad, "--codec-only"],
        ["encode", photos / "x.jpg", "-o", blocker],  # a file where the folder should be
    ]
    for argv in cases:
        rc, out, err = _cli(capsys, *argv)
        assert rc == 2, argv
        _one_line(err, "output folder", "a-file")
        assert out == ""
    rc, out, err = _cli(capsys, "train-tokenizer", photos / "x.jpg", "-o", tmp_path, "--quiet")
    assert rc == 2
    _one_line(err, "is a folder")
    assert _snapshot(photos) == before and blocker.read_text() == "not a folder"


def test_cli_sampling_output_folder_checked_before_loading(tmp_path, capsys):
    pytest.importorskip("torch")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{ not json")  # loading it would fail: it never happens
    (model / "tokenizer.jpeglm").write_text("not loaded either")
    (tmp_path / "f.png").write_text("")  # an image name (never read) and a file, not a folder
    for cmd in ("sample", "complete", "eval"):
        extra = [] if cmd == "sample" else [tmp_path / "f.png"]
        rc, _, err = _cli(capsys, cmd, "--model", model, "-o", tmp_path / "f.png" / "o", *extra)
        assert rc == 2
        _one_line(err, "cannot create output folder")


def _nan_options():
    return [
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--temperature", "-0.5"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-p", "nan"], "--top-p"),
        (["--top-k", "-1"], "--top-k"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-1"], "--batch-size"),
        (["-n", "0"], "-n must be"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--max-tokens", "-3"], "--max-tokens"),
        (["--size", "100"], "multiple of 16"),
        (["--device", "foo"], "--device"),
        (["--device", "cuda:3"], "--device"),
    ]


@pytest.mark.parametrize("opts,match", _nan_options())
def test_cli_sampling_options_checked_before_loading(tmp_path, capsys, opts, match):
    torch = pytest.importorskip("torch")
    if opts == ["--device", "cuda:3"] and torch.cuda.is_available():
        opts = ["--device", f"cuda:{torch.cuda.device_count()}"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{ not json")  # never loaded
    out = tmp_path / "o"
    rc, stdout, err = _cli(capsys, "sample", "--model", model, "-o", out, *opts)
    assert rc == 2 and stdout == ""
    _one_line(err, match)
    assert not out.exists()  # nothing created either


def test_cli_sampling_device_without_gpu(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: cuda:N past the last one is covered above")
    (tmp_path / "config.json").write_text("{}")
    rc, _, err = _cli(capsys, "sample", "--model", tmp_path, "-o", tmp_path / "o",
                      "--device", "cuda")  # fmt: skip
    assert rc == 2
    _one_line(err, "no such GPU", "no CUDA device")


def test_cli_interrupt_is_one_line(monkeypatch, capsys):
    from jpeglm.cli import codec as codec_commands

    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec_commands, "cmd_bench", boom)
    rc, _, err = _cli(capsys, "bench")
    assert rc == 130 and err == "jpeglm bench: interrupted\n"


# prepare


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """A tokenizer and a folder of small images, for prepare."""
    from jpeglm.data import bundled as samples

    root = tmp_path_factory.mktemp("prep")
    (root / "imgs").mkdir()
    for i, im in enumerate(samples.random_crops(10, seed=3, scale=(0.3, 0.9))):
        im.resize((48, 48)).save(root / "imgs" / f"{i:02d}.png")
    streams = [codec.encode(p, size=32) for p in sorted((root / "imgs").iterdir())]
    Tokenizer.train(streams, vocab_size=300, progress=False).save(root / "tok.jpeglm")
    return root


def _prepare(capsys, prep, src, out, *extra) -> tuple[int, str, str]:
    return _cli(capsys, "prepare", src, out, "--tokenizer", prep / "tok.jpeglm", "--size", "32",
                "--seq-len", "64", "--images-per-shard", "4", "--quiet", *extra)  # fmt: skip


def test_cli_prepare_removes_only_its_own_temp_files(prep, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".notes.tmp").write_text("the user's")
    (out / ".x.png.abcd1234.tmp").write_text("named like a temp file, not of prepare's files")
    stale = [".index.json.abcd1234.tmp", ".shard_000001.npy.q_9zzzzz.tmp",
             ".sources.txt.a1b2c3d4.tmp"]  # fmt: skip
    for s in stale:  # left by a killed prepare
        (out / s).write_text("stale")
    rc, _, err = _prepare(capsys, prep, prep / "imgs", out)
    assert rc == 0 and err == ""
    assert (out / ".notes.tmp").read_text() == "the user's"
    assert (out / ".x.png.abcd1234.tmp").exists()
    assert not any((out / s).exists() for s in stale)


def test_cli_prepare_truncated_tar(prep, tmp_path, capsys):
    import json
    import tarfile

    tar = tmp_path / "imgs.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted((prep / "imgs").iterdir()):
            tf.add(p, arcname=p.name)
    data = tar.read_bytes()
    for cut in (len(data) // 2, len(data) // 2 + 700):  # in a header; in a member's data
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        out = tmp_path / f"o{cut}"
        rc, stdout, err = _prepare(capsys, prep, tmp_path / "cut.tar", out)
        assert rc == 0 and err == "", err
        index = json.loads((out / "index.json").read_text())
        assert index["complete"] and 0 < index["images"] < 10
        errors = {s["source"]: s["error"] for s in index["skipped"]}
        assert "truncated or corrupt" in errors["cut.tar"]
        assert (tmp_path / "cut.tar").read_bytes() == data[:cut]
    (tmp_path / "head.tar").write_bytes(data[:300])  # not even one whole header
    rc, _, err = _prepare(capsys, prep, tmp_path / "head.tar", tmp_path / "oh")
    assert rc == 2
    _one_line(err, "head.tar", "not a readable tar archive")


def test_cli_prepare_non_utf8_file_name(prep, tmp_path, capsys):
    import json
    import os
    import shutil

    src = tmp_path / "imgs"
    shutil.copytree(prep / "imgs", src)
    bad = os.path.join(os.fsencode(src), b"caf\xe9.png")  # Latin-1, not UTF-8
    shutil.copyfile(src / "00.png", bad)
    before = _snapshot(src)
    out = tmp_path / "out"
    rc, stdout, err = _prepare(capsys, prep, src, out)
    assert rc == 0 and err == "", err
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["images"] == 10
    assert index["skipped"] == [{"source": "caf\\xe9.png", "error": "file name is not valid UTF-8"}]
    from jpeglm.data.sources import read_sources

    assert len(read_sources(out)) == 10
    assert _snapshot(src) == before


def test_cli_prepare_no_usable_image(prep, tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (src / "b.png").write_bytes(b"junk")
    before = _snapshot(src)
    rc, stdout, err = _prepare(capsys, prep, src, tmp_path / "out")
    assert rc == 2
    _one_line(err, "no usable image", "2 skipped", "report.json")
    assert "BytesIO" not in err
    left = sorted(f.name for f in (tmp_path / "out").iterdir())
    assert left == [".jpeglm-outputs", "report.json"]
    assert _snapshot(src) == before
    (tmp_path / "empty").mkdir()
    for what, match in ((tmp_path / "empty", "no images found"),
                        (tmp_path / "missing", "no such folder, list, archive or file"),
                        (src / "b.png", "no usable image")):  # fmt: skip
        rc, _, err = _prepare(capsys, prep, what, tmp_path / "o2")
        assert rc == 2
        _one_line(err, match)


@pytest.mark.parametrize("sig,rc,word", [("SIGINT", 130, "interrupted"),
                                         ("SIGTERM", 143, "terminated")])  # fmt: skip
def test_cli_prepare_signal(prep, tmp_path, sig, rc, word):
    """A signal mid-`jpeglm prepare`: one line, no temp file, what is on disk is loadable and a
    rerun completes."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "imgs"
    src.mkdir()
    for k in range(36):  # 360 images, hard links of the 10
        for p in (prep / "imgs").iterdir():
            os.link(p, src / f"{k:02d}_{p.name}")
    before = _snapshot(src)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jpeglm.cli", "prepare", str(src), str(out), "--tokenizer",
           str(prep / "tok.jpeglm"), "--size", "32", "--seq-len", "64", "--images-per-shard",
           "8", "--quiet", "--workers", "1"]  # fmt: skip

    # SIGINT as a terminal delivers it: a shell starts background jobs with SIGINT ignored, and
    # an ignored SIGINT is inherited (the command then rightly keeps ignoring it)
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    t0 = time.monotonic()
    while not (out / "index.json").exists() and proc.poll() is None and time.monotonic() < t0 + 60:
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert err == f"jpeglm prepare: {word}\n"
    assert not list(out.glob(".*.tmp"))
    index = json.loads((out / "index.json").read_text())
    assert not index["complete"] and 0 < len(index["shards"]) < 45
    for s in index["shards"]:
        if s["sequences"]:  # a chunk with no whole sequence has no file
            assert np.load(out / s["file"]).shape == (s["sequences"], 64)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads((out / "index.json").read_text())["images"] == 360
    assert _snapshot(src) == before


def test_cli_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    """A file in the output folder that no jpeglm command wrote is never replaced; the files a
    command wrote there are (a rerun), and the list of them lives in `.jpeglm-outputs`."""
    src = samples.photo_path("astronaut")
    out = tmp_path / "o"
    out.mkdir()
    (out / "astronaut.jlm").write_bytes(b"the user's own file")
    rc, _, err = _cli(capsys, "encode", src, "-o", out, "--size", "32")
    assert rc == 2
    _one_line(err, "was not written by jpeglm")
    assert (out / "astronaut.jlm").read_bytes() == b"the user's own file"
    fresh = tmp_path / "f"
    for _ in range(2):  # the rerun replaces its own output
        rc, _, err = _cli(capsys, "encode", src, "-o", fresh, "--size", "32")
        assert rc == 0 and err == ""
    assert "astronaut.jlm" in (fresh / ".jpeglm-outputs").read_text().splitlines()
