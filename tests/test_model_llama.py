"""The Llama model on the PyTorch reference backend: configs, HF interop, KV cache, compile.

The Triton backend is tested in test_kernels.py (it needs TRITON_INTERPRET=1 set before Triton
is imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import copy  # noqa: E402

import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from jpeglm.checkpoint.hf import load_pretrained, save_pretrained  # noqa: E402
from jpeglm.model import (  # noqa: E402
    CONFIGS,
    ModelArgs,
    Transformer,
    backends,  # noqa: E402
)


def tiny(**overrides) -> ModelArgs:
    return ModelArgs.from_name("tiny", **{"max_seq_len": 64, **overrides})


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny(**overrides), backend="torch").eval()
    with torch.no_grad():  # random norm weights too, so a swapped norm would show
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def tokens(batch: int = 2, seq: int = 24, vocab: int = 323, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ config


def test_named_sizes():
    seven = ModelArgs.from_name("7B")
    assert (seven.dim, seven.n_layers, seven.n_heads, seven.n_kv_heads, seven.hidden_dim) == (
        4096, 32, 32, 32, 11008,
    )  # fmt: skip
    assert (seven.norm_eps, seven.rope_theta, seven.max_seq_len) == (1e-5, 10000.0, 12288)
    expected = {"tiny": (0.1e6, 0.2e6), "small": (22e6, 30e6), "base": (100e6, 130e6),
                "1B": (0.95e9, 1.15e9), "7B": (6.3e9, 6.8e9)}  # fmt: skip
    assert set(expected) == set(CONFIGS)
    for name, (lo, hi) in expected.items():
        with torch.device("meta"):
            n = Transformer(ModelArgs.from_name(name), backend="torch").num_params()
        assert lo <= n <= hi, (name, n)
    assert ModelArgs.from_name("small", vocab_size=400, tie_embeddings=True).vocab_size == 400


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dim=66), "dim (66) must be divisible by n_heads (4)"),
        (dict(n_kv_heads=3), "n_heads (4) must be divisible by n_kv_heads (3)"),
        (dict(dim=12, n_heads=4, n_kv_heads=4), "head_dim = dim / n_heads = 3 must be even"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(n_layers=-1), "n_layers must be a positive integer"),
        (dict(norm_eps=0.0), "norm_eps (0.0)"),
    ],
)
def test_bad_configs(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny(**overrides)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        ModelArgs.from_name("huge")
    with pytest.raises(TypeError, match="unknown ModelArgs field"):
        ModelArgs.from_name("tiny", hidden=3)


def test_backend_selection(monkeypatch):
    assert backends.resolve_backend("torch").name == "torch"
    monkeypatch.setenv("JPEGLM_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="unknown JPEGLM_BACKEND='cuda-magic'"):
        backends.resolve_backend()
    monkeypatch.setenv("JPEGLM_BACKEND", "torch")
    assert backends.resolve_backend().name == "torch"
    if not torch.cuda.is_available():
        assert backends.resolve_backend("auto").name == "torch"
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            backends._triton_backend()


def test_imports_stay_light():
    """The model needs neither the native core nor Triton on CPU; the codec never needs torch."""
    code = (
        "import sys, jpeglm.model.args, jpeglm.model.model, jpeglm.model.backends;"
        "jpeglm.model.model.Transformer(jpeglm.model.args.ModelArgs.from_name('tiny'));"
        "gpu = __import__('torch').cuda.is_available();"
        "bad = {'jpeglm._core'} | (set() if gpu else {'triton', 'flash_attn'});"
        "assert not bad & set(sys.modules), bad & set(sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["JPEGLM_BACKEND"] = "auto"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    code = "import sys, jpeglm.codec; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------- forward


def test_loss_matches_logits():
    model = make_model()
    idx = tokens()
    targets = idx.roll(-1, dims=1)
    targets[:, -3:] = -100
    with torch.no_grad():
        logits = model(idx)
        loss = model(idx, targets=targets)
    assert logits.shape == (2, 24, 323)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_causal():
    model = make_model()
    idx = tokens()
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 323
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_forward_errors():
    model = make_model()
    with pytest.raises(ValueError, match="exceed max_seq_len 64"):
        model(tokens(1, 65))
    with pytest.raises(ValueError, match="idx must be"):
        model(tokens(1, 5)[0])
    with pytest.raises(RuntimeError, match="setup_caches"):
        model(tokens(1, 5), input_pos=torch.arange(5))
    with pytest.raises(ValueError, match="targets"):
        model(tokens(1, 5), targets=tokens(1, 4))


def test_training_step_learns():
    model = make_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = tokens(2, 32)
    losses = []
    for _ in range(15):
        loss = model(idx[:, :-1], targets=idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_tied_embeddings():
    model = make_model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert model.num_params() == make_model().num_params() - 323 * 64


def test_rope_tables_stay_float32():
    model = make_model().to(torch.bfloat16)
    assert model.rope.cos.dtype == torch.float32 and model.output.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.rope.cos, make_model().rope.cos, atol=0, rtol=0)


# ------------------------------------------------------------------------------------ cache


@pytest.mark.parametrize("batch, max_batch", [(2, 2), (1, 3)])
def test_kv_cache_decode_matches_full_forward(batch, max_batch):
    model = make_model()
    idx = tokens(batch, 20)
    with torch.no_grad():
        full = model(idx)
        model.setup_caches(max_batch_size=max_batch, max_seq_len=32)
        prefill = model(idx[:, :8], input_pos=torch.arange(8))
        steps = [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(8, 20)]
    torch.testing.assert_close(prefill, full[:, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 8:], atol=1e-5, rtol=1e-5)
    # A second prompt reuses the cache: stale entries beyond the prefill are masked out.
    other = tokens(batch, 6, seed=5)
    with torch.no_grad():
        again = model(other, input_pos=torch.arange(6))
        model.clear_caches()
        torch.testing.assert_close(again, model(other), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len 65 must be in 1..64"):
        model.setup_caches(1, 65)


def test_decode_cut_cache_and_multi_token_steps_match_full_forward():
    """Attention over the cache cut to kv_len (one mask per step) and multi-token steps (as
    jump-forward uses) give the full forward's logits."""
    model = make_model()
    idx = tokens(2, 20)
    with torch.no_grad():
        full = model(idx)
        model.setup_caches(2, 64)
        model.decode(idx[:, :8], torch.arange(8), kv_len=16)
        run = model.decode(idx[:, 8:12], torch.arange(8, 12), kv_len=16)  # 4 tokens at once
        steps = [model.decode(idx[:, t : t + 1], torch.tensor([t]), kv_len=32)[:, None]
                 for t in range(12, 20)]  # fmt: skip
        model.clear_caches()
    torch.testing.assert_close(run, full[:, 11], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 12:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt, tol", [("fp32", 1e-5), ("bf16", 0.1), ("fp16", 0.02), ("int8", 0.1)])
def test_inference_weights(fmt, tol):
    """prepare_inference: fused wqkv / w13 and converted or int8 weights give the same logits
    (up to the format's rounding) without gradients; training and parameters are untouched."""
    model = make_model()
    idx = tokens(2, 12)
    names = [n for n, _ in model.named_parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(idx)
    model.prepare_inference(fmt)
    assert [n for n, _ in model.named_parameters()] == names  # checkpoint layout unchanged
    assert model.state_dict().keys() == state.keys()
    if fmt == "int8":
        assert model.layers[0].attention.fused[0].weight.dtype == torch.int8
        assert model.inference_bytes() < 0.3 * sum(4 * p.numel() for p in model.parameters())
    with torch.no_grad():
        got = model(idx).float()
        model.setup_caches(2, 16, dtype=model.inference["act_dtype"])
        step = model.decode(idx, torch.arange(12), kv_len=16).float()
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(step, ref[:, -1], atol=tol, rtol=tol)
    # with gradients the parameters are used: same loss as before, gradients flow
    loss = model(idx, targets=idx)
    loss.backward()
    assert model.layers[0].attention.wq.weight.grad is not None
    # a changed parameter makes the next gradient-free forward rebuild the inference weights
    with torch.no_grad():
        model.output.weight.mul_(2)
        plain = copy.deepcopy(model)
        plain.clear_inference()
        ref2 = plain(idx)
        got2 = model(idx).float()
    torch.testing.assert_close(got2, ref2, atol=2 * tol, rtol=2 * tol)
    model.clear_inference()
    assert model.inference is None and model.layers[0].attention.fused is None


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_cpu_decode_kernels_match_the_torch_path(kv_heads):
    """fp32 on CPU: the packed linear and the cache-attention kernel (exact steps) give the
    logits of torch's linear + masked SDPA, for a prefill, a multi-token run and single steps
    (grouped-query heads too); JPEGLM_PACKED_LINEAR=0 is the torch path."""
    from jpeglm.inference.decode_kernels import fast_kernel

    if fast_kernel() is None:
        pytest.skip("jpeglm._core has no CPU decode kernel here")
    model = make_model(**({} if kv_heads is None else {"n_kv_heads": kv_heads}))
    idx = tokens(3, 20)
    with torch.no_grad():
        ref = model(idx)  # parameters, torch ops
        model.prepare_inference("fp32")
        assert model.inference["output"].panels is not None
        model.setup_caches(3, 24, dtype=torch.float32)
        first = model.decode(idx[:, :12], torch.arange(12), 12, exact=True)
        run = model.decode(idx[:, 12:17], torch.arange(12, 17), 17, exact=True)
        steps = [model.decode(idx[:, t : t + 1], torch.tensor([t]), t + 1, exact=True)
                 for t in range(17, 20)]  # fmt: skip
        masked = model.decode(idx[:, 19:20], torch.tensor([19]), 24)  # one token: cut at 20
    torch.testing.assert_close(first, ref[:, 11], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run, ref[:, 16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), ref[:, 17:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked, ref[:, 19], atol=1e-5, rtol=1e-5)


def test_int8_quantization_is_per_channel():
    from jpeglm.inference.decode_kernels import InferenceLinear

    w = torch.randn(6, 32) * torch.tensor([1e-3, 1.0, 10.0, 0.1, 5.0, 2.0])[:, None]
    lin = InferenceLinear(w, "int8", torch.float32)
    assert lin.weight.dtype == torch.int8 and lin.scales.shape == (6,)
    deq = lin.weight.float() * lin.scales[:, None]
    assert ((deq - w).abs() <= lin.scales[:, None] / 2 + 1e-7).all()  # half a step per row
    x = torch.randn(3, 32)
    torch.testing.assert_close(lin(x), x @ deq.t(), atol=1e-4, rtol=1e-4)
    xb = x.bfloat16()  # the packed CPU kernel (bf16 activations, few rows)
    lin_b = InferenceLinear(w, "int8", torch.bfloat16)
    torch.testing.assert_close(lin_b(xb).float(), x @ deq.t(), atol=0.05, rtol=0.05)


def test_torch_compile_training_step():
    model = make_model(n_layers=1).train()
    idx = tokens(2, 16)
    compiled = torch.compile(model)
    loss = compiled(idx, targets=idx)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    eager = model(idx, targets=idx)
    eager.backward()
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------ HF interop


def hf_llama(tie: bool = False):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=67, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_hf_parity_both_ways(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    hf = hf_llama(tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf", backend="torch").eval()
    assert ours.args.tie_embeddings == tie and ours.args.rope_theta == 500.0
    idx = tokens(2, 40, vocab=67)
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, atol=1e-5, rtol=1e-5)

    save_pretrained(ours, tmp_path / "ours")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, expected, atol=1e-5, rtol=1e-5)


def test_hf_sharded_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_llama()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_pretrained(tmp_path / "hf", backend="torch")
    idx = tokens(1, 10, vocab=67)
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, atol=1e-5, rtol=1e-5)

    out = tmp_path / "ours"
    save_pretrained(ours, out, max_shard_size=50_000)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, expected, atol=1e-5, rtol=1e-5)
    save_pretrained(ours, out)  # re-save as one file: the old shards and index go
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_save_load_roundtrip_and_dtype(tmp_path):
    model = make_model()
    save_pretrained(model, tmp_path, extra_config={"bos_token_id": 320})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["bos_token_id"] == 320
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    loaded = load_pretrained(tmp_path, backend="torch")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    half = load_pretrained(tmp_path, dtype=torch.bfloat16, backend="torch")
    assert half.output.weight.dtype == torch.bfloat16 and half.rope.cos.dtype == torch.float32


# ------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def checkpoint(tmp_path):
    save_pretrained(make_model(), tmp_path)
    return tmp_path


def edit_tensors(folder, fn) -> None:
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_vocab_mismatch(checkpoint):
    with pytest.raises(ValueError, match="tokenizer has 320 tokens but .* vocab_size 323"):
        load_pretrained(checkpoint, vocab_size=320)
    edit_config(checkpoint, vocab_size=300)
    with pytest.raises(ValueError, match=r"weight has shape \(323, 64\), expected \(300, 64\)"):
        load_pretrained(checkpoint)


def test_missing_tensor(checkpoint):
    edit_tensors(checkpoint, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="missing tensors: model.layers.1.mlp.up_proj.weight"):
        load_pretrained(checkpoint)


def test_wrong_shape(checkpoint):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    edit_tensors(checkpoint, shrink)
    with pytest.raises(
        ValueError, match=r"k_proj.weight has shape \(16, 64\), expected \(32, 64\)"
    ):
        load_pretrained(checkpoint)


def test_unexpected_tensor(checkpoint):
    edit_tensors(
        checkpoint, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)})
    )
    with pytest.raises(ValueError, match="tensors this Llama does not: .*q_proj.bias"):
        load_pretrained(checkpoint)


