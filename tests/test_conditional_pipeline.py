"""Class conditioning end to end (issue 33), through the command line as a user runs it:
digits written as an ImageFolder tree -> ``jpeglm prepare --labels`` -> ``jpeglm train`` (a
tiny model, a few steps) -> ``jpeglm sample --label ... --cfg ...`` and ``complete --label``:
the model's record carries the classes, every constrained guided sample decodes, outputs are
named by label; the same data without ``--labels`` trains an unconditional model whose record
has no conditioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm import codec
from jpeglm.cli import main
from jpeglm.data import bundled
from jpeglm.tokenizer import Tokenizer

torch = pytest.importorskip("torch")

CLASSES = ("1", "4", "7")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    digits, labels = bundled.mnist()
    for c in CLASSES:
        (root / "digits" / c).mkdir(parents=True)
        for i in np.flatnonzero(labels == int(c))[:10]:
            Image.fromarray(digits[i]).save(root / "digits" / c / f"{i:04d}.png")
    streams = [codec.encode(p, size=32) for p in sorted((root / "digits").rglob("*.png"))]
    Tokenizer.train(streams, vocab_size=300, progress=False).save(root / "tok.jpeglm")
    return root


def _run(capsys, *args) -> str:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def _train(root: Path, data: Path, out: Path, capsys) -> None:
    over = {"train_data": [str(data)], "eval_data": [str(data)],
            "tokenizer": str(root / "tok.jpeglm"), "model": "tiny", "batch_size": 2,
            "max_steps": 3, "warmup_steps": 1, "eval_every": 3, "ckpt_every": 3, "out": str(out),
            "progress": False, "tensorboard": False, "guidance": 2.0}  # fmt: skip
    args = [f"{k}={json.dumps(v)}" for k, v in over.items()]
    _run(capsys, "train", *args, "model_args={dim = 32, n_layers = 1, n_heads = 2}")


def test_labels_to_guided_samples(world, tmp_path, capsys):
    root = world
    tok = root / "tok.jpeglm"
    _run(capsys, "prepare", root / "digits", tmp_path / "shards", "--tokenizer", tok, "--size",
         32, "--seq-len", 2048, "--labels", "--quiet")  # fmt: skip
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["config"]["labels"]["names"] == list(CLASSES)
    assert index["label_counts"] == {**dict.fromkeys(CLASSES, 10), "(none)": 0}
    _train(root, tmp_path / "shards", tmp_path / "run", capsys)
    record = json.loads((tmp_path / "run" / "final" / "jpeglm.json").read_text())
    assert record["conditioning"]["names"] == list(CLASSES)
    assert record["conditioning"]["cfg"] == 2.0 and record["conditioning"]["dropout"] == 0.1
    out = tmp_path / "s"
    _run(capsys, "sample", "--model", tmp_path / "run", "-o", out, "--label", "7", "--label", "1",
         "-n", 2, "--max-tokens", 2000, "--seed", 3)  # fmt: skip
    names = sorted(p.name for p in out.glob("*.jpg"))
    assert names == [f"sample_{c}_{i:03d}.jpg" for c in ("1", "7") for i in range(2)]
    for p in out.glob("*.jpg"):
        assert codec.decode(p.read_bytes()).shape == (32, 32, 3)  # strict: every one decodes
    one = next((root / "digits" / "1").iterdir())
    _run(capsys, "complete", "--model", tmp_path / "run", "-o", tmp_path / "c", "--label", "4",
         "--cfg", 3, "--rows", 1, "--max-tokens", 2000, one)  # fmt: skip
    (done,) = list((tmp_path / "c").glob("*.jpg"))
    assert done.stem.endswith("_4") and codec.decode(done.read_bytes()).shape == (32, 32, 3)
    rc = main(["sample", "--model", str(tmp_path / "run"), "-o", str(tmp_path / "x"), "--label",
               "9"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown class '9'" in err


def test_without_labels_the_model_is_unconditional(world, tmp_path, capsys):
    root = world
    _run(capsys, "prepare", root / "digits", tmp_path / "shards", "--tokenizer",
         root / "tok.jpeglm", "--size", 32, "--seq-len", 2048, "--quiet")  # fmt: skip
    assert "labels" not in json.loads((tmp_path / "shards" / "index.json").read_text())["config"]
    _train(root, tmp_path / "shards", tmp_path / "run", capsys)
    record = json.loads((tmp_path / "run" / "final" / "jpeglm.json").read_text())
    assert "conditioning" not in record
    rc = main(["sample", "--model", str(tmp_path / "run"), "-o", str(tmp_path / "x"), "--label",
               "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "label" in err
