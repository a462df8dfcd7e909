"""Sampling images from a JPEG-LM: unconditional generation and prefix completion.

A sample is BOS + a canonical stream. ``generate`` starts from BOS alone; ``complete`` starts
from BOS + the canonical stream of an image cut after its first ``rows`` rows of MCUs (the
restart markers tell where rows end), as in the published inference code. Decoding uses the
model's static KV cache: one prefill, then one-token steps, batched, with per-sample stop
at EOS / EOI / ``max_tokens``. Temperature, top-k and top-p filter the logits on the model's
device. With ``constrained=True`` (the default) a native automaton of the canonical scan
masks every token that would make the stream undecodable (:mod:`jpeglm.grammar`), so every
sample decodes; without it, samples are decoded tolerantly and may be partly grey.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from jpeglm import codec
from jpeglm.grammar import TokenConstraint

__all__ = [
    "Sample",
    "check_device",
    "clean_stream",
    "complete",
    "generate",
    "prompt_stream",
    "sample_logits",
]


@dataclass
class Sample:
    """One generated image."""

    tokens: list[int]  #: generated token ids (prompt excluded)
    data: bytes  #: the cleaned canonical stream (SOI .. EOI), prompt included
    image: np.ndarray  #: (size, size, 3) uint8, tolerant decode (grey where invalid)
    clean: bool  #: decoded with every MCU valid
    valid_mcus: int
    total_mcus: int


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


def clean_stream(data: bytes) -> bytes:
    """The first SOI .. EOI span of ``data`` (or from SOI to the end when EOI is missing), as
    the official code cuts generations; empty when there is no SOI."""
    start = data.find(b"\xff\xd8")
    if start < 0:
        return b""
    end = data.find(b"\xff\xd9", start + 2)
    return data[start : end + 2] if end >= 0 else data[start:]


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 0.9,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one id per row of ``logits`` (batch, vocab) after temperature, top-k, top-p.

    ``temperature == 0`` is greedy. Masked entries should be ``-inf`` already.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the first past top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _positive_int(name: str, value: object, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value) or value <= 0:  # type: ignore[operator]
        allowed = "a positive integer or None" if optional else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {_show(value)}")
    return int(value)  # type: ignore[arg-type]


def _check(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_tokens: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    constrained: bool = True,
    compile: bool = False,
) -> tuple[float, int | None, float | None, int | None, int | None, int | None]:
    """Refuse a bad sampling option with one ``ValueError`` line naming it, before any work;
    returns the options as plain Python numbers."""
    real = (int, float, np.integer, np.floating)
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, real):
        raise ValueError(f"temperature must be a number >= 0, got {_show(temperature)}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 = off) or None, got {_show(top_k)}")
    if top_p is not None:
        if isinstance(top_p, (bool, np.bool_)) or not isinstance(top_p, real):
            raise ValueError(f"top_p must be a number in (0, 1] or None, got {_show(top_p)}")
        if not 0 < top_p <= 1:  # NaN fails too
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    max_tokens = _positive_int("max_tokens", max_tokens, optional=True)
    batch_size = _positive_int("batch_size", batch_size, optional=True)
    if seed is not None and (not _is_int(seed) or not -(2**63) <= seed < 2**64):
        raise ValueError(
            f"seed must be an integer in -2**63 .. 2**64 - 1 or None, got {_show(seed)}"
        )
    for name, value in (("constrained", constrained), ("compile", compile)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {_show(value)}")
    return (
        float(temperature),
        None if top_k is None else int(top_k),
        None if top_p is None else float(top_p),
        max_tokens,
        None if seed is None else int(seed),
        batch_size,
    )


def check_device(device: str | torch.device | int) -> torch.device:
    """``device`` as a :class:`torch.device` that exists on this machine, or one ``ValueError``
    line: an unknown name (``"foo"``), ``"cuda"`` without CUDA, ``"cuda:3"`` past the visible
    GPUs, ``"mps"`` without MPS, ``"meta"`` (holds no data). An int is a CUDA ordinal."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, (str, int)) and not isinstance(device, bool):
        try:
            dev = torch.device(device.strip() if isinstance(device, str) else device)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"unknown device {_show(device)} (expected cpu, cuda, cuda:N, mps, ...)"
            ) from None
    else:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {_show(device)}")
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ValueError(f"device {_show(device)}: there is one cpu device (cpu or cpu:0)")
        return dev
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no data: use cpu or cuda")
    if dev.type == "mps":
        available, count = bool(torch.backends.mps.is_available()), 1
    else:
        module = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu, ...
        is_available = getattr(module, "is_available", None)
        available = bool(is_available()) if callable(is_available) else False
        count = int(module.device_count()) if available and hasattr(module, "device_count") else 0
    if not available:
        raise ValueError(f"device {_show(device)}: no {dev.type} device is available here")
    if dev.index is not None and dev.index >= count:
        raise ValueError(
            f"device {_show(device)}: only {count} {dev.type} device(s) visible "
            f"({dev.type}:0..{dev.type}:{count - 1})"
        )
    return dev