def test_unsupported_and_missing_files(checkpoint, tmp_path_factory):
    edit_config(checkpoint, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope type 'linear' is not supported"):
        load_pretrained(checkpoint)
    edit_config(checkpoint, rope_scaling=None, mlp_bias=True)
    with pytest.raises(ValueError, match="biases are not supported"):
        load_pretrained(checkpoint)
    edit_config(checkpoint, mlp_bias=False, num_attention_heads=5)
    with pytest.raises(ValueError, match="head_dim 16 x num_attention_heads 5"):
        load_pretrained(checkpoint)
    edit_config(checkpoint, num_attention_heads=4)

    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(empty)
    (empty / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(empty)
    (empty / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="only pickle weights .*not loaded"):
        load_pretrained(empty)
    (empty / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")  # the Hub's name
    with pytest.raises(ValueError, match="pytorch_model.bin is refused: not a weights-only"):
        load_pretrained(empty)


# ------------------------------------------------------------------ activation checkpointing


def _retained_after_forward(model, x) -> tuple[torch.Tensor, int]:
    """(loss, bytes allocated by the forward pass and still held when it returns): what the
    autograd graph keeps for backward, measured by the profiler's CPU memory accounting."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(x[:, :-1], targets=x[:, 1:])
    return loss, sum(e.self_cpu_memory_usage for e in prof.events())


def test_activation_checkpointing_same_gradients_less_memory():
    torch.manual_seed(0)
    args = ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=300,
                     max_seq_len=512)  # fmt: skip
    model = Transformer(args, backend="torch")
    x = torch.randint(0, 300, (2, 257), generator=torch.Generator().manual_seed(1))
    grads, memory = {}, {}
    for mode in ("none", "selective", "full"):
        model.zero_grad(set_to_none=True)
        model.set_activation_checkpointing(mode)
        loss, memory[mode] = _retained_after_forward(model, x)
        loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for mode in ("selective", "full"):
        for n, g in grads["none"].items():
            torch.testing.assert_close(grads[mode][n], g, rtol=1e-5, atol=1e-7)
    # full keeps only the block inputs; selective keeps matmul/attention outputs
    assert memory["full"] < 0.25 * memory["none"], memory
    assert memory["full"] < memory["selective"] < 0.8 * memory["none"], memory
    # no-grad scoring (and generation) runs the plain path whatever the setting
    with torch.no_grad():
        logits = model(x)  # mode "full" is still set
        model.set_activation_checkpointing("none")
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="activation_checkpoint"):
        model.set_activation_checkpointing("some")
