"""Evaluation metrics and the completion report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.eval.metrics import completion_scores, image_grid, psnr, repeat_last_row_baseline, ssim


def test_psnr_ssim_basics():
    a = codec.prepare(samples.photo_path("astronaut"), 64)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-20, 21, a.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    mse = np.mean((a.astype(float) - noisy) ** 2)
    assert psnr(a, noisy) == pytest.approx(10 * math.log10(255**2 / mse))
    assert 0 < ssim(a, noisy) < 0.95
    assert ssim(a, noisy) > ssim(a, np.zeros_like(a))
    with pytest.raises(ValueError):
        psnr(a, a[:10])


def test_baseline_and_scores():
    img = codec.prepare(samples.photo_path("coffee"), 64)
    base = repeat_last_row_baseline(img, 2)
    np.testing.assert_array_equal(base[:32], img[:32])
    np.testing.assert_array_equal(base[32:48], img[16:32])
    np.testing.assert_array_equal(base[48:64], img[16:32])
    s = completion_scores([img], [img], 2)
    assert s["psnr"] == math.inf and s["ssim"] == pytest.approx(1.0)
    assert s["baseline_psnr"] < 40
    with pytest.raises(ValueError):
        repeat_last_row_baseline(img, 0)
    with pytest.raises(ValueError):
        completion_scores([], [], 1)


def test_grid_shape():
    a = np.zeros((16, 16, 3), np.uint8)
    g = image_grid([[a, a, a], [a, a, a]], ["x", "y", "z"])
    assert g.shape == (14 + 2 * 18, 3 * 18, 3)


def test_bits_per_byte_and_report(tmp_path):
    torch = pytest.importorskip("torch")
    from jpeglm.eval.metrics import bits_per_byte, evaluate_completion
    from jpeglm.model import ModelArgs, Transformer
    from jpeglm.tokenizer import Tokenizer

    streams = [codec.encode(p, size=32) for p in samples.photo_paths()]
    tok = Tokenizer.train(streams, vocab_size=290, progress=False)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=1024))
    plain = bits_per_byte(model, tok, streams[:3], size=32)
    con = bits_per_byte(model, tok, streams[:3], constrained=True, size=32)
    assert 0 < con["bits_per_byte"] < plain["bits_per_byte"]  # renormalising can only help
    # an untrained model is near uniform: about log2(vocab) bits per token
    assert abs(plain["bits_per_token"] - math.log2(tok.vocab_size)) < 1.0
    res = evaluate_completion(
        model, tok, samples.photo_paths()[:2], tmp_path, rows=1, size=32, max_tokens=1000
    )
    assert res["decodable"] == 1.0 and res["images"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == 1
    assert (tmp_path / "grid.png").stat().st_size > 0
