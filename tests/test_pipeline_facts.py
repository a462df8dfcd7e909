"""The pipeline carries its own facts: a run folder is all `jpeglm sample` needs (image size,
quality, tokenizer, sampling settings from the model's record), sizes that cannot fit the
context are refused up front, stream files say their quality, and `jpeglm train` documents
every key."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tomllib
from PIL import Image

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg, run  # noqa: E402

from jpeglm import codec  # noqa: E402
from jpeglm.cli import main  # noqa: E402
from jpeglm.data import bundled as samples  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(world, tmp_path_factory):
    root, _ = world
    out = tmp_path_factory.mktemp("facts") / "run"
    r = run(cfg(root, out, max_steps=4, ckpt_every=2, eval_every=100))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_sample_needs_only_the_run_folder(run_dir, tmp_path, capsys):
    for model in (run_dir, run_dir / "final", run_dir / "step_00000004"):
        out = tmp_path / model.name
        assert main(["sample", "--model", str(model), "-o", str(out), "-n", "2"]) == 0
        for i in range(2):
            img = np.asarray(Image.open(out / f"sample_{i:03d}.png"))
            assert img.shape == (32, 32, 3)  # the trained size, not 256
    meta = json.loads((run_dir / "final" / "jpeglm.json").read_text())
    assert meta["image_size"] == 32 and meta["quality"] == 25 and meta["seq_len"] == 128
    assert meta["tokens_per_image"] > 0 and set(meta["sampling"]) == {"temperature", "top_k",
                                                                      "top_p"}  # fmt: skip


def test_a_size_that_cannot_fit_the_context_is_refused(run_dir, tmp_path, capsys):
    rc = main(["sample", "--model", str(run_dir), "-o", str(tmp_path / "s"), "--size", "256"])
    err = capsys.readouterr().err
    assert rc == 2 and "context is 128" in err and "--size 32" in err
    assert err.count("\n") == 1 and not list((tmp_path / "s").glob("*.png"))


def test_the_shipped_demo_checkpoint_describes_itself():
    from jpeglm.checkpoint.load import check_context, load_model
    from jpeglm.data.bundled import DEMO_CHECKPOINT

    loaded = load_model(DEMO_CHECKPOINT)
    assert loaded.image_size == 32 and loaded.info["source"] == "jpeglm.json"
    check_context(loaded, 32, 25)
    with pytest.raises(ValueError, match="context is 512"):
        check_context(loaded, 256, 25)


def test_stream_files_say_their_quality(tmp_path, capsys):
    src = str(samples.photo_path("astronaut"))
    assert main(["encode", src, "-o", str(tmp_path / "e"), "--quality", "90", "--size", "64"]) == 0
    assert main(["encode", src, "-o", str(tmp_path / "e"), "--size", "64"]) == 0
    q90, q25 = tmp_path / "e" / "astronaut.q90.jlm", tmp_path / "e" / "astronaut.jlm"
    assert q90.read_bytes() == codec.encode(src, quality=90, size=64)  # the bytes stay canonical
    assert q25.read_bytes() == codec.encode(src, size=64)
    assert main(["decode", str(q90), str(q25), "-o", str(tmp_path / "d")]) == 0
    got90 = np.asarray(Image.open(tmp_path / "d" / "astronaut.png"))
    got25 = np.asarray(Image.open(tmp_path / "d" / "astronaut-1.png"))
    np.testing.assert_array_equal(got90, codec.decode(q90.read_bytes(), quality=90))
    np.testing.assert_array_equal(got25, codec.decode(q25.read_bytes()))
    capsys.readouterr()
    rc = main(["decode", str(q90), "-o", str(tmp_path / "x"), "--quality", "25"])
    err = capsys.readouterr().err
    assert rc == 2 and "quality-90" in err and err.count("\n") == 1


def test_train_documents_itself(tmp_path, capsys):
    from jpeglm.train.config import TrainConfig

    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"  {f.name} = " in text, f.name
    assert "resume" in text and "torchrun" in text
    assert main(["train", "--print-config"]) == 0
    toml = tomllib.loads(capsys.readouterr().out)
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(toml) == keys - {"backend"}  # backend's default is unset (TOML has no null)
    assert toml["batch_size"] == TrainConfig().batch_size
    assert main(["train"]) == 2
    assert "config" in capsys.readouterr().err


def test_one_image_lister_and_train_tokenizer_skips_a_broken_image(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for i, im in enumerate(samples.random_crops(6, 0)):
        im.resize((32, 32)).save(imgs / ("sub" if i % 2 else ".") / f"{i}.png")
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (imgs / "notes.txt").write_text("not an image: ignored inside a folder")
    tok = tmp_path / "tok.jpeglm"
    rc = main(["train-tokenizer", str(imgs), "-o", str(tok), "--size", "32", "--vocab-size", "270",
               "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0 and tok.is_file()
    assert "broken.jpg" in err and err.count("\n") == 1 and "6 images (1 skipped)" in out
    # encode lists folders the same way (recursively); a named non-image is one line, exit 2
    assert main(["encode", str(imgs / "sub"), "-o", str(tmp_path / "e"), "--size", "32"]) == 0
    assert sorted(p.name for p in (tmp_path / "e").glob("*.jlm")) == ["1.jlm", "3.jlm", "5.jlm"]
    capsys.readouterr()
    assert main(["encode", str(imgs / "notes.txt"), "-o", str(tmp_path / "e2")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_dtype_flag(run_dir, tmp_path, capsys):
    for dtype in ("bf16", "int8"):
        out = tmp_path / dtype
        rc = main(["sample", "--model", str(run_dir), "-o", str(out), "-n", "1", "--dtype", dtype])
        assert rc == 0 and np.asarray(Image.open(out / "sample_000.png")).shape == (32, 32, 3)
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(run_dir), "-o", str(tmp_path / "x"), "--dtype", "fp8"])
