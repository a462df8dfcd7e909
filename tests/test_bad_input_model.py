"""Bad inputs of model loading, sampling and the codec commands (issue 28): each case of the
README's "Reliability" tables that these replay is one line on stderr (``jpeglm <cmd>: error:
…``, exit 2) naming what to fix, with nothing created, or the right result where the input was
valid after all (unaligned safetensors, a tied config with a stored head). Tiny models on CPU:
the bundled 32 px model copied into a temporary folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save, save_file  # noqa: E402

from jpeglm import codec  # noqa: E402
from jpeglm.cli import main  # noqa: E402
from jpeglm.data import bundled as samples  # noqa: E402
from jpeglm.data.bundled import DEMO_CHECKPOINT  # noqa: E402

VIDEO_CHECKPOINT = DEMO_CHECKPOINT.parent / "moving_mnist64"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.fixture
def model(tmp_path):
    """A copy of the bundled 32 px model (HF folder: config.json, bf16 safetensors,
    tokenizer.jpeglm, jpeglm.json)."""
    d = tmp_path / "model"
    shutil.copytree(DEMO_CHECKPOINT, d)
    return d


def _edit_json(path, **changes) -> None:
    obj = json.loads(path.read_text())
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            obj[a][b] = v
        else:
            obj[k] = v
    path.write_text(json.dumps(obj))


def _sample(capsys, model, out, *extra):
    return _cli(capsys, "sample", "--model", model, "-o", out, "-n", "1", *extra)


# ------------------------------------------------------------------------ item 3: deep nesting


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("name", ["config.json", "jpeglm.json", "model.safetensors.index.json"])
def test_deeply_nested_model_files_are_one_line(model, tmp_path, capsys, name):
    if name == "model.safetensors.index.json":  # a sharded folder: the index is read
        os.rename(model / "model.safetensors", model / "model-00001-of-00001.safetensors")
        (model / name).write_text('{"weight_map": {"a": ' + _deep(100_000) + "}}")
    else:
        (model / name).write_text('{"a": ' + _deep(100_000) + "}")
    out = tmp_path / "out"
    rc, _, err = _sample(capsys, model, out)
    _one_line(rc, err, name, "nested deeper than 64 levels")
    assert not out.exists()  # checked before the output folder is made


# -------------------------------------------------------------- item 4: unaligned safetensors


def _unaligned(path) -> None:
    """Rewrite ``path`` as float32 with a header whose length is not a multiple of 8 (valid:
    trailing spaces), so every tensor's data sits at an odd offset of the file."""
    tensors = {k: v.float() for k, v in load_file(path).items()}
    raw = save(tensors, {"format": "pt"})
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].rstrip(b" ")
    header += b" " * (1 if len(header) % 8 != 7 else 2)
    assert len(header) % 8 and len(header) % 4
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :])


def test_unaligned_safetensors_data_is_sampled(model, tmp_path, capsys):
    _unaligned(model / "model.safetensors")
    st = load_file(model / "model.safetensors")  # safetensors reads it
    assert any(t.data_ptr() % 4 for t in st.values())  # and hands out unaligned tensors
    rc, out, err = _sample(capsys, model, tmp_path / "s")
    assert rc == 0, err
    assert (tmp_path / "s" / "sample_000.png").is_file() and "clean" in out


