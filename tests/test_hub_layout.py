"""The released model's layout loads (issue 31): ``config.json`` (``LlamaForCausalLM``) + the
weights as ``pytorch_model.bin`` (a pickle) or shards ``pytorch_model-0000x-of-0000y.bin`` +
``pytorch_model.bin.index.json`` + a sentencepiece ``tokenizer.model``.

Such a folder samples through ``jpeglm sample`` and loads through the Python API with the same
logits as ``transformers``; the pickles are read only by torch's restricted unpickler, so a
``.bin`` with a code payload is refused in one line and its payload (a marker-file writer) never
runs; ``jpeglm convert`` writes the same model as safetensors, logits bit-identical at fp32 and
bf16.

transformers >= 5 no longer writes pickles (``save_pretrained(safe_serialization=False)`` writes
safetensors), so :func:`save_hub` writes the layout as transformers 4's
``save_pretrained(safe_serialization=False, max_shard_size=...)`` did: ``torch.save`` of the
state dict, or of each shard, with the index's ``weight_map``.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings

import pytest
from jpeglm_testutil import tiny_llama_config

from jpeglm import codec
from jpeglm.cli import main
from jpeglm.data import bundled as samples
from jpeglm.tokenizer import bytes_to_braille
from jpeglm.tokenizer.sentencepiece import train_sentencepiece

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from jpeglm.checkpoint.convert import convert  # noqa: E402
from jpeglm.checkpoint.hf import load_pretrained  # noqa: E402
from jpeglm.checkpoint.load import load_model  # noqa: E402


def save_hub(model, d, max_shard_size: int | None = None) -> None:
    """``model`` as the Hub's pickle layout in ``d`` (transformers 4's
    ``save_pretrained(safe_serialization=False)``)."""
    model.config.save_pretrained(d)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if max_shard_size is None:
        torch.save(state, d / "pytorch_model.bin")
        return
    shards: list[dict] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    n, weight_map = len(shards), {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        torch.save(shard, d / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    docs = [codec.encode(p, quality=q, size=s) for p in samples.photo_paths() for q in (20, 25)
            for s in (16, 32)]  # fmt: skip
    return train_sentencepiece(docs, 320, max_sentence_length=1 << 16)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = tiny_llama_config(transformers)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["single", "sharded"])
def hub_dir(request, tmp_path_factory, hf_model, sp_model):
    d = tmp_path_factory.mktemp(f"hub-{request.param}")
    save_hub(hf_model, d, 50_000 if request.param == "sharded" else None)
    (d / "tokenizer.model").write_bytes(sp_model)
    if request.param == "sharded":
        assert len(list(d.glob("pytorch_model-*-of-*.bin"))) > 3
        assert not (d / "pytorch_model.bin").exists()
    return d


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


IDS = torch.tensor([[1, 5, 77, 300, 12, 9, 250, 31]])


def test_hub_layout_loads_like_transformers(hub_dir, hf_model):
    model = load_pretrained(hub_dir)
    assert model.tok_embeddings.weight.dtype == torch.float32
    with torch.no_grad():
        want = hf_model(IDS).logits
    torch.testing.assert_close(_logits(model, IDS), want, rtol=1e-5, atol=1e-5)
    bf16 = load_pretrained(hub_dir, dtype=torch.bfloat16)
    assert bf16.tok_embeddings.weight.dtype == torch.bfloat16
    loaded = load_model(hub_dir)  # the tokenizer beside it, the paper's record by default
    assert loaded.tokenizer.vocab_size <= 320 and loaded.image_size == 256


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_bin(tmp_path, hf_model, stored):
    d = tmp_path / "half"
    d.mkdir()
    save_hub(copy.deepcopy(hf_model).to(stored), d)  # the fixture stays fp32
    model = load_pretrained(d)
    assert model.tok_embeddings.weight.dtype == stored
    ref = hf_model.state_dict()["model.layers.1.mlp.down_proj.weight"].to(stored)
    assert torch.equal(model.layers[1].feed_forward.w2.weight, ref)


def test_sample_from_hub_layout(hub_dir, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sample", "--model", str(hub_dir), "-o", str(out), "-n", "2", "--size", "16",
            "--max-tokens", "1200", "--seed", "1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("clean") == 2
    for i in range(2):
        jpg = (out / f"sample_{i:03d}.jpg").read_bytes()
        assert codec.decode(jpg).shape == (16, 16, 3)


@pytest.fixture(scope="module")
def official_hub_dir(tmp_path_factory, hf_model):
    """The Hub layout with a tokenizer trained the official way (sentencepiece's defaults:
    dummy prefix "▁", nmt_nfkc, ...)."""
    docs = [codec.encode(p, quality=q, size=s) for p in samples.photo_paths() for q in (20, 25)
            for s in (16, 32)]  # fmt: skip
    d = tmp_path_factory.mktemp("hub-official")
    save_hub(hf_model, d)
    (d / "tokenizer.model").write_bytes(train_sentencepiece(docs, 320, official=True))
    return d, docs


def test_official_tokenizer_in_hub_layout(official_hub_dir, tmp_path, capsys):
    d, docs = official_hub_dir
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning anywhere: loading, sampling
        tok = load_model(d).tokenizer
        assert tok.dummy_prefix == sp.piece_to_id("\u2581")
        for x in docs[:4]:
            assert tok.encode(x) == sp.encode(bytes_to_braille(x))
        out = tmp_path / "s"
        args = ["sample", "--model", str(d), "-o", str(out), "-n", "2", "--size", "16",
                "--max-tokens", "1200", "--seed", "1"]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "arning" not in captured.err and captured.out.count("clean") == 2
    for i in range(2):
        assert codec.decode((out / f"sample_{i:03d}.jpg").read_bytes()).shape == (16, 16, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_convert_bit_identical(hub_dir, tmp_path, dtype):
    dest = convert(hub_dir, tmp_path / "conv")
    names = sorted(p.name for p in dest.iterdir())
    assert "jpeglm.json" in names and "tokenizer.model" in names and "config.json" in names
    assert not [n for n in names if n.endswith(".bin")]
    assert any(n.endswith(".safetensors") for n in names)
    assert (dest / "tokenizer.model").read_bytes() == (hub_dir / "tokenizer.model").read_bytes()
    record = json.loads((dest / "jpeglm.json").read_text())
    assert record["image_size"] == 256 and record["tokenizer_fingerprint"]
    a = _logits(load_pretrained(hub_dir, dtype=dtype), IDS)
    b = _logits(load_pretrained(dest, dtype=dtype), IDS)
    assert a.dtype == b.dtype == dtype
    assert torch.equal(a, b)
    # and sampled the same: the converted folder's record is the one sampling reads
    assert load_model(dest).info["tokenizer_fingerprint"] == record["tokenizer_fingerprint"]


def test_convert_cli_sharded_and_refusals(hub_dir, tmp_path, capsys):
    dest = tmp_path / "conv"
    assert main(["convert", str(hub_dir), str(dest), "--max-shard-size", "60000"]) == 0
    assert len(list(dest.glob("model-*-of-*.safetensors"))) > 1
    assert (dest / "model.safetensors.index.json").is_file()
    a = _logits(load_pretrained(hub_dir), IDS)
    assert torch.equal(a, _logits(load_pretrained(dest), IDS))
    capsys.readouterr()
    # an existing DEST: refused, untouched
    before = sorted(p.name for p in dest.iterdir())
    assert main(["convert", str(hub_dir), str(dest)]) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == before
    # --replace of a folder jpeglm did not write: refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "notes.txt").write_text("keep me")
    assert main(["convert", str(hub_dir), str(mine), "--replace"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    # --replace of its own output: done, atomically (no temporary folder left)
    assert main(["convert", str(hub_dir), str(dest), "--replace", "--dtype", "bfloat16"]) == 0
    assert load_pretrained(dest).tok_embeddings.weight.dtype == torch.bfloat16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- a pickle that carries code


class Payload:
    """Unpickled without restriction, creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecPayload(Payload):
    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _hostile(hub_dir, tmp_path, how: str):
    d = tmp_path / "evil"
    d.mkdir()
    marker = tmp_path / "PWNED"
    for p in hub_dir.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    target = d / ("pytorch_model.bin" if (d / "pytorch_model.bin").exists()
                  else sorted(d.glob("pytorch_model-*.bin"))[-1].name)  # fmt: skip
    state = torch.load(target, weights_only=True)
    if how == "torch.save":  # torch's zip format, the payload beside real tensors
        state["extra"] = Payload(marker)
        torch.save(state, target)
    elif how == "nested":
        state["model.norm.weight"] = [ExecPayload(marker)]
        torch.save(state, target)
    else:  # a bare pickle (protocol 2: what torch's legacy format uses) is the payload
        target.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    return d, target, marker


