"""Sampling images from a JPEG-LM: unconditional generation and prefix completion.

A sample is BOS + a canonical stream. ``generate`` starts from BOS alone; ``complete`` starts
from BOS + the canonical stream of an image cut after its first ``rows`` rows of MCUs (the
restart markers tell where rows end), as in the published inference code. The tokens come
from the sampling loop of :mod:`jpeglm.inference.loop`. With ``constrained=True`` (the
default) every sample decodes; without it, samples are decoded tolerantly and may be partly
grey.

A class-conditional model (a :class:`~jpeglm.conditioning.Conditioning`) samples the classes
named by ``labels``, guided by ``cfg`` (:mod:`jpeglm.inference.guidance`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from jpeglm import codec
from jpeglm.conditioning import Conditioning
from jpeglm.grammar import ScanAutomaton
from jpeglm.inference.guidance import Blocks, Guidance, plan_conditions
from jpeglm.inference.loop import _run_batches, repeat_prompt
from jpeglm.inference.settings import SamplingSettings, is_int, positive_int, show

__all__ = [
    "Sample", "clean_stream", "complete", "default_rows", "fraction_rows", "generate",
    "prompt_stream",
]  # fmt: skip


@dataclass
class Sample:
    """One generated image."""

    tokens: list[int]  #: generated token ids (prompt excluded)
    data: bytes  #: the cleaned canonical stream (SOI .. EOI), prompt included
    image: np.ndarray  #: (size, size, 3) uint8, tolerant decode (grey where invalid)
    clean: bool  #: decoded with every MCU valid
    valid_mcus: int
    total_mcus: int
    label: str | None = None  #: the class sampled (a class-conditional model's ``labels``)


def prompt_stream(stream: bytes, rows: int, size: int = 256) -> bytes:
    """The canonical ``stream`` cut after its first ``rows`` rows of MCUs (just after the
    restart marker that ends row ``rows``); ``rows=0`` keeps only the header."""
    per_row = size // 16
    if not 0 <= rows < size // 16:
        raise ValueError(f"rows must be in 0..{size // 16 - 1} for size {size}, got {rows}")
    off = codec.header(stream)["scan_offset"]
    if rows == 0:
        return stream[:off]
    need, seen, i = rows * per_row, 0, off
    while i < len(stream) - 1:
        if stream[i] == 0xFF and 0xD0 <= stream[i + 1] <= 0xD7:
            seen += 1
            if seen == need:
                return stream[: i + 2]
            i += 2
        else:
            i += 1
    raise ValueError("stream has fewer restart markers than the requested rows")


def default_rows(size: int) -> int:
    """The prompt rows when none are given: half the image's rows of MCUs, at least 1 (0 for a
    one-row 16 px image: a prompt of the header alone); 8 at 256 px."""
    mcu_rows = codec.check_size(size) // 16
    return min(max(1, mcu_rows // 2), mcu_rows - 1)


def fraction_rows(fraction: float, size: int = 256) -> int:
    """The prompt rows of the paper's protocol at ``fraction`` (0.25, 0.5, 0.75; FFHQ 0.375,
    0.4375): the official inference code cuts the stream after its ``int(32 * fraction)``-th
    ``FFD7`` marker at 256 px (``TOTAL_PATCH_ROWS = 32``: a restart marker after every MCU, so
    an ``FFD7`` after every 8 MCUs), here ``int(total_mcus / 8 * fraction)`` at any size. At
    256 px that is ``--rows 4 / 8 / 12`` for 0.25 / 0.5 / 0.75. A cut that does not fall at
    the end of a row of MCUs (``0.3`` at 256 px: 72 MCUs, 4.5 rows), or that keeps no marker
    at all (``0.25`` at 64 px), is refused (ValueError) rather than moved."""
    size = codec.check_size(size)
    real = (int, float, np.integer, np.floating)
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, real):
        raise ValueError(f"fraction must be a number in (0, 1), got {show(fraction)}")
    if not 0 < fraction < 1:  # NaN fails too
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    per_row = size // 16
    markers = int(per_row * per_row / 8 * float(fraction))  # the official int(32 * ratio)
    if markers == 0:
        raise ValueError(
            f"fraction {fraction} keeps no FFD7 marker at {size} px ({per_row * per_row} MCUs, "
            "one FFD7 after every 8): give rows instead"
        )
    mcus = 8 * markers
    if mcus % per_row:
        raise ValueError(
            f"fraction {fraction} at {size} px cuts after {mcus} MCUs, inside row "
            f"{mcus // per_row + 1} of {per_row} MCUs: give rows instead"
        )
    return mcus // per_row


def clean_stream(data: bytes) -> bytes:
    """The first SOI .. EOI span of ``data`` (or from SOI to the end when EOI is missing), as
    the official code cuts generations; empty when there is no SOI."""
    start = data.find(b"\xff\xd8")
    if start < 0:
        return b""
    end = data.find(b"\xff\xd9", start + 2)
    return data[start : end + 2] if end >= 0 else data[start:]


def _finish(tokenizer, prompt: bytes, tokens: list[int], size: int, quality: int) -> Sample:
    data = clean_stream(prompt + tokenizer.decode(tokens))
    r = codec.decode(data, tolerant=True, quality=quality, size=size)
    if r.image.shape != (size, size, 3):  # a header for another size: show grey, not garbage
        r = codec.decode(b"", tolerant=True, quality=quality, size=size)
    return Sample(tokens, data, r.image, r.clean, r.valid_mcus, r.total_mcus)


def _generate_prompts(
    model,
    tokenizer,
    prompt_bytes: Sequence[bytes],
    size: int,
    quality: int,
    opts: SamplingSettings,
    stats: dict | None = None,
    on_sample: Callable[[int, Sample], None] | None = None,
    conds: Sequence[int] | None = None,
    guidance: Guidance | None = None,
    names: Sequence[str] | None = None,
) -> list[Sample]:
    """``conds``: each prompt's COND id (a class-conditional model), ``names`` its label."""
    size = codec.check_size(size)
    quality = codec.check_quality(quality)

    def finish(i: int, toks: list[int]) -> Sample:
        s = _finish(tokenizer, prompt_bytes[i], toks, size, quality)
        s.label = None if names is None else names[i]
        return s

    kw: dict[str, Any] = dict(conds=conds, guidance=guidance)
    if on_sample is not None:  # each sample handed on as its batch finishes; none kept
        _run_batches(model, tokenizer, prompt_bytes, size, opts, stats,
                     on_result=lambda i, toks: on_sample(i, finish(i, toks)), **kw)  # fmt: skip
        return []
    new = _run_batches(model, tokenizer, prompt_bytes, size, opts, stats, **kw)
    return [finish(i, toks) for i, toks in enumerate(new)]