@torch.no_grad()
def _run(
    model,
    tokenizer,
    prompts: list[list[int]],
    prompt_bytes: list[bytes],
    size: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_tokens: int,
    generator: torch.Generator,
    constrained: bool,
    compile: bool = False,
) -> list[list[int]]:
    """Generate for a batch of equal-length prompts; returns each sample's new tokens."""
    b, plen = len(prompts), len(prompts[0])
    device = next(model.parameters()).device
    total = min(plen + max_tokens, model.args.max_seq_len)
    model.setup_caches(b, total, device=device)
    eos = tokenizer.eos_id
    fill = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    constraint = None
    if constrained:
        constraint = TokenConstraint.from_tokenizer(tokenizer, size)
        # prompts start after BOS; the grammar follows the bytes
        constraint.start(b, prompts=prompt_bytes)
        mask_np = np.empty((b, constraint.vocab_size), dtype=bool)
    idx = torch.tensor(prompts, dtype=torch.long, device=device)
    logits = model(idx, torch.arange(plen, device=device))[:, -1]
    step = model
    if compile:  # the one-token step has static shapes: compile it (CUDA graphs on GPU)
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        step = torch.compile(model, mode=mode, dynamic=False, fullgraph=False)
    out: list[list[int]] = [[] for _ in range(b)]
    finished = np.zeros(b, dtype=bool)
    pieces = {i: t for t, i in tokenizer.mergeable_ranks.items()}  # id -> bytes (no specials)
    tail = [p[-1:] for p in prompt_bytes]  # the last byte: an EOI may straddle two tokens
    for pos in range(plen, total):
        logits = logits[:, : tokenizer.vocab_size]
        if constraint is not None:
            constraint.mask(mask_np)
            mask = torch.from_numpy(mask_np).to(device)
            logits = logits.masked_fill(~mask, float("-inf"))
        nxt = sample_logits(logits, temperature, top_k, top_p, generator)
        nxt_np = nxt.cpu().numpy()
        nxt_np[finished] = fill
        if constraint is not None:
            active = ~finished
            ok = constraint.advance(np.where(active, nxt_np, eos))
            if not ok[active].all():  # cannot happen: the mask allowed only legal tokens
                raise RuntimeError("constrained sampler produced an illegal token")
        for i in np.flatnonzero(~finished):
            t = int(nxt_np[i])
            if t == eos:
                finished[i] = True
                continue
            out[i].append(t)
            piece = pieces.get(t, b"")
            if piece:
                if b"\xff\xd9" in tail[i] + piece:  # EOI: the stream is complete
                    finished[i] = True
                tail[i] = piece[-1:]
        if finished.all() or pos + 1 >= total:
            break
        logits = step(
            torch.from_numpy(nxt_np).to(device).view(b, 1), torch.tensor([pos], device=device)
        )[:, -1]
    model.clear_caches()
    return out


