"""Untrusted inputs get one clear error line, never silent garbage: hostile HF checkpoint
folders (config.json sizes and types, safetensors files, the shard index), sampling options and
devices, and image modes / dtypes that used to come out white or black (16-bit, float, alpha)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file  # noqa: E402

from jpeglm import codec  # noqa: E402
from jpeglm.checkpoint.hf import load_hf_state, load_pretrained, save_pretrained  # noqa: E402
from jpeglm.checkpoint.hf_config import (  # noqa: E402
    HF_CONFIG_LIMITS,
    HF_MAX_PARAMETERS,
    args_from_config,
    config_from_args,
)
from jpeglm.inference.sample import complete, generate  # noqa: E402
from jpeglm.inference.settings import check_device  # noqa: E402
from jpeglm.model import ModelArgs, Transformer  # noqa: E402
from jpeglm.tokenizer import Tokenizer  # noqa: E402


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny", max_seq_len=64)
    save_pretrained(Transformer(args, backend="torch"), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def load_both(folder, match: str) -> None:
    """Both entry points refuse the folder with one line matching ``match``."""
    for load in (load_pretrained, load_hf_state):
        with pytest.raises(ValueError, match=match) as e:
            load(folder)
        one_line(e)


BAD_CONFIGS = [
    ({"num_hidden_layers": 1_000_000_000}, r"num_hidden_layers = 1000000000 is outside 1\.\.1024"),
    ({"max_position_embeddings": 1e12}, "max_position_embeddings must be an integer.*float"),
    ({"max_position_embeddings": 2**40}, "max_position_embeddings = 1099511627776 is outside"),
    ({"hidden_size": 64.0}, "hidden_size must be an integer, got 64.0"),
    ({"vocab_size": "323"}, "vocab_size must be an integer.*str"),
    ({"num_attention_heads": True}, "num_attention_heads must be an integer, got True"),
    ({"intermediate_size": 0}, "intermediate_size = 0 is outside"),
    ({"intermediate_size": -176}, "intermediate_size = -176 is outside"),
    ({"num_key_value_heads": 0}, "num_key_value_heads = 0 is outside"),
    ({"vocab_size": 2**20 + 1}, "vocab_size = 1048577 is outside"),
    ({"head_dim": [16]}, "head_dim must be an integer"),
    ({"vocab_size": None}, "missing vocab_size"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    ({"mlp_bias": 0}, "mlp_bias must be true or false"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite positive number"),
    ({"rope_theta": -1}, "rope_theta must be a finite positive number"),
    ({"rope_theta": None, "rope_parameters": {"rope_theta": "1e4"}}, "rope_parameters.rope_theta"),
    ({"rope_scaling": "linear"}, "rope_scaling must be an object or null"),
    ({"model_type": 5}, "model_type must be a string"),
    ({"hidden_act": ["silu"]}, "hidden_act must be a string"),
]


@pytest.mark.parametrize(("changes", "match"), BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_hostile_config_json(folder, changes, match):
    edit_config(folder, **changes)
    load_both(folder, match)


def test_config_size_bounds():
    base = config_from_args(ModelArgs.from_name("tiny"))
    with pytest.raises(ValueError, match="rotary tables") as e:
        # every field in bounds, but 2**20 positions x head_dim 2**17 of cos/sin tables
        args_from_config(
            {**base, "hidden_size": 2**17, "num_attention_heads": 1, "head_dim": 2**17,
             "num_key_value_heads": 1, "max_position_embeddings": 2**20}
        )  # fmt: skip
    one_line(e)
    with pytest.raises(ValueError, match=r"parameters, more than the 2e\+11 accepted") as e:
        args_from_config(
            {**base, "hidden_size": 2**15, "num_attention_heads": 256, "head_dim": 128,
             "num_key_value_heads": 256, "intermediate_size": 2**17, "num_hidden_layers": 1024}
        )  # fmt: skip
    one_line(e)
    assert HF_MAX_PARAMETERS == 2 * 10**11 and HF_CONFIG_LIMITS["num_hidden_layers"] == 1024
    # real configs pass unchanged: the paper's 7B and a Llama-3-8B-shaped one
    seven = ModelArgs.from_name("7B")
    assert args_from_config(config_from_args(seven)) == seven
    llama3 = {**base, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
              "vocab_size": 128256, "max_position_embeddings": 131072}  # fmt: skip
    assert args_from_config(llama3).n_kv_heads == 8


def test_huge_layer_count_fails_fast(folder):
    import time

    edit_config(folder, num_hidden_layers=10**9, hidden_size=2**17)
    start = time.perf_counter()
    load_both(folder, "num_hidden_layers")
    assert time.perf_counter() - start < 5


def _header_file(path, header: dict, payload: bytes = b"") -> None:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + payload)


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "huge_header", "huge_shape"])
def test_broken_safetensors(folder, case):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if case == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        weights.write_bytes(b"this is not a safetensors file at all" * 10)
    elif case == "empty":
        weights.write_bytes(b"")
    elif case == "huge_header":
        weights.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    else:  # a header that claims 2**40 floats backed by 64 bytes
        name = "model.embed_tokens.weight"
        tensor = {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}
        _header_file(weights, {name: tensor}, b"\0" * 64)
    load_both(folder, "model.safetensors is not a readable safetensors file")


def test_non_float_weights_refused(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int64)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    load_both(folder, "model.norm.weight has dtype I64; weights must be floating point")


def _shard(folder, weight_map) -> None:
    """Turn the folder's single file into one shard listed by an index with ``weight_map``."""
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_index_loads(folder):
    keys = load_file(folder / "model.safetensors").keys()
    _shard(folder, dict.fromkeys(keys, "model-00001-of-00001.safetensors"))
    args, state = load_hf_state(folder)
    assert args.n_layers == 2 and "layers.1.feed_forward.w2.weight" in state


