"""One-token decode steps: no attention mask outside ``torch.compile`` (SDPA's flash backend
stays open), and compiled sampling makes a bounded set of graphs over many generations."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from jpeglm import codec  # noqa: E402
from jpeglm.data import bundled as samples  # noqa: E402
from jpeglm.inference import loop  # noqa: E402
from jpeglm.inference.loop import generate_tokens  # noqa: E402
from jpeglm.model import ModelArgs, Transformer  # noqa: E402
from jpeglm.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    streams = [codec.encode(p, quality=30, size=s) for p in samples.photo_paths() for s in (16, 32)]
    return Tokenizer.train(streams, vocab_size=300, progress=False)


class _NoEos:
    """The tokenizer with an EOS id no logit can reach: every generation runs to max_tokens."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.eos_id = tok.vocab_size + 1

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.tok, name)


def _model(tok: Tokenizer, max_seq_len: int) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)
    return Transformer(args, backend="torch").eval()


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[tuple[int, int, object]]:
    """Every SDPA call as (queries, keys, attn_mask); the CPU cache kernel turned off so that
    fp32 steps reach SDPA too."""
    from jpeglm.model import kv_cache

    calls: list[tuple[int, int, object]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, **kw):  # noqa: ANN001, ANN202
        calls.append((q.shape[-2], k.shape[-2], attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    monkeypatch.setattr(kv_cache, "cache_attention_applies", lambda q, k: False)
    return calls


def test_one_token_decode_steps_give_sdpa_no_mask(tok, sdpa_calls):
    """forward / decode with one token at position t read the cache cut at t + 1, unmasked,
    and give the full forward's logits (stale slots past t are never read)."""
    model = _model(tok, 64)
    idx = torch.randint(0, tok.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        model.setup_caches(2, 64)
        model(idx[:, :8], input_pos=torch.arange(8))
        sdpa_calls.clear()
        steps = [model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[:, 0] for t in (8, 9, 10)]
        steps += [model.decode(idx[:, t : t + 1], torch.tensor([t]), 32) for t in (11, 12)]
        steps += [model.decode(idx[:, t : t + 1], torch.tensor([t]), t + 1, exact=True)
                  for t in (13, 14)]  # fmt: skip
    model.clear_caches()
    assert sdpa_calls, "SDPA was not called"
    assert all(mask is None for _, _, mask in sdpa_calls)
    per_layer = [keys for _, keys, _ in sdpa_calls[:: model.args.n_layers]]
    assert per_layer == list(range(9, 16)) and len(sdpa_calls) == 7 * model.args.n_layers
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 8:15], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_eager_sampler_steps_without_a_mask(tok, sdpa_calls, dtype):
    """The sampler's eager one-token steps: the cache cut at the filled length, no mask."""
    model = _model(tok, 256)
    prompt = b"\xff\xd8"
    plen = 1 + len(tok.encode(prompt))
    generate_tokens(model, _NoEos(tok), [prompt] * 2, max_tokens=40, seed=1, dtype=dtype)
    one = [(keys, mask) for queries, keys, mask in sdpa_calls if queries == 1]
    assert all(mask is None for _, mask in one)
    per_layer = [keys for keys, _ in one[:: model.args.n_layers]]
    assert per_layer == list(range(plen + 1, plen + 40)) and len(one) == 39 * model.args.n_layers


def test_compiled_sampling_makes_a_bounded_set_of_graphs(tok, monkeypatch):
    """Generations of several lengths (one long) and batch sizes: at most one graph per KV
    bucket of each static cache, more than Dynamo's global limit of 8 in one region without
    falling back to eager (every one-token step runs a compiled graph), no recompile once a
    cache size has its graphs, and the samples of the eager loop."""
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(loop, "KV_BUCKETS", (8, 16, 32))  # 18 buckets in a 512-slot cache
    monkeypatch.setattr(loop, "kernels_apply", lambda dtype, device: False)  # buckets in fp32
    counter = CompileCounter()
    graph_calls = [0]

    def backend(gm, example_inputs):  # noqa: ANN001, ANN202
        counter(gm, example_inputs)

        def run(*args):  # noqa: ANN002, ANN202
            graph_calls[0] += 1
            return gm.forward(*args)

        return run

    real_compile = torch.compile

    def counting_compile(fn, **kwargs):  # noqa: ANN001, ANN003, ANN202
        kwargs.pop("mode", None)
        return real_compile(fn, backend=backend, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    model = _model(tok, 512)
    no_eos = _NoEos(tok)
    prompt = b"\xff\xd8"
    plen = 1 + len(tok.encode(prompt))
    steps = compiles = 0
    bound = 0
    for n, max_tokens, new_graphs in ((1, 40, True), (1, 500, True), (1, 100, False),
                                      (1, 300, False), (2, 60, True)):  # fmt: skip
        before = counter.frame_count
        fast = generate_tokens(model, no_eos, [prompt] * n, max_tokens=max_tokens, seed=n,
                               compile=True)  # fmt: skip
        total = min(plen + max_tokens, 512)
        assert all(len(t) == total - plen for t in fast)
        steps += total - plen - 1  # one-token steps (the prefill is eager)
        compiles = counter.frame_count - before
        assert (compiles > 0) == new_graphs
        if max_tokens in (40, 100):
            slow = generate_tokens(model, no_eos, [prompt] * n, max_tokens=max_tokens, seed=n)
            assert slow == fast
    for _, slots, *_ in model._compiled_steps:  # one region per (rows, cache size, ...)
        bound += len(loop._kv_lens(slots))
    assert sorted(slots for _, slots, *_ in model._compiled_steps) == [64, 512, 512]
    assert counter.frame_count <= bound and counter.frame_count > 8
    assert graph_calls[0] == steps  # no step fell back to eager
    assert torch._dynamo.config.recompile_limit == 8  # the global limit is untouched
    model.clear_caches()
