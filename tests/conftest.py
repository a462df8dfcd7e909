"""Fixtures shared by the test modules: corpora, a tokenizer and a tiny model built once per
session instead of once per file."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


def _triton_interpreter_without_cuda() -> None:
    """TRITON_INTERPRET=1 where there is no GPU, before any test module is collected: Triton
    reads it once, when it is first imported, and any module collected before
    test_kernels.py that imports it (an ``importorskip("triton")``) would otherwise fix the
    compiled mode for the whole session (every kernel test then fails with "Cannot call
    @triton.jit'd outside of the scope of a kernel")."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_triton_interpreter_without_cuda()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small prepared dataset shared by the trainer tests (see jpeglm_trainutil.make_world)."""
    pytest.importorskip("torch")
    from jpeglm_trainutil import make_world

    return make_world(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def photo_streams() -> tuple[bytes, ...]:
    """The canonical JPEG streams of the bundled photos (``codec.encode`` defaults: 256x256,
    quality 25), in ``samples.PHOTOS`` order. A tuple: shared, so not to be changed."""
    from jpeglm import codec
    from jpeglm.data import bundled as samples

    return tuple(codec.encode(p) for p in samples.photo_paths())


@pytest.fixture(scope="session")
def small_tokenizer(photo_streams):
    """A tokenizer of JPEG-LM's size, 320 ids (256 bytes + 61 merges + ``<s>``, ``</s>``,
    ``<pad>`` at 317..319), trained on :func:`photo_streams` (immutable: safe to share)."""
    from jpeglm.tokenizer import Tokenizer

    return Tokenizer.train(photo_streams, 320, progress=False)


@pytest.fixture(scope="session")
def make_tiny_model() -> Callable[..., Any]:
    """A factory of ``tiny`` Transformers in eval mode, seeded (the same weights for the same
    arguments): ``make_tiny_model(vocab_size, max_seq_len=2048, seed=0, backend=None)``. A new
    model per call, since tests change models (inference settings, dtypes)."""
    pytest.importorskip("torch")

    def make(vocab_size: int, max_seq_len: int = 2048, seed: int = 0, backend: Any = None) -> Any:
        import torch

        from jpeglm.model import ModelArgs, Transformer

        torch.manual_seed(seed)
        args = ModelArgs.from_name("tiny", vocab_size=vocab_size, max_seq_len=max_seq_len)
        return Transformer(args, backend=backend).eval()

    return make