@pytest.mark.parametrize(
    "target",
    ["../outside.safetensors", "../../../etc/passwd", "/etc/passwd", "ABSOLUTE",
     "sub/model.safetensors", "model.bin", "model.pt", "..", "", ".hidden.safetensors"],
)  # fmt: skip
def test_index_paths_outside_folder_refused(folder, target, monkeypatch):
    outside = folder.parent / "outside.safetensors"
    outside.write_bytes((folder / "model.safetensors").read_bytes())  # a loadable decoy
    if target == "ABSOLUTE":
        target = str(outside)
    _shard(
        folder, {"model.norm.weight": target, "lm_head.weight": "model-00001-of-00001.safetensors"}
    )
    opened = []
    import safetensors

    real = safetensors.safe_open
    monkeypatch.setattr(
        safetensors, "safe_open", lambda path, *a, **k: opened.append(path) or real(path, *a, **k)
    )
    load_both(folder, "not plain \\*.safetensors names in the folder")
    assert opened == []  # refused before any file was opened


@pytest.mark.parametrize(
    "weight_map",
    [None, [], "model.safetensors", {}, {"model.norm.weight": 5},
     {"model.norm.weight": ["model-00001-of-00001.safetensors"]}, {"lm_head.weight": None}],
)  # fmt: skip
def test_index_weight_map_must_map_names_to_file_names(folder, weight_map):
    _shard(folder, weight_map)
    load_both(folder, "weight_map")


# ----------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = np.random.default_rng(0)
    streams = [codec.encode(rng.integers(0, 256, (16, 16, 3), np.uint8), size=16) for _ in range(4)]
    return Tokenizer.train(streams, vocab_size=270, progress=False)


@pytest.fixture(scope="module")
def model(tok) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=256)
    return Transformer(args, backend="torch").eval()


BAD_OPTIONS = [
    ("temperature", -1.0, "temperature must be finite and >= 0"),
    ("temperature", float("nan"), "temperature must be finite"),
    ("temperature", float("inf"), "temperature must be finite"),
    ("temperature", "1.0", "temperature must be a number"),
    ("temperature", True, "temperature must be a number"),
    ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ("top_p", float("nan"), r"top_p must be in \(0, 1\]"),
    ("top_p", "0.9", "top_p must be a number"),
    ("top_k", -1, "top_k must be an integer >= 0"),
    ("top_k", 2.5, "top_k must be an integer >= 0"),
    ("top_k", True, "top_k must be an integer >= 0"),
    ("batch_size", 0, "batch_size must be a positive integer or None"),
    ("batch_size", -2, "batch_size must be a positive integer or None"),
    ("batch_size", 1.5, "batch_size must be a positive integer or None"),
    ("max_tokens", 0, "max_tokens must be a positive integer or None"),
    ("max_tokens", -5, "max_tokens must be a positive integer or None"),
    ("max_tokens", 3.0, "max_tokens must be a positive integer or None"),
    ("seed", 1.5, "seed must be an integer"),
    ("seed", 2**64, "seed must be an integer"),
    ("constrained", "yes", "constrained must be True or False"),
]