def _finish(tokenizer, prompt: bytes, tokens: list[int], size: int, quality: int) -> Sample:
    data = clean_stream(prompt + tokenizer.decode(tokens))
    r = codec.decode(data, tolerant=True, quality=quality, size=size)
    if r.image.shape != (size, size, 3):  # a header for another size: show grey, not garbage
        r = codec.decode(b"", tolerant=True, quality=quality, size=size)
    return Sample(tokens, data, r.image, r.clean, r.valid_mcus, r.total_mcus)


def _generate_prompts(
    model,
    tokenizer,
    prompt_bytes: list[bytes],
    size: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_tokens: int | None,
    seed: int | None,
    batch_size: int | None,
    constrained: bool,
    quality: int,
    compile: bool = False,
) -> list[Sample]:
    temperature, top_k, top_p, max_tokens, seed, batch_size = _check(
        temperature, top_k, top_p, max_tokens, seed, batch_size, constrained, compile
    )
    size = codec._check_size(size)
    quality = codec._check_quality(quality)
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError("the tokenizer needs BOS and EOS tokens")
    if max_tokens is None:
        max_tokens = model.args.max_seq_len
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(0 if seed is None else int(seed))
    prompts = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompt_bytes]
    for p in prompts:
        if len(p) >= model.args.max_seq_len:
            raise ValueError(
                f"prompt of {len(p)} tokens leaves no room (max_seq_len {model.args.max_seq_len})"
            )
    batch_size = batch_size or len(prompts)
    results: list[Sample | None] = [None] * len(prompts)
    # Prompts of equal token length share a batch (one KV cache position for all rows).
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    was_training = model.training
    model.eval()
    try:
        for ids in by_len.values():
            for s in range(0, len(ids), batch_size):
                chunk = ids[s : s + batch_size]
                new = _run(
                    model, tokenizer, [prompts[i] for i in chunk], [prompt_bytes[i] for i in chunk],
                    size, temperature, top_k, top_p, max_tokens, generator, constrained,
                    compile,
                )  # fmt: skip
                for i, toks in zip(chunk, new):
                    results[i] = _finish(tokenizer, prompt_bytes[i], toks, size, quality)
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def generate(
    model,
    tokenizer,
    n: int = 1,
    size: int = 256,
    prompt: bytes | None = None,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 0.9,
    max_tokens: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    constrained: bool = True,
    quality: int = 25,
    compile: bool = False,
) -> list[Sample]:
    """``n`` unconditional samples (or continuations of the raw ``prompt`` bytes).

    ``compile``: ``torch.compile`` the one-token decode step (CUDA graphs on GPU); pays off
    for long generations, costs a compilation first.
    """
    n = _positive_int("n", n)
    _check(temperature, top_k, top_p, max_tokens, seed, batch_size, constrained, compile)
    if prompt is not None and not isinstance(prompt, (bytes, bytearray, memoryview)):
        raise ValueError(f"prompt must be bytes or None, got {type(prompt).__name__}")
    prompt = bytes(prompt or b"")
    return _generate_prompts(
        model, tokenizer, [prompt] * n, size, temperature, top_k, top_p, max_tokens,
        seed, batch_size, constrained, quality, compile,
    )  # fmt: skip


def complete(
    model,
    tokenizer,
    images: Sequence[codec.ImageLike],
    rows: int = 8,
    size: int = 256,
    quality: int = 25,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 0.9,
    max_tokens: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    constrained: bool = True,
    compile: bool = False,
) -> list[Sample]:
    """Complete each image from its first ``rows`` rows of MCUs."""
    _check(temperature, top_k, top_p, max_tokens, seed, batch_size, constrained, compile)
    size, quality = codec._check_size(size), codec._check_quality(quality)
    if not _is_int(rows) or not 0 <= rows < size // 16:
        raise ValueError(f"rows must be an integer in 0..{size // 16 - 1}, got {_show(rows)}")
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        raise ValueError("complete expects a sequence of images (a list of one for one image)")
    streams = codec.encode_batch(list(images), quality=quality, size=size)
    prompts = [prompt_stream(s, rows, size) for s in streams]
    return _generate_prompts(
        model, tokenizer, prompts, size, temperature, top_k, top_p, max_tokens, seed,
        batch_size, constrained, quality, compile,
    )  # fmt: skip