def generate(
    model,
    tokenizer,
    n: int = 1,
    size: int = 256,
    prompt: bytes | None = None,
    *,
    quality: int = 25,
    settings: SamplingSettings | None = None,
    stats: dict | None = None,
    on_sample: Callable[[int, Sample], None] | None = None,
    labels: Sequence[str] | None = None,
    cfg: float | None = None,
    conditioning: Conditioning | None = None,
    **options: Any,
) -> list[Sample]:
    """``n`` unconditional samples (or continuations of the raw ``prompt`` bytes).

    A class-conditional model (``conditioning``: its :class:`~jpeglm.conditioning.Conditioning`,
    :attr:`jpeglm.checkpoint.load.LoadedModel.conditioning`): ``n`` samples of each class in
    ``labels`` (``"all"``: every class), label after label, each :class:`Sample` naming its
    ``label``; without ``labels``, ``n`` samples of the null class. ``cfg``: the guidance scale
    (default the conditioning's recorded ``cfg``; 1 = none, no null rows run): the logits drawn
    from are ``u + s * (c - u)`` of the class's and the null class's. Labels without a
    conditioning, ``cfg`` without labels, ``cfg < 0`` or an unknown label: ``ValueError``.

    ``options``: the sampling options, keywords of :class:`SamplingSettings`
    (``temperature``, ``top_k``, ``top_p``, ``max_tokens``, ``seed``,
    ``batch_size``, ``constrained``, ``compile``, ``dtype``, ``jump_forward``; defaults there),
    or ``settings`` (which ``options`` then override).

    ``on_sample``: called with each sample's index and :class:`Sample` as its batch finishes
    (to write it at once: an interrupted run keeps what was made); nothing is kept and ``[]``
    is returned, so ``n`` may be as large as the caller's patience.

    ``compile``: ``torch.compile(fullgraph=True)`` the one-token decode step (CUDA graphs on
    GPU); pays off for long generations, costs a compilation first (one graph per attention
    length bucket, :data:`jpeglm.inference.loop.KV_BUCKETS`). ``dtype``: the weights used for
    sampling -- ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"`` (weight-only, per-channel
    scales, bf16 activations); see :func:`jpeglm.inference.loop.prepare_for_sampling`.
    ``jump_forward``: feed runs of tokens the grammar forces (header, restart markers, EOI) in
    one step (same samples). ``stats``: a dict that receives ``forwards`` (model calls) and
    ``forced`` (jumped tokens).
    """
    n = positive_int("n", n)
    opts = SamplingSettings.of(settings, **options)
    names, guidance = plan_conditions(model, tokenizer, conditioning, labels, cfg)
    if prompt is not None and not isinstance(prompt, (bytes, bytearray, memoryview)):
        raise ValueError(f"prompt must be bytes or None, got {type(prompt).__name__}")
    prompt = bytes(prompt or b"")
    if not prompt and tokenizer.dummy_prefix is not None:
        # sentencepiece's dummy prefix merges with a stream's first bytes ("▁" + SOI APP0 ...
        # in a model trained on JPEGs): start from the canonical header, encoded as every
        # training image was, so the model sees the piece it learned after BOS
        prompt = ScanAutomaton(codec.check_size(size)).header
    if conditioning is None:
        prompts = repeat_prompt(prompt, n)
        return _generate_prompts(model, tokenizer, prompts, size, quality, opts, stats, on_sample)
    classes = names or [None]  # no labels: the null class
    ids = [conditioning.null_id if c is None else conditioning.id_of(c) for c in classes]
    return _generate_prompts(model, tokenizer, repeat_prompt(prompt, n * len(ids)), size,
                             quality, opts, stats, on_sample, Blocks(ids, n), guidance,
                             Blocks(classes, n))  # type: ignore[arg-type]  # fmt: skip


