"""Sampling AVC-LM clips from a model: :func:`complete` continues clips after their first frames
(as the paper evaluates AVC-LM: 10 frames of prompt, 5 generated), :func:`generate` writes
unconditional clips; both sample unconstrained (H.264 has no scan grammar here) and decode
tolerantly (:func:`jpeglm.video.codec.decode`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jpeglm.video.codec import FRAMES, HEIGHT, WIDTH, decode, encode, prompt_stream

__all__ = ["ClipSample", "complete", "generate"]


@dataclass
class ClipSample:
    """One generated clip: the stream (prompt included), its tolerant decode and counts."""

    tokens: list[int]  #: generated token ids (prompt excluded)
    data: bytes  #: the Annex-B stream, prompt included
    frames: np.ndarray  #: (T, H, W, 3) uint8
    valid_frames: int
    total_frames: int


def complete(
    model,
    tokenizer,
    clips: list,
    *,
    frames: int = 10,
    total_frames: int = FRAMES,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    on_sample: Callable[[int, ClipSample], None] | None = None,
    **sampling: Any,
) -> list[ClipSample]:
    """Continue each clip (a canonical stream, or frames to :func:`encode`) after its first
    ``frames`` frames, as the paper evaluates AVC-LM (10 frames of prompt, 5 generated):
    unconstrained sampling (H.264 has no scan grammar here), decoded tolerantly into
    ``total_frames`` frames. ``sampling``: as :func:`generate`'s; ``on_sample`` as there."""
    streams = [c if isinstance(c, (bytes, bytearray)) else encode(np.asarray(c)) for c in clips]
    prompts = [prompt_stream(s, frames) for s in streams]
    return _sample(model, tokenizer, prompts, total_frames, size, sampling, on_sample)


def generate(
    model,
    tokenizer,
    n: int = 1,
    *,
    total_frames: int = FRAMES,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    on_sample: Callable[[int, ClipSample], None] | None = None,
    **sampling: Any,
) -> list[ClipSample]:
    """``n`` unconditional clips (the model writes the parameter sets too). ``sampling``: the
    options of :func:`jpeglm.inference.loop.generate_tokens` (``seed`` defaults to 0).
    ``on_sample``: each clip's index and clip handed to it as its batch finishes, none kept,
    ``[]`` returned (so a caller writes clips as they are made; ``n`` may then be 10**9)."""
    from jpeglm.inference.loop import repeat_prompt

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return _sample(model, tokenizer, repeat_prompt(b"", n), total_frames, size, sampling,
                   on_sample)  # fmt: skip


def _sample(
    model,
    tokenizer,
    prompts: Sequence[bytes],
    total_frames: int,
    size: tuple[int, int],
    sampling: dict[str, Any],
    on_sample: Callable[[int, ClipSample], None] | None = None,
) -> list[ClipSample]:
    from jpeglm.inference.loop import generate_tokens

    def finish(prompt: bytes, toks: list[int]) -> ClipSample:
        data = bytes(prompt) + tokenizer.decode(toks)
        r = decode(data, tolerant=True, frames=total_frames, size=size)
        return ClipSample(toks, data, r.frames, r.valid_frames, r.total_frames)

    if on_sample is not None:

        def done(i: int, toks: list[int]) -> None:
            on_sample(i, finish(prompts[i], toks))

        generate_tokens(model, tokenizer, prompts, **sampling, on_result=done)
        return []
    new = generate_tokens(model, tokenizer, prompts, **sampling)
    return [finish(p, toks) for p, toks in zip(prompts, new)]
