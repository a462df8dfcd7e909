"""The sampler's options: :class:`SamplingSettings` (temperature, top-k, top-p, limits, seed,
batching, grammar, compile, weight format, jump-forward), checked once with one
``ValueError`` line naming a bad option, and :func:`check_device`. Used by
:mod:`jpeglm.inference.loop`, :mod:`jpeglm.inference.sample` and the CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from jpeglm.inference.decode_kernels import INFERENCE_DTYPES

__all__ = ["RECORDED", "SamplingSettings", "check_device", "positive_int", "show", "is_int"]


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: object, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not is_int(value) or value <= 0:  # type: ignore[operator]
        allowed = "a positive integer or None" if optional else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {show(value)}")
    return int(value)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """The sampling options of :func:`jpeglm.inference.sample.generate`,
    :func:`jpeglm.inference.sample.complete`, :func:`jpeglm.inference.loop.generate_tokens` and
    the clip samplers of :mod:`jpeglm.video.sample`, from the command line down to the sampling
    loop: keyword-only, the defaults written here once, checked once on construction (one
    ``ValueError`` line naming the bad option) and normalised to plain Python numbers. The
    samplers take these fields as keyword arguments (``**options``), or ``settings=``."""

    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 0.9
    max_tokens: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    constrained: bool = True
    compile: bool = False
    dtype: str = "fp32"
    jump_forward: bool = True

    @classmethod
    def of(cls, settings: SamplingSettings | None = None, **options: Any) -> SamplingSettings:
        """``settings`` with ``options`` replaced (a ``TypeError`` names an unknown option),
        or new settings from ``options`` alone: how every sampler reads its keywords."""
        return cls(**options) if settings is None else replace(settings, **options)

    @classmethod
    def merged(cls, record: dict | None, **given: Any) -> SamplingSettings:
        """The settings a model is sampled with: the options ``given`` (``None`` = not given),
        else the model's recorded ones (its ``jpeglm.json`` ``sampling``: temperature, top-k,
        top-p), else the defaults. The one place a record meets the command line."""
        recorded = {k: v for k, v in (record or {}).items() if k in RECORDED}
        chosen = {k: v for k, v in given.items() if v is not None}
        return cls(**{**recorded, **chosen})

    def record(self) -> dict[str, Any]:
        """The settings a model's ``jpeglm.json`` records (``sampling``)."""
        return {k: getattr(self, k) for k in RECORDED}

    def __post_init__(self) -> None:
        """Refuse a bad option with one ``ValueError`` line naming it, before any work."""
        temperature, top_k, top_p = self.temperature, self.top_k, self.top_p
        max_tokens, seed, batch_size = self.max_tokens, self.seed, self.batch_size
        dtype = self.dtype
        constrained, compile, jump_forward = self.constrained, self.compile, self.jump_forward
        real = (int, float, np.integer, np.floating)
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, real):
            raise ValueError(f"temperature must be a number >= 0, got {show(temperature)}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and (not is_int(top_k) or top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off) or None, got {show(top_k)}")
        if top_p is not None:
            if isinstance(top_p, (bool, np.bool_)) or not isinstance(top_p, real):
                raise ValueError(f"top_p must be a number in (0, 1] or None, got {show(top_p)}")
            if not 0 < top_p <= 1:  # NaN fails too
                raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        max_tokens = positive_int("max_tokens", max_tokens, optional=True)
        batch_size = positive_int("batch_size", batch_size, optional=True)
        if seed is not None and (not is_int(seed) or not -(2**63) <= seed < 2**64):
            raise ValueError(
                f"seed must be an integer in -2**63 .. 2**64 - 1 or None, got {show(seed)}"
            )
        flags = (("constrained", constrained), ("compile", compile), ("jump_forward", jump_forward))
        for name, value in flags:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {show(value)}")
        if not isinstance(dtype, str) or dtype not in INFERENCE_DTYPES:
            allowed = ", ".join(INFERENCE_DTYPES)
            raise ValueError(f"dtype must be one of {allowed}, got {show(dtype)}")
        plain = {
            "temperature": float(temperature),
            "top_k": None if top_k is None else int(top_k),
            "top_p": None if top_p is None else float(top_p),
            "max_tokens": max_tokens,
            "seed": None if seed is None else int(seed),
            "batch_size": batch_size,
            "constrained": bool(constrained),
            "compile": bool(compile),
            "jump_forward": bool(jump_forward),
        }
        for name, value in plain.items():
            object.__setattr__(self, name, value)


#: the options a model's record (``jpeglm.json``) keeps: its recommended sampling
RECORDED = ("temperature", "top_k", "top_p")


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
                f"unknown device {show(device)} (expected cpu, cuda, cuda:N, mps, ...)"
            ) from None
    else:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {show(device)}")
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ValueError(f"device {show(device)}: there is one cpu device (cpu or cpu:0)")
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
        raise ValueError(f"device {show(device)}: no {dev.type} device is available here")
    if dev.index is not None and dev.index >= count:
        raise ValueError(
            f"device {show(device)}: only {count} {dev.type} device(s) visible "
            f"({dev.type}:0..{dev.type}:{count - 1})"
        )
    return dev
