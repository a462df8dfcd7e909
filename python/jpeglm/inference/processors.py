"""The scan grammar behind other decoder stacks: decodable images from ``transformers`` and vLLM.

:class:`ScanLogitsMask` is a per-request callable ``(prompt_ids, output_ids, logits) -> logits``
(vLLM's request-level form, wrapped by :mod:`jpeglm.inference.vllm_processor`);
:class:`JpegLogitsProcessor` is a ``transformers.LogitsProcessor`` for ``model.generate`` that
masks a whole batch with one native call. Both follow the canonical scan with the native
automaton of :mod:`jpeglm.grammar`: the prompt's byte tokens first (leading special tokens such
as BOS or left padding skipped, and a class-conditional model's condition token: an id at or past
the tokenizer's size after BOS, a prompt token, never stream bytes), then every generated token;
a token that would make the stream undecodable gets ``-inf``, and once the stream is complete
(EOI) only EOS is left. Logits wider than the tokenizer (a model vocabulary padded to a multiple
of 64, or grown by the condition ids of :mod:`jpeglm.conditioning`) have the extra ids masked, so
a condition id is never sampled.
The native grammar is built once per (tokenizer, image size) and shared.

If every allowed token already had ``-inf`` (a processor before this one masked them all), the
allowed tokens get logit 0 (uniform among them): a stream stays decodable rather than sampling
from an all ``-inf`` row.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from jpeglm import _core
from jpeglm.codec import check_size

try:  # a subclass of transformers' base class where transformers is installed
    from transformers import LogitsProcessor as _Base
except ImportError:  # pragma: no cover - the package works without transformers
    _Base = object

__all__ = ["BEAMS_REFUSED", "JpegLogitsProcessor", "ScanLogitsMask", "mask_logits", "vocab_for"]

#: The one line :class:`JpegLogitsProcessor` raises for beam search.
BEAMS_REFUSED = (
    "JpegLogitsProcessor: num_beams > 1 is not supported (beam search reorders the rows the "
    "scan automaton follows); sample (do_sample=True) or search greedily with num_beams=1"
)


class _Vocab(NamedTuple):
    scan: Any  # _core.ScanGrammar: prompt bytes are fed through it
    grammar: Any  # _core.TokenGrammar: masks and token steps
    tokens: list[bytes]  # id -> bytes, b"" for special tokens
    eos: int


@functools.lru_cache(maxsize=8)
def _vocab(tokenizer: Any, size: int) -> _Vocab:
    """The native grammar of ``tokenizer``'s vocabulary at ``size`` px (built once: the trie of
    every token is the expensive part)."""
    if tokenizer.eos_id is None:
        raise ValueError("the tokenizer has no EOS token to end a stream with")
    by_id = tokenizer.token_byte_values()
    tokens = [by_id.get(i, b"") for i in range(tokenizer.vocab_size)]
    scan = _core.ScanGrammar(size, size)
    return _Vocab(
        scan, _core.TokenGrammar(scan, tokens, tokenizer.eos_id), tokens, tokenizer.eos_id
    )


def vocab_for(tokenizer: Any, size: int = 256) -> _Vocab:
    """The shared native grammar of ``tokenizer`` at ``size`` px (cached)."""
    return _vocab(tokenizer, check_size(size))


def _prompt_bytes(vocab: _Vocab, ids: Sequence[int], what: str = "the prompt") -> bytes:
    """The stream bytes of prompt ``ids``: leading special tokens (BOS, padding) and condition
    tokens (ids ``>= n``, the tokenizer's size: ``[BOS, COND, ...]`` of a class-conditional
    model) skipped, then byte tokens only (ValueError, one line, otherwise)."""
    n = len(vocab.tokens)
    ids = [int(i) for i in ids]
    k = 0
    while k < len(ids) and not (0 <= ids[k] < n and vocab.tokens[ids[k]]):
        k += 1  # not a byte token: padding, BOS or a condition id (>= n)
    for j in range(k, len(ids)):
        t = ids[j]
        if not 0 <= t < n:
            raise ValueError(f"{what}: token {j} (id {t}) is outside the tokenizer's {n} ids")
        if not vocab.tokens[t]:
            raise ValueError(f"{what}: token {j} (id {t}) is a special token inside the stream")
    return b"".join(vocab.tokens[t] for t in ids[k:])


def _prompt_state(vocab: _Vocab, ids: Sequence[int], what: str = "the prompt") -> Any:
    state = vocab.scan.initial(False)
    data = _prompt_bytes(vocab, ids, what)
    bad = vocab.scan.feed(state, data)
    if bad >= 0:
        raise ValueError(f"{what} is not a canonical stream prefix (byte {bad} of {len(data)})")
    return state


def mask_logits(logits: torch.Tensor, allowed: np.ndarray, inplace: bool = False) -> torch.Tensor:
    """``logits`` (..., V) with ``-inf`` where ``allowed`` (..., n <= V, bool) is False; ids
    ``n..V-1`` (a padded model vocabulary) are masked too. A row whose allowed tokens are all
    ``-inf`` already gets 0 on them (uniform among the allowed)."""
    width, n = logits.shape[-1], allowed.shape[-1]
    if width < n:
        raise ValueError(f"the logits have {width} entries but the tokenizer {n} ids")
    keep = torch.from_numpy(allowed).to(logits.device, non_blocking=True)
    if width > n:
        keep = torch.nn.functional.pad(keep, (0, width - n), value=False)
    none = ~(keep & (logits > float("-inf"))).any(-1, keepdim=True)
    if inplace:
        return logits.masked_fill_(~keep, float("-inf")).masked_fill_(keep & none, 0.0)
    return logits.masked_fill(~keep, float("-inf")).masked_fill(keep & none, 0.0)


class ScanLogitsMask:
    """One request's scan automaton as a callable ``(prompt_ids, output_ids, logits) -> logits``.

    ``logits``: the request's 1-D logits (the model's vocabulary, possibly wider than the
    tokenizer's), masked in place and returned. Incremental: it keeps its automaton state and the
    output ids it consumed, and steps over the new ones only; when ``output_ids`` is not an
    extension of what it saw (or the prompt changed) it re-syncs from the prompt. The prompt's
    leading special tokens are skipped; a prompt that is not a canonical-stream prefix raises
    ValueError. After EOI only EOS is allowed. ``size``: the image's side in px.
    """

    def __init__(self, tokenizer: Any, size: int = 256) -> None:
        self.size = check_size(size)
        self.vocab = vocab_for(tokenizer, self.size)
        self._prompt_ref: Any = None
        self._prompt: tuple[int, ...] | None = None
        self._start: Any = None  # the state after the prompt
        self._state: Any = None
        self._seen: list[int] = []

    @property
    def phase(self) -> str:
        """The automaton's phase (``header``, ``scan``, ..., ``done``); ``idle`` before use."""
        return "idle" if self._state is None else self._state.phase

    def allowed(self, prompt_ids: Sequence[int] | None, output_ids: Sequence[int]) -> np.ndarray:
        """(tokenizer vocab,) bool: the tokens allowed after ``prompt_ids + output_ids``."""
        self._sync(prompt_ids, output_ids)
        return self.vocab.grammar.mask(self._state)

    def __call__(
        self, prompt_ids: Sequence[int] | None, output_ids: Sequence[int], logits: torch.Tensor
    ) -> torch.Tensor:
        if logits.dim() != 1:
            raise ValueError(f"ScanLogitsMask takes one request's 1-D logits, got {logits.dim()}-D")
        return mask_logits(logits, self.allowed(prompt_ids, output_ids), inplace=True)

    def _sync(self, prompt_ids: Sequence[int] | None, output_ids: Sequence[int]) -> None:
        if prompt_ids is not self._prompt_ref or self._prompt is None:
            prompt = tuple(int(i) for i in (prompt_ids if prompt_ids is not None else ()))
            if prompt != self._prompt:
                self._start = _prompt_state(self.vocab, prompt)
                self._prompt, self._state = prompt, None
            self._prompt_ref = prompt_ids
        out = output_ids if isinstance(output_ids, list) else [int(i) for i in output_ids]
        n = len(self._seen)
        if self._state is None or len(out) < n or out[:n] != self._seen:
            self._state, self._seen, n = self._start.copy(), [], 0
        for j in range(n, len(out)):
            t = int(out[j])
            if not self.vocab.grammar.advance(self._state, t):
                self._state = None  # re-sync from the prompt on the next call
                raise ValueError(f"output token {j} (id {t}) breaks the canonical scan")
            self._seen.append(t)


