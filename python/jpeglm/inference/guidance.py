"""Class-conditional sampling and classifier-free guidance (issue 33).

A class-conditional model's prompt is ``[BOS, COND] + encode(prompt bytes)`` (the token layout
of :class:`jpeglm.conditioning.Conditioning`): COND is a prompt token, never stream bytes, so the
grammar follows the bytes alone. :func:`plan_conditions` turns the samplers' ``labels`` /
``cfg`` / ``conditioning`` into each prompt's COND id and a :class:`Guidance`, refusing bad input
with one ``ValueError`` line.

With a guidance scale ``s != 1`` the loop (:func:`jpeglm.inference.loop._run`) runs each batch
of ``B`` conditional rows beside ``B`` null twins (COND = the null id) in one forward of ``2B``
rows (prefill and KV cache for both halves); the token drawn for a row comes from the mixed
logits ``u + s * (c - u)`` (:meth:`Guidance.mix`, fp32), which the grammar then masks, and is
appended to both halves. ``s = 1`` is plain conditional sampling: no null half at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from jpeglm.conditioning import Conditioning
from jpeglm.inference.settings import show

__all__ = ["Blocks", "Guidance", "check_cfg", "plan_conditions", "resolve_labels"]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance in the loop: the scale ``s`` and the null COND id."""

    scale: float
    null_id: int

    def pair(self, prompts: Sequence[list[int]]) -> list[list[int]]:
        """The ``2B`` rows of a guided batch: the ``B`` conditional prompts (``[BOS, COND,
        ...]``), then their null twins (COND replaced by the null id)."""
        return [*prompts, *([p[0], self.null_id, *p[2:]] for p in prompts)]

    def mix(self, logits: torch.Tensor, vocab: int) -> torch.Tensor:
        """``(B, vocab)`` fp32 guided logits ``u + s * (c - u)`` from a guided batch's ``(2B,
        width)`` logits: ``c`` the first ``B`` rows (conditional), ``u`` their null twins,
        both cut to the tokenizer's ``vocab`` ids (COND ids are never sampled)."""
        b = logits.shape[0] // 2
        c = logits[:b, :vocab].float()
        u = logits[b:, :vocab].float()
        return u + self.scale * (c - u)


class Blocks(Sequence):
    """``values[0]`` ``n`` times, then ``values[1]`` ``n`` times, ...: each prompt's COND id
    made lazily (``n`` may be 10**9 samples per label)."""

    def __init__(self, values: Sequence[int], n: int) -> None:
        self.values, self.n = list(values), n

    def __len__(self) -> int:
        return len(self.values) * self.n

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.values[(i % len(self)) // self.n]


def check_cfg(cfg: object) -> float:
    """A guidance scale: a finite number ``>= 0`` (1 = off, 0 = the null class alone)."""
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number >= 0 (1 = no guidance), got {show(cfg)}")
    if cfg < 0:
        raise ValueError(f"cfg must be >= 0 (1 = no guidance), got {cfg}")
    return float(cfg)


def resolve_labels(conditioning: Conditioning, labels: Sequence[str] | str) -> list[str]:
    """The class names ``labels`` give (``"all"``: every class, in order); an unknown one is a
    ``ValueError`` listing the classes."""
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, Sequence) or not labels:
        raise ValueError("labels must name at least one class (or 'all')")
    names: list[str] = []
    for name in labels:
        if not isinstance(name, str):
            raise ValueError(f"a label must be a class name (str), got {show(name)}")
        if name == "all":
            names.extend(conditioning.names)
        else:
            conditioning.id_of(name)  # ValueError naming the classes
            names.append(name)
    return names


def plan_conditions(
    model, tokenizer, conditioning: Conditioning | None, labels: Sequence[str] | str | None,
    cfg: float | None,
) -> tuple[list[str] | None, Guidance | None]:  # fmt: skip
    """The class names to sample (``None``: no labels) and the guidance (``None``: none), or one
    ``ValueError`` line: labels without a class-conditional model, ``cfg`` without labels, a
    bad ``cfg``, an unknown label, a conditioning that does not fit the tokenizer or the model.
    ``cfg`` defaults to the conditioning's recorded ``cfg``; 1 is no guidance."""
    if cfg is not None:
        cfg = check_cfg(cfg)
        if labels is None:
            raise ValueError("cfg needs labels: guidance mixes a class's logits with the null "
                             "class's")  # fmt: skip
    if conditioning is None:
        if labels is not None:
            raise ValueError("labels need a class-conditional model: this one has no "
                             "conditioning (its record has none)")  # fmt: skip
        return None, None
    if not isinstance(conditioning, Conditioning):
        raise ValueError(f"conditioning must be a Conditioning, got {show(conditioning)}")
    if conditioning.base != tokenizer.vocab_size:
        raise ValueError(f"the conditioning's classes start at id {conditioning.base}, but the "
                         f"tokenizer has {tokenizer.vocab_size} ids")  # fmt: skip
    width = model.args.vocab_size
    if width < conditioning.vocab_size:
        raise ValueError(f"the model's vocabulary ({width}) has no room for the "
                         f"{conditioning.classes} classes and null id (needs "
                         f"{conditioning.vocab_size})")  # fmt: skip
    if labels is None:  # a conditional model without labels: the null class, unguided
        return None, None
    names = resolve_labels(conditioning, labels)
    scale = conditioning.cfg if cfg is None else cfg
    return names, (None if scale == 1 else Guidance(scale, conditioning.null_id))
