"""The command line (encode / decode / demo) and the atomic-write helper."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jpeglm import _io, codec
from jpeglm.cli import main
from jpeglm.data import bundled as samples


def test_encode_decode_roundtrip(tmp_path, capsys):
    src = samples.photo_path("chelsea")
    assert main(["encode", str(src), "-o", str(tmp_path / "enc")]) == 0
    stream = (tmp_path / "enc" / "chelsea.jlm").read_bytes()
    assert stream == codec.encode(src)
    assert main(["decode", str(tmp_path / "enc" / "chelsea.jlm"), "-o", str(tmp_path / "dec")]) == 0
    png = np.asarray(Image.open(tmp_path / "dec" / "chelsea.png"))
    np.testing.assert_array_equal(png, codec.decode(stream))
    assert main(["encode", str(src), "-o", str(tmp_path / "full"), "--full"]) == 0
    assert (tmp_path / "full" / "chelsea.jpg").read_bytes() == codec.with_tables(stream)


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["encode", str(tmp_path / "nope.png"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err and err.count("\n") == 1
    bad = tmp_path / "bad.jlm"
    bad.write_bytes(codec.encode(samples.synthetic("noise"))[:1000])
    assert main(["decode", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "--tolerant" in capsys.readouterr().err
    assert main(["decode", str(bad), "-o", str(tmp_path / "out"), "--tolerant"]) == 0
    assert "MCUs valid" in capsys.readouterr().out
    assert (
        main(["encode", str(samples.photo_path("coffee")), "-o", str(tmp_path), "--size", "100"])
        == 2
    )
    assert "multiple of 16" in capsys.readouterr().err


def test_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--size", "64", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "astronaut" in out and "MCUs valid" in out
    grid = Image.open(tmp_path / "side_by_side.png")
    assert grid.size == (3 * 64, len(samples.PHOTOS) * 64)
    with Image.open(tmp_path / "coffee.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    # the model parts: the checkpoints' recorded sampling settings, the video completions
    import json

    from jpeglm.checkpoint.load import read_info
    from jpeglm.data import bundled

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sampling"] == read_info(bundled.DEMO_CHECKPOINT)["sampling"]
    assert report["samples"] == 4 and 0 <= report["judge"]["samples"]["share"] <= 1
    v = report["video"]
    assert v["sampling"] == read_info(bundled.VIDEO_CHECKPOINT)["sampling"]
    assert v["clips"] == 4 and v["prompt_frames"] == 10 and v["total_frames"] == 15
    assert 0 < v["baseline_psnr"] < 100 and -1 <= v["ssim"] <= 1
    with Image.open(tmp_path / "video_grid.png") as im:
        assert im.width > 15 * 128 and im.height >= 8 * 128  # 8 rows of 15 frames, shown 2x


def test_explain(tmp_path, capsys):
    assert (
        main(["explain", str(samples.photo_path("coffee")), "-o", str(tmp_path), "--size", "64"])
        == 0
    )
    page = (tmp_path / "explain.md").read_text()
    for i, name in enumerate(
        ["planes", "dct_basis", "block", "zigzag", "mcu_bytes", "mcu_cost", "decoded"], 1
    ):
        png = tmp_path / f"{i}_{name}.png"
        assert f"({png.name})" in page
        with Image.open(png) as im:
            assert im.width > 50 and im.height > 50
    assert "16 MCUs separated by 15 restart markers" in page
    assert main(["explain", str(tmp_path / "missing.png"), "-o", str(tmp_path)]) == 2


def test_bench_and_help(capsys):
    assert main(["bench", "--images", "8"]) == 0
    out = capsys.readouterr().out
    assert "jpeglm batch (all cores)" in out and "Pillow" in out
    for cmd in ("encode", "decode", "demo", "explain", "train-tokenizer", "tokenize", "prepare",
                "sample", "complete", "eval", "bench", "export", "plan"):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: jpeglm" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0  # the trainer's own help: every config key
    assert "micro_batch_size = 0" in capsys.readouterr().out


def test_atomic_write_replaces_or_keeps(tmp_path):
    p = tmp_path / "f.bin"
    _io.atomic_write_bytes(p, b"one")
    assert p.read_bytes() == b"one"
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    _io.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    with pytest.raises(RuntimeError), _io.atomic_open(p) as f:
        f.write(b"partial")
        raise RuntimeError("crash mid-write")
    assert p.read_text() == "two"  # untouched
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]  # no temp file left behind
    with pytest.raises(ValueError):
        with _io.atomic_open(p, "a"):
            pass