def _generation_beams() -> int | None:
    """``num_beams`` of the ``generate`` call this processor runs in, read from the caller's
    ``generation_config`` (transformers passes it to its decoding loops); None if not found."""
    frame = inspect.currentframe()
    try:
        f = frame.f_back if frame is not None else None
        for _ in range(8):
            if f is None:
                return None
            beams = getattr(f.f_locals.get("generation_config"), "num_beams", None)
            if isinstance(beams, int):
                return beams
            f = f.f_back
        return None
    finally:
        del frame


class JpegLogitsProcessor(_Base):
    """A ``transformers.LogitsProcessor`` that keeps every row of ``model.generate`` a
    decodable canonical JPEG stream of a ``size`` x ``size`` image.

    ``model.generate(ids, do_sample=True, logits_processor=[JpegLogitsProcessor(tok, 256)])``:
    batch-aware (one native mask call for all rows), prompt-aware (the first call of a
    generation consumes each row's prompt, left padding and BOS skipped; a prompt that is not a
    canonical-stream prefix raises ValueError), EOS forced after EOI (``generate`` then stops the
    row, as ``eos_token_id`` should be the tokenizer's EOS). Reusable: a call that does not
    continue the previous one starts a new generation. ``num_beams > 1`` raises ValueError
    (:data:`BEAMS_REFUSED`). ``threads``: native threads for the masks.
    """

    def __init__(self, tokenizer: Any, size: int = 256, threads: int = 1) -> None:
        self.size = check_size(size)
        self.vocab = vocab_for(tokenizer, self.size)
        self.threads = int(threads)
        self._batch: Any = None
        self._ids: torch.Tensor | None = None  # the input_ids of the last call

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError("JpegLogitsProcessor takes input_ids (B, L) and scores (B, V)")
        if self._continues(input_ids):
            self._advance(input_ids[:, -1])
        else:
            self._restart(input_ids)
        self._ids = input_ids
        allowed = np.empty((input_ids.shape[0], len(self.vocab.tokens)), dtype=bool)
        self._batch.masks(allowed, self.threads)
        return mask_logits(scores, allowed)

    def _continues(self, ids: torch.Tensor) -> bool:
        prev = self._ids
        if prev is None or ids.shape != (prev.shape[0], prev.shape[1] + 1):
            return False
        if torch.equal(ids[:, :-1], prev):
            return True
        # each row's history is some row of the last call's: rows were reordered (beam search)
        rows = (ids[:, None, :-1] == prev[None]).all(-1).any(-1)
        if bool(rows.all()):
            raise ValueError(BEAMS_REFUSED)
        return False

    def _restart(self, ids: torch.Tensor) -> None:
        beams = _generation_beams()
        if beams is not None and beams > 1:
            raise ValueError(BEAMS_REFUSED)
        rows = ids.tolist()
        self._batch = _core.TokenBatch(self.vocab.grammar, len(rows), False)
        for i, row in enumerate(rows):
            data = _prompt_bytes(self.vocab, row, f"prompt {i}")
            bad = self._batch.feed_bytes(i, data)
            if bad >= 0:
                raise ValueError(f"prompt {i} is not a canonical stream prefix (byte {bad})")

    def _advance(self, last: torch.Tensor) -> None:
        tokens = last.to("cpu", torch.int64).numpy().copy()
        done = np.array([p == "done" for p in self._batch.phases()])
        tokens[done] = self.vocab.eos  # a finished row: generate appends padding after EOS
        ok = self._batch.advance(tokens)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"row {i}: token {int(tokens[i])} breaks the canonical scan")