def test_pack_weight_accepts_unaligned_memory():
    from jpeglm.inference.decode_kernels import fast_kernel, pack_weight

    if fast_kernel() is None:
        pytest.skip("no packed kernel on this CPU")
    from jpeglm.inference.decode_kernels import packed_linear

    buf = bytearray(1) + torch.randn(64, 32).numpy().tobytes()
    w = torch.frombuffer(buf, dtype=torch.float32, offset=1).view(64, 32)
    assert w.data_ptr() % 4  # one byte past alignment, as a tensor mapped from such a file
    panels = pack_weight(w)
    x = torch.randn(3, 32)
    torch.testing.assert_close(packed_linear(x, panels, 64), x @ w.T, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- item 5: NaN weights


@pytest.mark.parametrize("extra", [[], ["--unconstrained"]])
def test_nan_weights_stop_sampling_with_one_line(model, tmp_path, capsys, extra):
    st = load_file(model / "model.safetensors")
    st["model.norm.weight"] = torch.full_like(st["model.norm.weight"], float("nan"))
    save_file(st, model / "model.safetensors", {"format": "pt"})
    out = tmp_path / "s"
    rc, _, err = _sample(capsys, model, out, *extra)
    _one_line(rc, err, str(model), "not finite")
    assert not list(out.glob("sample_*"))  # no 0-byte or grey file


def test_nan_logits_raise_in_the_library(make_tiny_model, small_tokenizer):
    from jpeglm.inference.loop import NonFiniteLogits
    from jpeglm.inference.sample import generate

    m = make_tiny_model(small_tokenizer.vocab_size, max_seq_len=256)
    with torch.no_grad():
        m.norm.weight.fill_(float("inf"))
    for constrained in (True, False):
        with pytest.raises(NonFiniteLogits, match="not finite"):
            generate(m, small_tokenizer, n=2, size=16, max_tokens=20, constrained=constrained)


# ------------------------------------------------------------- item 7: memory of huge sizes


def test_huge_sizes_are_refused_up_front_with_the_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(codec, "available_memory", lambda: 8 << 30)
    photo = samples.photo_path("coffee")
    out = tmp_path / "e"
    rc, _, err = _cli(capsys, "encode", photo, "-o", out, "--size", codec.MAX_SIZE)
    _one_line(rc, err, "--size 65488", "47.9 GiB", "8.0 GiB is available", "smaller --size")
    assert not out.exists()
    rc, _, err = _cli(capsys, "prepare", tmp_path, tmp_path / "p", "--tokenizer",
                      DEMO_CHECKPOINT / "tokenizer.jpeglm", "--size", 4096)  # fmt: skip
    _one_line(rc, err, "--images-per-shard")
    assert not (tmp_path / "p").exists()
    with pytest.raises(ValueError, match="GiB of memory"):  # the library too, before resizing
        codec.encode(photo, size=codec.MAX_SIZE)
    assert len(codec.encode(photo, size=32)) > 0  # small sizes: nothing is checked


# ---------------------------------------------------------- item 8: tied config, stored head


def test_tied_config_with_a_stored_head_matches_transformers(model):
    transformers = pytest.importorskip("transformers")
    from jpeglm.checkpoint.hf import load_pretrained

    _edit_json(model / "config.json", tie_word_embeddings=True)
    st = load_file(model / "model.safetensors")
    assert not torch.equal(st["lm_head.weight"], st["model.embed_tokens.weight"])
    ids = torch.tensor([[317, 5, 77, 100, 3, 250]])
    theirs = transformers.LlamaForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ours = load_pretrained(model, dtype=torch.float32, backend="torch").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ item 9: another tokenizer


def test_a_tokenizer_of_another_vocabulary_is_refused(model, tmp_path, capsys, small_tokenizer):
    other = tmp_path / "other.jpeglm"
    small_tokenizer.save(other)  # 320 ids, as the model's: it loads, but it is not the one
    out = tmp_path / "s"
    rc, _, err = _sample(capsys, model, out, "--tokenizer", other)
    _one_line(rc, err, "not the one the model", "fingerprint 400e5b634b441e13")
    assert not out.exists()
    rc, _, err = _sample(capsys, model, out, "--tokenizer", model / "tokenizer.jpeglm")
    assert rc == 0, err  # its own, named: fine


# --------------------------------------------------------- item 12: decode of a CMYK JPEG


def test_decode_of_a_non_canonical_jpeg_is_one_line(tmp_path, capsys):
    im = Image.open(samples.photo_path("coffee")).convert("CMYK").resize((32, 32))
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    cmyk = tmp_path / "cmyk.jpg"
    cmyk.write_bytes(buf.getvalue())
    out = tmp_path / "d"
    rc, _, err = _cli(capsys, "decode", cmyk, "-o", out)
    _one_line(rc, err, "4 components", "no valid part")
    assert "use --tolerant" not in err  # it would not help
    rc, _, err = _cli(capsys, "decode", "--tolerant", cmyk, "-o", out)
    _one_line(rc, err, "cmyk.jpg", "4 components")
    assert not (out / "cmyk.png").exists()  # no grey picture


# ----------------------------------------------------------- item 13: EXIF orientation


def _rotated_jpeg(path) -> np.ndarray:
    """A JPEG whose EXIF says "rotate 90° clockwise to view" (orientation 6); returns the
    pixels as stored."""
    im = Image.open(samples.photo_path("coffee")).convert("RGB").resize((64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return np.asarray(Image.open(path).convert("RGB"))


def test_exif_orientation_ignored_by_default_applied_on_request(tmp_path, capsys):
    from PIL import ImageOps

    photo = tmp_path / "phone.jpg"
    _rotated_jpeg(photo)
    stored = Image.open(photo)
    upright = ImageOps.exif_transpose(Image.open(photo))
    assert codec.encode(photo, size=32) == codec.encode(stored, size=32)  # the official way
    turned = codec.encode(photo, size=32, exif_transpose=True)
    assert turned == codec.encode(upright, size=32) != codec.encode(photo, size=32)
    rc, _, err = _cli(capsys, "encode", photo, "-o", tmp_path / "a", "--size", 32)
    assert rc == 0 and (tmp_path / "a" / "phone.jlm").read_bytes() == codec.encode(photo, size=32)
    rc, _, err = _cli(capsys, "encode", photo, "-o", tmp_path / "b", "--size", 32,
                      "--exif-transpose")  # fmt: skip
    assert rc == 0 and (tmp_path / "b" / "phone.jlm").read_bytes() == turned


def test_prepare_exif_transpose(tmp_path, capsys):
    from jpeglm.data.index import INDEX

    src = tmp_path / "src"
    src.mkdir()
    _rotated_jpeg(src / "phone.jpg")
    tok = DEMO_CHECKPOINT / "tokenizer.jpeglm"
    common = ["--tokenizer", tok, "--size", 32, "--seq-len", 64, "--quiet"]
    assert _cli(capsys, "prepare", src, tmp_path / "p0", *common)[0] == 0
    assert _cli(capsys, "prepare", src, tmp_path / "p1", *common, "--exif-transpose")[0] == 0
    i0 = json.loads((tmp_path / "p0" / INDEX).read_text())
    i1 = json.loads((tmp_path / "p1" / INDEX).read_text())
    assert "exif_transpose" not in i0["config"] and i1["config"]["exif_transpose"] is True
    a = np.load(tmp_path / "p0" / "shard_000000.npy")
    b = np.load(tmp_path / "p1" / "shard_000000.npy")
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_complete_exif_transpose_and_default_rows(model, tmp_path, capsys):
    photo = tmp_path / "phone.jpg"
    _rotated_jpeg(photo)
    for extra in ([], ["--exif-transpose"]):  # no --rows: half of a 32 px image's 2 MCU rows
        rc, out, err = _cli(capsys, "complete", "--model", model, "-o", tmp_path / "c", photo,
                            "--max-tokens", 200, *extra)  # fmt: skip
        assert rc == 0, err
        assert (tmp_path / "c" / "phone.png").is_file()


@pytest.mark.parametrize("size,rows", [(16, 0), (32, 1), (48, 1), (64, 2), (256, 8)])
def test_default_rows(size, rows):
    from jpeglm.inference.sample import default_rows

    assert default_rows(size) == rows


# ------------------------------------------------------------------------- messages


def test_context_refusal_names_the_real_cause(model, tmp_path, capsys):
    rc, _, err = _sample(capsys, model, tmp_path / "a", "--size", 256)
    _one_line(rc, err, "use --size 32")  # another size: the trained one is the answer
    _edit_json(model / "jpeglm.json", tokens_per_image=5000.0)
    rc, _, err = _sample(capsys, model, tmp_path / "b")
    _one_line(rc, err, "size and quality this model was trained on", "jpeglm.json")
    assert "--size 32" not in err


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("sampling.top_p", 5, ["sampling.top_p", "(0, 1]"]),
        ("sampling.temperature", "hot", ["sampling.temperature", "'hot'"]),
        ("sampling.top_k", -3, ["sampling.top_k"]),
        ("image_size", 40, ["image_size", "multiple of 16"]),
        ("quality", 0, ["quality", "1..100"]),
        ("kind", "audio", ["kind"]),
    ],
)
def test_bad_model_record_values_name_the_file_and_key(model, tmp_path, capsys, key, value,
                                                       words):  # fmt: skip
    _edit_json(model / "jpeglm.json", **{key: value})
    out = tmp_path / "s"
    rc, _, err = _sample(capsys, model, out)
    _one_line(rc, err, str(model / "jpeglm.json"), *words)
    assert "--top-p" not in err and "--temperature" not in err and "--size" not in err
    assert not out.exists()


def test_tokenizer_paths_that_are_not_files(model, tmp_path, capsys):
    loop = tmp_path / "loop.jpeglm"
    os.symlink(loop, loop)
    fifo = tmp_path / "fifo.jpeglm"
    os.mkfifo(fifo)
    cases = {loop: "loop of symbolic links", tmp_path: "is a folder", fifo: "FIFO"}
    for path, words in cases.items():
        rc, _, err = _sample(capsys, model, tmp_path / "s", "--tokenizer", path)
        _one_line(rc, err, words)
        assert "no such" not in err
        rc, _, err = _cli(capsys, "prepare", tmp_path, tmp_path / "p", "--tokenizer", path)
        _one_line(rc, err, words)
        assert "no such" not in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()


def test_a_one_frame_clip_hints_at_frames(tmp_path, capsys):
    pytest.importorskip("av")
    clip = tmp_path / "one.npy"
    np.save(clip, np.zeros((1, 64, 64, 3), np.uint8))
    rc, _, err = _cli(capsys, "complete", "--model", VIDEO_CHECKPOINT, "-o", tmp_path / "v",
                      clip, "--max-tokens", 20)  # fmt: skip
    _one_line(rc, err, "one.npy has 1 frame", "--frames 1")


def test_export_of_an_hf_folder_says_so(model, tmp_path, capsys):
    rc, _, err = _cli(capsys, "export", model, tmp_path / "x")
    _one_line(rc, err, "already an HF folder")
    assert "corrupt" not in err and not (tmp_path / "x").exists()