@pytest.mark.parametrize(("name", "value", "match"), BAD_OPTIONS)
def test_bad_sampling_options(model, tok, name, value, match):
    with pytest.raises(ValueError, match=match) as e:
        generate(model, tok, n=1, size=16, **{name: value})
    one_line(e)
    with pytest.raises(ValueError, match=match) as e:  # checked before any image is read
        complete(model, tok, [object()], rows=0, size=16, **{name: value})  # type: ignore[list-item]
    one_line(e)


@pytest.mark.parametrize("n", [0, -1, 2.0, True, "3", None])
def test_bad_n(model, tok, n):
    with pytest.raises(ValueError, match="n must be a positive integer") as e:
        generate(model, tok, n=n, size=16)
    one_line(e)


def test_bad_complete_arguments(model, tok):
    img = np.zeros((16, 16, 3), np.uint8)
    for rows in (1.5, -1, 1, "0"):  # size 16: one MCU row, so only rows=0
        with pytest.raises(ValueError, match=r"rows must be an integer in 0\.\.0"):
            complete(model, tok, [img], rows=rows, size=16)
    with pytest.raises(ValueError, match="sequence of images"):
        complete(model, tok, "image.png", rows=0, size=16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt must be bytes"):
        generate(model, tok, n=1, size=16, prompt="\xff\xd8")  # type: ignore[arg-type]


def test_edge_options_accepted(model, tok):
    greedy = generate(model, tok, n=2, size=16, temperature=0, max_tokens=3, top_k=0, top_p=1.0)
    assert len(greedy) == 2 and greedy[0].tokens == greedy[1].tokens  # greedy: identical
    out = generate(model, tok, n=1, size=16, max_tokens=np.int64(2), seed=np.int64(-1))
    assert len(out[0].tokens) <= 2


def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(" cpu:0 ") == torch.device("cpu:0")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    bad = ["foo", "", "CPU", "cuda:-1", "cpu:1", "meta", 3.5, None, ["cpu"]]
    if torch.cuda.is_available():
        bad += [f"cuda:{torch.cuda.device_count()}", "cuda:99"]
        assert check_device("cuda") == torch.device("cuda")
    else:
        bad += ["cuda", "cuda:0", "cuda:3", 0]
    if not torch.backends.mps.is_available():
        bad.append("mps")
    for device in bad:
        with pytest.raises(ValueError, match="device") as e:
            check_device(device)  # type: ignore[arg-type]
        one_line(e)


# ------------------------------------------------------------------------------------- images


def reference(gray_or_rgb: np.ndarray, size: int) -> np.ndarray:
    """The crop + resize of an already 8-bit image, as prepare documents it."""
    im = Image.fromarray(gray_or_rgb).convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(
        im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    )


def gradient16() -> np.ndarray:
    """48 x 64 values spanning 0..65535, every 16-bit byte pattern region touched."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64)
    return np.clip(ramp + rng.integers(-300, 300, ramp.shape), 0, 65535).astype(np.uint16)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_16bit_images_scaled_not_white(tmp_path):
    v = gradient16()
    expected8 = np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)  # round(v / 257)
    expected = reference(expected8, 32)
    path = tmp_path / "g16.png"
    Image.frombytes("I;16", (64, 48), v.astype("<u2").tobytes()).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow reads it as 16-bit
    inputs = {
        "png path": path,
        "png bytes": path.read_bytes(),
        "I;16": Image.frombytes("I;16", (64, 48), v.astype("<u2").tobytes()),
        "I;16B": Image.frombytes("I;16B", (64, 48), v.astype(">u2").tobytes()),
        "I": Image.fromarray(v.astype(np.int32)),
        "uint16 array": v,
        "big-endian uint16 array": v.astype(">u2"),
        "uint16 (H, W, 3) array": np.repeat(v[:, :, None], 3, axis=2),
    }
    for name, image in inputs.items():
        got = codec.prepare(image, 32)
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert 60 < expected.mean() < 200  # mid-grey on average, not almost white
    # the very same bytes as encoding the 8-bit reference
    assert codec.encode(path, size=32) == codec.encode(expected, size=32)


def test_mode_i_outside_16_bits_refused():
    for bad in (70000, -1):
        arr = np.zeros((8, 8), np.int32)
        arr[0, 0] = bad
        with pytest.raises(ValueError, match=r"mode I image has values in .*0\.\.65535") as e:
            codec.prepare(Image.fromarray(arr), 16)
        one_line(e)


def test_float_images_scaled_not_black():
    rng = np.random.default_rng(2)
    f = rng.random((40, 40, 3))
    f[0, 0], f[1, 1] = 0.0, 1.0
    expected = reference(np.rint(f * 255).astype(np.uint8), 32)
    for dtype in (np.float64, np.float32, np.float16):
        g = f.astype(dtype)
        exp = reference(np.rint(g.astype(np.float64) * 255).astype(np.uint8), 32)
        np.testing.assert_array_equal(codec.prepare(g, 32), exp, err_msg=str(dtype))
    np.testing.assert_array_equal(codec.prepare(f, 32), expected)
    gray = f[:, :, 0].astype(np.float32)
    exp_gray = reference(np.rint(gray.astype(np.float64) * 255).astype(np.uint8), 32)
    np.testing.assert_array_equal(codec.prepare(Image.fromarray(gray), 32), exp_gray)  # mode F
    np.testing.assert_array_equal(codec.prepare(gray, 32), exp_gray)
    assert exp_gray.mean() > 80  # not black
    # half a step outside [0, 1] is clipped
    edge = np.full((16, 16), -0.001)
    edge[0] = 1.001
    out = codec.prepare(edge, 16)
    assert out[0].min() == 255 and out[1:].max() == 0


@pytest.mark.parametrize(
    "values", [[0.0, 255.0], [-0.5, 0.5], [0.0, 1.01], [np.nan, 0.5], [np.inf]]
)
def test_float_images_outside_unit_range_refused(values):
    arr = np.zeros((8, 8), np.float32)
    arr.flat[: len(values)] = values
    for image in (arr, Image.fromarray(arr)):
        with pytest.raises(ValueError, match="NaN|0\\.\\.1") as e:
            codec.prepare(image, 16)
        one_line(e)


def composite(rgba: np.ndarray) -> np.ndarray:
    """Independent reference: alpha-blend on white in floats, rounded to nearest."""
    c = rgba[:, :, :3].astype(np.float64)
    a = rgba[:, :, 3:].astype(np.float64) / 255
    return np.floor(c * a + 255 * (1 - a) + 0.5).astype(np.uint8)


def test_alpha_composited_on_white():
    red = np.zeros((16, 16, 4), np.uint8)
    red[..., 0], red[..., 3] = 255, 128
    np.testing.assert_array_equal(codec.prepare(red, 16), np.full((16, 16, 3), [255, 127, 127]))
    clear = np.zeros((16, 16, 4), np.uint8)  # fully transparent black -> white
    np.testing.assert_array_equal(codec.prepare(clear, 16), np.full((16, 16, 3), 255))

    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (48, 32, 4), dtype=np.uint8)
    expected = reference(composite(rgba), 32)
    np.testing.assert_array_equal(codec.prepare(rgba, 32), expected)
    np.testing.assert_array_equal(codec.prepare(Image.fromarray(rgba), 32), expected)
    np.testing.assert_array_equal(codec.prepare(png(Image.fromarray(rgba)), 32), expected)

    la = rgba[:, :, [0, 3]]
    gray_rgba = np.concatenate([np.repeat(la[:, :, :1], 3, axis=2), la[:, :, 1:]], axis=2)
    got = codec.prepare(Image.fromarray(la, "LA"), 32)
    np.testing.assert_array_equal(got, reference(composite(gray_rgba), 32))


def test_palette_transparency_composited():
    p = Image.new("P", (16, 16), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.paste(1, (0, 0, 16, 8))
    p.info["transparency"] = 0  # index 0 (black) is transparent
    expected = np.zeros((16, 16, 3), np.uint8)
    expected[:8] = [10, 200, 30]
    expected[8:] = 255
    np.testing.assert_array_equal(codec.prepare(p, 16), expected)
    np.testing.assert_array_equal(codec.prepare(png(p), 16), expected)
    del p.info["transparency"]  # without it: plain palette lookup, black stays black
    assert codec.prepare(p, 16)[8:].max() == 0


def test_opaque_alpha_is_byte_identical_to_rgb():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((40, 48, 1), 255, np.uint8)], axis=2)
    assert codec.encode(rgba, size=32) == codec.encode(rgb, size=32)
    np.testing.assert_array_equal(codec.prepare(rgba, 32), codec.prepare(rgb, 32))
    la = Image.fromarray(rgba[:, :, [0, 3]], "LA")
    np.testing.assert_array_equal(codec.prepare(la, 32), codec.prepare(la.convert("RGB"), 32))


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.int8, np.uint32, bool, np.complex64])
def test_other_array_dtypes_refused(dtype):
    with pytest.raises(TypeError, match=r"uint8, uint16 \(0\.\.65535\) or float \(0\.\.1\)") as e:
        codec.prepare(np.zeros((16, 16, 3), dtype), 16)
    one_line(e)
