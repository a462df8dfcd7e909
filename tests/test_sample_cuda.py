"""The sampler on CUDA (issue 30): the loop's CUDA path -- pinned mask copies, the CUDA
generator, the compiled step with its KV buckets and CUDA graphs (``reduce-overhead``), jump-forward
mixed with graph replays, bf16 / int8 sampling weights -- run for real, constrained and plain,
eager and compiled. Skipped without CUDA (CPU runs cover the same code in test_sample.py); the
GPU check (``scripts/gpu_check.sh``, stage pytest) runs this file on the card."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from jpeglm_testutil import photo_tokenizer  # noqa: E402

from jpeglm import codec  # noqa: E402
from jpeglm.data import bundled as samples  # noqa: E402
from jpeglm.inference.sample import complete, generate  # noqa: E402
from jpeglm.model import ModelArgs, Transformer  # noqa: E402
from jpeglm.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return photo_tokenizer(300)


@pytest.fixture(scope="module")
def model(tok) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=2048))
    return m.to("cuda").eval()


def _all_decode(out) -> None:
    for s in out:
        assert s.clean and s.valid_mcus == s.total_mcus, (s.valid_mcus, s.total_mcus)
        np.testing.assert_array_equal(codec.decode(s.data), s.image)  # strict decode


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_constrained_samples_decode_and_repeat_per_seed(model, tok, compile):
    stats: dict = {}
    out = generate(model, tok, n=8, size=32, max_tokens=1500, seed=4, batch_size=4,
                   compile=compile, stats=stats)  # fmt: skip
    _all_decode(out)
    assert stats["forced"] > 0  # jump-forward ran between the (graph) steps
    again = generate(model, tok, n=8, size=32, max_tokens=1500, seed=4, batch_size=4,
                     compile=compile)  # fmt: skip
    assert [s.data for s in again] == [s.data for s in out]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_unconstrained_and_completions_on_cuda(model, tok, compile):
    out = generate(model, tok, n=4, size=16, max_tokens=200, seed=0, constrained=False,
                   compile=compile)  # fmt: skip
    assert all(len(s.tokens) <= 200 and 0 <= s.valid_mcus <= s.total_mcus for s in out)
    comp = complete(model, tok, samples.photo_paths()[:2], rows=1, size=32, max_tokens=1500,
                    seed=1, compile=compile)  # fmt: skip
    _all_decode(comp)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_low_precision_weights_on_cuda(model, tok, dtype):
    out = generate(model, tok, n=4, size=16, max_tokens=1500, seed=3, dtype=dtype)
    _all_decode(out)
    assert model.inference["dtype"] == dtype
    model.prepare_inference("fp32")


def test_compiled_step_matches_eager_logits(model, tok):
    """The compiled one-token step (the sampler's compile options, KV bucket) gives the eager
    step's logits: graph replays read the same cache."""
    from jpeglm.inference.loop import _kv_len, compile_decode

    model.prepare_inference("fp32")
    model.setup_caches(2, 512, device="cuda")
    ids = torch.randint(0, tok.vocab_size, (2, 8), device="cuda")
    with torch.no_grad():
        model.decode(ids, torch.arange(8, device="cuda"), 8, exact=True)
        step = compile_decode(model, torch.device("cuda"))
        for pos in range(8, 12):
            t = torch.randint(0, tok.vocab_size, (2, 1), device="cuda")
            p = torch.tensor([pos], device="cuda")
            want = model.decode(t, p, pos + 1, exact=True).float()
            got = step(t, p, _kv_len(pos + 1, 512)).float()
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
