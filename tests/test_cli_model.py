"""The model-facing CLI: train-tokenizer, tokenize, and sample / complete / eval from a local
checkpoint folder in the official JPEG-LM layout (HF Llama config + safetensors +
sentencepiece tokenizer.model mapping byte b to chr(b + 10240))."""

from __future__ import annotations

import json

import numpy as np
import pytest
from jpeglm_testutil import tiny_llama_config
from PIL import Image

from jpeglm import codec
from jpeglm.cli import main
from jpeglm.data import bundled as samples
from jpeglm.tokenizer.sentencepiece import train_sentencepiece

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    """A tiny random checkpoint laid out like uwnlp/jpeg-lm-reimplementation."""
    d = tmp_path_factory.mktemp("jpeg-lm")
    docs = [codec.encode(p, quality=q, size=s) for p in samples.photo_paths() for q in (20, 25)
            for s in (16, 32, 64)]  # fmt: skip
    model = train_sentencepiece(docs, 320, max_sentence_length=1 << 16)
    (d / "tokenizer.model").write_bytes(model)
    torch.manual_seed(0)
    cfg = tiny_llama_config(transformers)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    return d


def test_sample_from_official_layout(official_dir, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sample", "--model", str(official_dir), "-o", str(out), "-n", "3", "--size", "16",
            "--max-tokens", "1200", "--seed", "1"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("clean") == 3
    for i in range(3):
        img = np.asarray(Image.open(out / f"sample_{i:03d}.png"))
        assert img.shape == (16, 16, 3)
        jpg = (out / f"sample_{i:03d}.jpg").read_bytes()
        np.testing.assert_array_equal(codec.decode(jpg), img)


def test_complete_and_eval(official_dir, tmp_path, capsys):
    imgs = [str(p) for p in samples.photo_paths()[:2]]
    common = ["--model", str(official_dir), "--size", "32", "--max-tokens", "1500", "--rows", "1"]
    assert main(["complete", *common, "-o", str(tmp_path / "c"), *imgs]) == 0
    for p in samples.photo_paths()[:2]:  # completions are named after their inputs
        assert (tmp_path / "c" / f"{p.stem}.png").is_file()
        assert (tmp_path / "c" / f"{p.stem}.jpg").is_file()
    assert main(["eval", *common, "-o", str(tmp_path / "e"), *imgs]) == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["decodable"] == 1.0 and res["held_out"]["bits_per_byte"] > 0
    assert (tmp_path / "e" / "grid.png").is_file()
    # --judge: unconditional samples judged by the digit classifier, beside its references
    out = tmp_path / "j"
    assert main(["eval", *common, "--judge", "4", "-o", str(out), *imgs]) == 0
    judged = json.loads((out / "results.json").read_text())["judge"]
    assert judged["samples"]["n"] == 4 and 0 <= judged["samples"]["share"] <= 1
    assert judged["held_out_digits"]["share"] >= 0.8 > 0.05 >= judged["non_digits_jpeg"]["share"]
    bad = ["eval", "--model", str(official_dir), "--size", "16", "--rows", "0", "--judge", "2",
           "-o", str(tmp_path / "k"), *imgs]  # fmt: skip
    assert main(bad) == 2  # a 16x16 model is no digit model: refused before any work
    assert "--judge needs a 32x32" in capsys.readouterr().err


def test_tokenizer_commands(tmp_path, capsys):
    tok = tmp_path / "tok.jpeglm"
    folder = str(samples.IMAGE_DIR)
    assert main(["train-tokenizer", folder, "-o", str(tok), "--vocab-size", "300", "--quiet"]) == 0
    assert main(["tokenize", str(samples.photo_path("rocket")), "--tokenizer", str(tok)]) == 0
    assert "tokens" in capsys.readouterr().out


def test_model_cli_errors(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    bad = tmp_path / "bad.jpeglm"
    bad.write_text("not a tokenizer")
    assert main(["tokenize", str(samples.photo_path("rocket")), "--tokenizer", str(bad)]) == 2
    assert main(["tokenize", "nope.png", "--tokenizer", str(bad)]) == 2


def test_sample_reads_the_model_record_once(tmp_path, monkeypatch, capsys):
    """`jpeglm sample` resolves --model once (checkpoint.load.resolve -> a ModelRef handed to
    the checks and to load_model): the model's jpeglm.json is read once, not once per step."""
    from jpeglm.checkpoint import load
    from jpeglm.data.bundled import DEMO_CHECKPOINT

    reads: list[str] = []
    real = load.read_json

    def counted(path, *a, **kw):
        reads.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(load, "read_json", counted)
    rc = main(["sample", "--model", str(DEMO_CHECKPOINT), "-o", str(tmp_path / "out"), "-n", "1",
               "--max-tokens", "8", "--seed", "0"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert [r for r in reads if r.endswith("jpeglm.json")] == [str(DEMO_CHECKPOINT / "jpeglm.json")]
