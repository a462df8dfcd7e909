"""The demo's data split and the digit judge that scores its samples (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

from jpeglm import codec
from jpeglm.data import bundled as samples


def test_mnist_split_is_stratified_and_disjoint():
    _, labels = samples.mnist()
    train, held = samples.mnist_split()
    assert len(train) == 4500 and len(held) == 500
    assert not set(train) & set(held)
    assert sorted([*train, *held]) == list(range(len(labels)))
    assert np.bincount(labels[held], minlength=10).tolist() == [50] * 10
    assert np.bincount(labels[train], minlength=10).tolist() == [450] * 10
    # the held-out images are the last of each digit, so a fixed set across runs
    assert held[labels[held] == 9].min() == 4950
    t2, h2 = samples.mnist_split(held_per_digit=10)
    assert len(h2) == 100 and set(h2) <= set(held)
    for bad in (0, 500, -1):
        with pytest.raises(ValueError):
            samples.mnist_split(held_per_digit=bad)


def test_demo_script_uses_the_stratified_split():
    from pathlib import Path

    script = (Path(__file__).parents[1] / "scripts" / "train_demo_checkpoint.sh").read_text()
    assert "mnist_split" in script and "4500" not in script


@pytest.fixture(scope="module")
def judge():
    torch = pytest.importorskip("torch")
    del torch
    from jpeglm.eval import judge as judge_mod

    return judge_mod.default_judge()


def test_judge_passes_real_held_out_digits(judge):
    from jpeglm.eval import judge as judge_mod

    _, labels = samples.mnist()
    _, held = samples.mnist_split()
    real = judge_mod.held_out_digits()
    s = judge.score(real)
    assert s["share"] >= 0.8 and s["distinct"] == 10, s
    p = judge.proba(real)
    assert (p[:, :10].argmax(1) == labels[held]).mean() >= 0.9
    # raw 28x28 digits are round-tripped to 32x32 first: the same verdicts
    digits, _ = samples.mnist()
    assert np.allclose(judge.proba(digits[held[:20]]), p[:20], atol=1e-5)


def test_judge_rejects_noise_grey_and_garbage(judge):
    rng = np.random.default_rng(2026)  # a seed and generators the judge never trained on
    noise = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    grey = np.stack([np.full((32, 32, 3), v, np.uint8) for v in range(0, 256, 8)])
    coarse = np.kron(rng.integers(0, 256, (64, 4, 4)), np.ones((8, 8))).astype(np.uint8)
    jpeg = [codec.decode(codec.encode(im, size=32)) for im in [*noise[:32], *coarse[:32]]]
    for name, ims in [("noise", noise), ("grey", grey), ("blocks", coarse), ("jpeg", jpeg)]:
        s = judge.score(ims)
        assert s["share"] <= 0.03, (name, s)


def test_judge_rejects_an_untrained_jpeglm(judge):
    """Grammar-valid JPEGs from a randomly initialised model: decodable garbage."""
    import torch

    from jpeglm.data.bundled import DEMO_CHECKPOINT
    from jpeglm.inference.sample import generate
    from jpeglm.model import ModelArgs, Transformer
    from jpeglm.tokenizer import Tokenizer

    tok = Tokenizer.load(DEMO_CHECKPOINT / "tokenizer.jpeglm")
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=640))
    gen = generate(model.eval(), tok, n=16, size=32, max_tokens=600, seed=0)
    s = judge.score([g.image for g in gen])
    assert s["share"] <= 0.1, s


def test_judge_score_shape(judge):
    s = judge.score(np.zeros((3, 32, 32, 3), np.uint8), threshold=0.5)
    assert set(s) >= {"n", "share", "distinct", "digits", "threshold"} and s["n"] == 3
    with pytest.raises(ValueError):
        judge.score([])
