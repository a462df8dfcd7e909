"""The sampler's draw of one token per row: temperature, top-k and top-p filters on the logits'
device, then the exponential race (an exact sample without a host sync), with the draws of a
position seeded by (seed, batch, position) alone. Used by :mod:`jpeglm.inference.loop`."""

from __future__ import annotations

import torch

from jpeglm.inference.settings import SamplingSettings

__all__ = ["sample_logits"]


def _filter_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (float32, on the logits' device)."""
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the first past top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(logits, dim=-1)


def _sample(
    logits: torch.Tensor,
    noise: torch.Tensor | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> torch.Tensor:
    """One id per row, on the device, no host sync: ``argmax(probs / noise)`` with ``noise``
    standard-exponential draws (the exponential race: an exact sample of ``probs``, as in
    gpt-fast's ``multinomial_sample_one_no_sync``); ``temperature == 0`` is greedy."""
    if temperature == 0 or noise is None:
        return logits.argmax(dim=-1)
    probs = _filter_probs(logits, temperature, top_k, top_p)
    return torch.argmax(probs / noise, dim=-1)


_DEFAULTS = SamplingSettings()


def sample_logits(
    logits: torch.Tensor,
    temperature: float = _DEFAULTS.temperature,
    top_k: int | None = _DEFAULTS.top_k,
    top_p: float | None = _DEFAULTS.top_p,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one id per row of ``logits`` (batch, vocab) after temperature, top-k, top-p.

    ``temperature == 0`` is greedy. Masked entries should be ``-inf`` already. Sampling is
    the exponential race (no host sync), with draws from ``generator``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    noise.exponential_(1, generator=generator)
    return _sample(logits, noise, temperature, top_k, top_p)


def _position_seed(seed: int, chunk: int, pos: int) -> int:
    """The generator seed of the draws for position ``pos`` of batch ``chunk``: draws depend
    on (seed, chunk, position) only, so skipping forced positions changes nothing else."""
    x = seed * 0x9E3779B97F4A7C15 + chunk * 0xBF58476D1CE4E5B9 + pos * 0x94D049BB133111EB
    x &= (1 << 64) - 1
    x ^= x >> 31
    return x & ((1 << 63) - 1)