def complete(
    model,
    tokenizer,
    images: Sequence[codec.ImageLike],
    rows: int | None = None,
    size: int = 256,
    quality: int = 25,
    *,
    fraction: float | None = None,
    settings: SamplingSettings | None = None,
    stats: dict | None = None,
    on_sample: Callable[[int, Sample], None] | None = None,
    exif_transpose: bool = False,
    labels: Sequence[str] | None = None,
    cfg: float | None = None,
    conditioning: Conditioning | None = None,
    **options: Any,
) -> list[Sample]:
    """Complete each image from its first ``rows`` rows of MCUs (default:
    :func:`default_rows`, 8 at 256 px), or from the paper's ``fraction`` of them
    (:func:`fraction_rows`: the official prompt; not both). Sampling ``options`` /
    ``settings``, ``stats`` and ``on_sample`` as :func:`generate`'s (the defaults are the
    official inference settings: temperature 1.0, top-k 50, top-p 0.9); ``exif_transpose`` as
    :func:`jpeglm.codec.prepare`'s. ``labels``, ``cfg``, ``conditioning``: as :func:`generate`'s,
    one label for every image or one per image."""
    opts = SamplingSettings.of(settings, **options)
    names, guidance = plan_conditions(model, tokenizer, conditioning, labels, cfg)
    size, quality = codec.check_size(size), codec.check_quality(quality)
    if fraction is not None:
        if rows is not None:
            raise ValueError("give rows or fraction, not both")
        rows = fraction_rows(fraction, size)
    elif rows is None:
        rows = default_rows(size)
    if not is_int(rows) or not 0 <= rows < size // 16:
        raise ValueError(f"rows must be an integer in 0..{size // 16 - 1}, got {show(rows)}")
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        raise ValueError("complete expects a sequence of images (a list of one for one image)")
    streams = codec.encode_batch(list(images), quality=quality, size=size,
                                 exif_transpose=exif_transpose)  # fmt: skip
    prompts = [prompt_stream(s, rows, size) for s in streams]
    if conditioning is None:
        return _generate_prompts(model, tokenizer, prompts, size, quality, opts, stats, on_sample)
    per = names or [None]  # no labels: the null class
    if len(per) not in (1, len(prompts)):
        raise ValueError(f"give one label for every image or one per image: {len(prompts)} "
                         f"images, {len(per)} labels")  # fmt: skip
    per = per * len(prompts) if len(per) == 1 else per
    ids = [conditioning.null_id if c is None else conditioning.id_of(c) for c in per]
    return _generate_prompts(model, tokenizer, prompts, size, quality, opts, stats, on_sample,
                             ids, guidance, per)  # type: ignore[arg-type]  # fmt: skip
