"""Sampling: constrained samples from a tiny random model always decode; prompts, stopping,
filtering and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jpeglm import codec  # noqa: E402
from jpeglm.data import bundled as samples  # noqa: E402
from jpeglm.inference.loop import sample_logits  # noqa: E402
from jpeglm.inference.sample import clean_stream, complete, generate, prompt_stream  # noqa: E402
from jpeglm.model import ModelArgs, Transformer  # noqa: E402
from jpeglm.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    streams = [
        codec.encode(p, quality=q, size=s)
        for p in samples.photo_paths()
        for q in (20, 25, 30)
        for s in (16, 32)
    ]
    return Tokenizer.train(streams, vocab_size=300, progress=False)


@pytest.fixture(scope="module")
def model(tok) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=2048))
    return m.eval()


def test_constrained_samples_all_decode(model, tok):
    out = generate(model, tok, n=120, size=16, max_tokens=1500, seed=3)
    assert len(out) == 120
    for s in out:
        assert s.clean and s.valid_mcus == s.total_mcus == 1
        img = codec.decode(s.data)  # strict: any libjpeg warning would raise
        np.testing.assert_array_equal(img, s.image)
        assert s.data.startswith(b"\xff\xd8") and s.data.endswith(b"\xff\xd9")
    out = generate(model, tok, n=16, size=32, max_tokens=1500, seed=4, batch_size=8)
    assert all(s.clean for s in out) and all(codec.mcu_validity(s.data).all() for s in out)
    # the same seed gives the same samples
    again = generate(model, tok, n=16, size=32, max_tokens=1500, seed=4, batch_size=8)
    assert [s.data for s in again] == [s.data for s in out]


def test_a_shared_prompt_is_prefilled_once_with_the_same_samples(model, tok, monkeypatch):
    from jpeglm.inference import loop

    shared = generate(model, tok, n=4, size=16, max_tokens=120, seed=3)
    monkeypatch.setattr(loop, "SHARE_PROMPT", False)
    each = generate(model, tok, n=4, size=16, max_tokens=120, seed=3)
    assert [s.data for s in shared] == [s.data for s in each]


def test_compiled_decode_step_gives_the_same_samples(model, tok):
    eager = generate(model, tok, n=4, size=16, max_tokens=300, seed=5)
    compiled = generate(model, tok, n=4, size=16, max_tokens=300, seed=5, compile=True)
    assert [s.data for s in compiled] == [s.data for s in eager]


def test_jump_forward_gives_the_same_samples(model, tok):
    """Forced runs (header, restart markers, EOI) fed in one step: fewer forwards, the same
    samples as token by token, for a batch and for completions."""
    fast, slow = {}, {}
    a = generate(model, tok, n=6, size=16, max_tokens=400, seed=7, batch_size=3, stats=fast)
    b = generate(model, tok, n=6, size=16, max_tokens=400, seed=7, batch_size=3,
                 jump_forward=False, stats=slow)  # fmt: skip
    assert [s.data for s in a] == [s.data for s in b]
    assert fast["forced"] > 0 and fast["forwards"] < slow["forwards"] and slow["forced"] == 0
    imgs = samples.photo_paths()[:2]
    a = complete(model, tok, imgs, rows=0, size=32, max_tokens=300, seed=2)
    b = complete(model, tok, imgs, rows=0, size=32, max_tokens=300, seed=2, jump_forward=False)
    assert [s.data for s in a] == [s.data for s in b]


def test_batch_results_are_deterministic_per_seed(model, tok):
    a = generate(model, tok, n=5, size=16, max_tokens=200, seed=11, constrained=False)
    b = generate(model, tok, n=5, size=16, max_tokens=200, seed=11, constrained=False)
    c = generate(model, tok, n=5, size=16, max_tokens=200, seed=12, constrained=False)
    assert [s.tokens for s in a] == [s.tokens for s in b] != [s.tokens for s in c]
    # rows of one batch, and batches of one call, draw differently
    assert len({bytes(str(s.tokens), "ascii") for s in a}) == 5
    d = generate(model, tok, n=4, size=16, max_tokens=200, seed=11, batch_size=2)
    assert d[0].data != d[2].data


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_low_precision_weights_sample(model, tok, dtype):
    out = generate(model, tok, n=2, size=16, max_tokens=1500, seed=3, dtype=dtype)
    assert all(s.clean for s in out)
    again = generate(model, tok, n=2, size=16, max_tokens=1500, seed=3, dtype=dtype)
    assert [s.data for s in again] == [s.data for s in out]
    assert model.inference["dtype"] == dtype
    with pytest.raises(ValueError, match="dtype"):
        generate(model, tok, n=1, size=16, dtype="int4")


def test_unconstrained_is_tolerated(model, tok):
    out = generate(model, tok, n=4, size=16, max_tokens=50, seed=0, constrained=False)
    for s in out:
        assert s.image.shape == (16, 16, 3) and len(s.tokens) <= 50
        assert 0 <= s.valid_mcus <= s.total_mcus


def test_complete_keeps_the_prompt(model, tok):
    imgs = samples.photo_paths()[:3]
    out = complete(model, tok, imgs, rows=1, size=32, max_tokens=1500, seed=1)
    for img, s in zip(imgs, out):
        prompt = prompt_stream(codec.encode(img, size=32), 1, 32)
        assert s.data.startswith(prompt) and s.clean
        ref = codec.decode(codec.encode(img, size=32))
        # the first row of MCUs (minus the chroma-upsampling seam) is the original's
        np.testing.assert_array_equal(s.image[:15], ref[:15])


def test_prompt_stream_rows():
    s = codec.encode(samples.photo_path("coffee"), size=64)
    assert prompt_stream(s, 0, 64) == s[:59]
    p = prompt_stream(s, 2, 64)
    assert p.endswith(b"\xff\xd7")  # 8 MCUs done: the 8th marker is RST7
    assert p.count(b"\xff\xd0") == 1
    with pytest.raises(ValueError):
        prompt_stream(s, 4, 64)


def test_clean_stream():
    assert clean_stream(b"junk\xff\xd8abc\xff\xd9more\xff\xd9") == b"\xff\xd8abc\xff\xd9"
    assert clean_stream(b"\xff\xd8abc") == b"\xff\xd8abc"
    assert clean_stream(b"no soi") == b""


def test_sample_logits_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9], [3.0, 0.0, 0.0, 0.0]])
    assert sample_logits(logits, temperature=0).tolist() == [1, 0]
    for _ in range(20):
        assert sample_logits(logits, top_k=1, generator=g).tolist() == [1, 0]
        assert sample_logits(logits, top_k=None, top_p=0.01, generator=g).tolist() == [1, 0]
        assert sample_logits(logits, top_k=2, top_p=None, generator=g)[0].item() in (1, 3)
    masked = logits.clone()
    masked[:, 1] = float("-inf")
    for _ in range(20):
        assert sample_logits(masked, generator=g)[0].item() != 1


def test_bad_arguments(model, tok):
    with pytest.raises(ValueError):
        generate(model, tok, n=0)
    with pytest.raises(ValueError):
        generate(model, tok, n=1, size=16, temperature=-1)
    with pytest.raises(ValueError):
        generate(model, tok, n=1, size=16, top_p=1.5)
    with pytest.raises(ValueError):
        generate(model, tok, n=1, size=100)
    with pytest.raises(ValueError):
        generate(model, tok, n=1, size=16, max_tokens=0)
    with pytest.raises(ValueError, match="prompt 0"):
        generate(model, tok, n=1, size=16, prompt=b"\xff\xd8garbage", max_tokens=5)


def test_sampling_settings_are_keyword_only_and_merged_in_one_place():
    """SamplingSettings: keywords only (a field added mid-class cannot shift the others), the
    record of a model fills the options not given, the defaults the rest; the samplers take
    the same keywords (an unknown one is a TypeError naming it)."""
    from jpeglm.inference.settings import RECORDED, SamplingSettings

    with pytest.raises(TypeError):
        SamplingSettings(0.5)  # type: ignore[misc]
    d = SamplingSettings()
    s = SamplingSettings.merged({"temperature": 0.4, "top_k": 7, "ignored": 1}, top_k=3, seed=None)
    assert (s.temperature, s.top_k, s.top_p, s.seed) == (0.4, 3, d.top_p, None)
    assert s.record() == {"temperature": 0.4, "top_k": 3, "top_p": d.top_p}
    assert set(s.record()) == set(RECORDED)
    assert SamplingSettings.of(s, top_p=0.5).top_p == 0.5 and SamplingSettings.of(None) == d
    with pytest.raises(TypeError, match="tempreature"):
        SamplingSettings.of(None, tempreature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings.merged({"top_p": 2.0})