def _one_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for p in parts:
        assert p in lines[0], err


@pytest.mark.parametrize("how", ["torch.save", "nested", "pickle"])
def test_a_bin_payload_never_runs(hub_dir, tmp_path, capsys, how):
    d, target, marker = _hostile(hub_dir, tmp_path, how)
    with pytest.raises(ValueError) as e:
        load_pretrained(d)
    _one_line(str(e.value), str(target), "refused", "nothing in it was run")
    assert "system" in str(e.value) or "exec" in str(e.value)  # what it named, no advice
    assert "safe_globals" not in str(e.value)
    assert not marker.exists()
    rc = main(["sample", "--model", str(d), "-o", str(tmp_path / "out"), "-n", "1", "--size",
               "16", "--max-tokens", "64"])  # fmt: skip
    assert rc == 2
    _one_line(capsys.readouterr().err, "jpeglm sample: error:", target.name, "refused")
    assert not marker.exists()
    assert main(["convert", str(d), str(tmp_path / "conv")]) == 2
    _one_line(capsys.readouterr().err, "jpeglm convert: error:", "refused")
    assert not marker.exists() and not (tmp_path / "conv").exists()


def test_bin_index_is_untrusted(hub_dir, tmp_path):
    if not (hub_dir / "pytorch_model.bin.index.json").exists():
        pytest.skip("the sharded layout's index")
    d = tmp_path / "idx"
    d.mkdir()
    for p in hub_dir.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    index = json.loads((d / "pytorch_model.bin.index.json").read_text())
    first = next(iter(index["weight_map"]))
    for bad in ("../pytorch_model-00001-of-00002.bin", "/etc/passwd", "x.pkl"):
        index["weight_map"][first] = bad
        (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match="not plain \\*.bin names"):
            load_pretrained(d)


def test_non_tensor_entries_refused(tmp_path, hf_model):
    d = tmp_path / "odd"
    d.mkdir()
    save_hub(hf_model, d)
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    state["step"] = 3  # weights-only admits ints: still not a weight
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="not named tensors: 'step'"):
        load_pretrained(d)
    torch.save({k: v.to(torch.int64) for k, v in state.items() if k != "step"},
               d / "pytorch_model.bin")  # fmt: skip
    with pytest.raises(ValueError, match="must be floating point"):
        load_pretrained(d)
