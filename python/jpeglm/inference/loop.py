"""The token-level sampling loop of a JPEG-LM, for any byte prompts.

Decoding uses the model's static KV cache: one prefill, then one-token steps, batched, with
per-sample stop at EOS / EOI / ``max_tokens``. Temperature, top-k and top-p filter the logits on
the model's device. With ``constrained=True`` a native automaton of the canonical scan masks
every token that would make the stream undecodable (:mod:`jpeglm.grammar`).
:func:`generate_tokens` is the sampler without any JPEG knowledge (unconstrained), for other
byte formats; the image-level API is :mod:`jpeglm.inference.sample`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from jpeglm.grammar import TokenConstraint
from jpeglm.inference.decode_kernels import kernel_threads, kernels_apply
from jpeglm.inference.draws import _position_seed, _sample, sample_logits
from jpeglm.inference.guidance import Guidance
from jpeglm.inference.settings import SamplingSettings

__all__ = [
    "KV_BUCKETS",
    "SHARE_PROMPT",
    "NonFiniteLogits",
    "generate_tokens",
    "prepare_for_sampling",
    "repeat_prompt",
    "sample_logits",
]


class NonFiniteLogits(ValueError):
    """The model produced NaN or infinite logits: sampling stops (nothing is written from that
    batch), since no token drawn from them means anything."""


def prepare_for_sampling(model, dtype: str = "fp32") -> None:
    """Give ``model`` its sampling weights in format ``dtype`` (``"fp32"``, ``"bf16"``,
    ``"fp16"``, ``"int8"``): fused projections, weights converted or int8-quantized
    (:meth:`jpeglm.model.model.Transformer.prepare_inference`). Cheap when already prepared in that
    format with unchanged parameters. Training and checkpoints are unaffected."""
    inf = getattr(model, "inference", None)
    if inf is not None and inf["dtype"] == dtype and inf["key"] == model.param_key():
        return
    model.prepare_inference(dtype)


#: Attention during decoding reads the cache cut to the filled length rounded up to one of
#: these sizes (then to a multiple of the largest), so compiled graphs stay few and static.
KV_BUCKETS = (256, 512, 1024, 2048)


#: A prompt shared by every row of a batch is prefilled once and its cache copied (tests turn
#: it off to check that the samples do not change).
SHARE_PROMPT = True


def compile_options(device: torch.device) -> dict[str, object]:
    """Inductor's options for the compiled decode step. On CUDA: CUDA graphs (what
    ``mode="reduce-overhead"`` sets) and coordinate-descent tuning of the generated kernels --
    what makes gpt-fast's int8 weight-only step fast (the dequantisation fused into tuned
    matmul tiles instead of a whole-matrix dequantise per call). None on the CPU."""
    if device.type == "cuda":
        return {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
    return {}


def compile_decode(model, device: torch.device, graphs: int | None = None):  # noqa: ANN001, ANN201
    """The sampler's compiled one-token step (``fullgraph``, static shapes: one graph per KV
    bucket) with :func:`compile_options`; ``graphs``: its own region allowed that many graphs
    (:func:`_compile`). The GPU check times this same callable."""
    kwargs: dict[str, Any] = dict(dynamic=False, fullgraph=True,
                                  options=compile_options(device) or None)  # fmt: skip
    if graphs is None:
        return torch.compile(model.decode, **kwargs)
    return _compile(model.decode, graphs, **kwargs)


def _kv_len(filled: int, cache: int) -> int:
    for b in KV_BUCKETS:
        if filled <= b:
            return min(b, cache)
    top = KV_BUCKETS[-1]
    return min(-(-filled // top) * top, cache)


def _kv_lens(cache: int) -> list[int]:
    """Every ``kv_len`` a cache of ``cache`` slots gives (one compiled graph each)."""
    top = KV_BUCKETS[-1]
    starts = [1, *(b + 1 for b in KV_BUCKETS), *range(top + 1, cache + 1, top)]
    return sorted({_kv_len(f, cache) for f in starts if f <= cache})


def _compiled_step(model, rows: int, total: int, cuda: bool, kernel: bool) -> tuple[Any, int]:
    """The compiled one-token step for ``rows`` rows and the cache size it runs with.

    Shapes stay static: the cache has one size per model for compiled sampling, the bucket of
    the longest generation asked for so far (it only grows; :func:`_run` keeps the cache
    between calls), and attention reads it in :data:`KV_BUCKETS` (:func:`_kv_lens`: one
    graph each; one graph in all with the cache kernel). Each (rows, cache size, weights)
    gets its own ``torch.compile`` region, kept on the model, whose recompile limit is the
    number of graphs it can make plus 2: Dynamo's global limit (8) is left alone, and
    exceeding the region's raises (``fullgraph``) instead of falling back to eager.
    ``model.clear_caches()`` frees the kept cache.
    """
    slots = max(getattr(model, "_sampling_slots", 0), _kv_len(total, model.args.max_seq_len))
    model._sampling_slots = slots
    inf = model.inference
    key = (rows, slots, kernel, cuda, inf["dtype"] if inf is not None else None)
    steps = model.__dict__.setdefault("_compiled_steps", {})
    if key not in steps:
        graphs = 1 if kernel else len(_kv_lens(slots))
        device = torch.device("cuda" if cuda else "cpu")
        steps[key] = compile_decode(model, device, graphs + 2)
    return steps[key], slots


def _compile(fn: Callable, graphs: int, **kwargs: Any) -> Callable:
    """``torch.compile(fn, **kwargs)`` as its own region allowed ``graphs`` graphs (torch's
    ``recompile_limit`` / ``isolate_recompiles``); older torch: the calls run under a raised
    ``torch._dynamo.config.recompile_limit``."""
    params = inspect.signature(torch.compile).parameters
    if "recompile_limit" in params and "isolate_recompiles" in params:
        return torch.compile(fn, recompile_limit=graphs, isolate_recompiles=True, **kwargs)
    compiled = torch.compile(fn, **kwargs)
    limit = max(64, graphs)  # shared by every region of the code object

    def run(*args: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=limit):
            return compiled(*args)

    return run


@torch.no_grad()
def _run(
    model,
    tokenizer,
    prompts: list[list[int]],
    prompt_bytes: list[bytes],
    size: int,
    opts: SamplingSettings,
    chunk: int,
    stats: dict | None = None,
    stop_at_eoi: bool = True,
    guidance: Guidance | None = None,
) -> list[list[int]]:
    """Generate for a batch of equal-length prompts; returns each sample's new tokens.

    The loop keeps ids and positions on the device and samples there (exponential race, the
    draws of position ``p`` from a generator seeded by (seed, chunk, p)); per step the host
    receives one copy of the sampled ids, which the grammar and the stop test need. On CUDA
    the next forward is launched before that copy is waited for, so the grammar's advance and
    mask run while the GPU computes. Jump-forward: when every active row's next token is the
    only one the grammar allows, the forced run is appended in one multi-token forward (rows
    that are done ride along with padding); forced tokens consume no draws, so the samples
    equal token-by-token decoding. ``guidance``: each row runs beside its null twin in one
    forward of twice the rows, and draws from the mixed logits (:mod:`.guidance`).
    """
    temperature, top_k, top_p = opts.temperature, opts.top_k, opts.top_p
    max_tokens, seed, compile = opts.max_tokens, opts.seed, opts.compile
    b, plen = len(prompts), len(prompts[0])
    rows = b if guidance is None else 2 * b  # the model's batch: a guided row has a null twin
    device = next(model.parameters()).device
    act = model.inference["act_dtype"] if model.inference is not None else None
    total = min(plen + max_tokens, model.args.max_seq_len)
    cuda = device.type == "cuda"
    cache_kernel = kernels_apply(act, device)
    step, cache_len = model.decode, total
    if compile:  # one static cache per model, kept between calls; a bounded set of graphs
        step, cache_len = _compiled_step(model, rows, total, cuda, cache_kernel)
    model.setup_caches(rows, cache_len, dtype=act, device=device, reuse=compile)
    eos = tokenizer.eos_id
    fill = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    vocab = tokenizer.vocab_size
    constraint = None
    if opts.constrained:
        constraint = TokenConstraint.from_tokenizer(tokenizer, size)
        constraint.start(b, prompts=prompt_bytes)  # prompts start after BOS; grammar follows bytes
        mask_t = torch.empty((b, vocab), dtype=torch.bool, pin_memory=cuda)
        mask_np = mask_t.numpy()
    ids_host = torch.empty(b, dtype=torch.long, pin_memory=cuda)
    ids_np = ids_host.numpy()
    generator = torch.Generator(device=device)

    def forward(tokens: torch.Tensor, pos: int, prefill: bool = False) -> torch.Tensor:
        if guidance is not None and not prefill:  # the drawn tokens go to both halves
            tokens = torch.cat([tokens, tokens])
        n = tokens.shape[1]
        positions = torch.arange(pos, pos + n, device=device)
        if n == 1 and compile and tokens.shape[0] == rows:  # (a shared prefill is 1 row: eager)
            if cache_kernel:  # the kernel cuts the cache at the position tensor: one graph
                return step(tokens, positions, None, True)
            return step(tokens, positions, _kv_len(pos + n, cache_len))  # buckets, masked
        # eager: the cache cut exactly at the last position (one-token steps need no mask)
        return model.decode(tokens, positions, pos + n, exact=True)

    def draw(logits: torch.Tensor, pos: int) -> torch.Tensor:
        # the tokenizer's ids only (COND ids never drawn); guided: the mixed logits, masked
        logits = logits[:, :vocab] if guidance is None else guidance.mix(logits, vocab)
        broken = ~torch.isfinite(logits).all(dim=-1)  # NaN / inf: no host sync, see accept()
        if constraint is not None:
            mask = mask_t.to(device, non_blocking=True) if cuda else mask_t
            logits = logits.masked_fill(~mask, float("-inf"))
        noise = None
        if temperature != 0:
            generator.manual_seed(_position_seed(seed, chunk, pos))
            noise = torch.empty((b, vocab), dtype=torch.float32, device=device)
            noise.exponential_(1, generator=generator)
        return torch.where(broken, -1, _sample(logits, noise, temperature, top_k, top_p))

    out: list[list[int]] = [[] for _ in range(b)]
    finished = np.zeros(b, dtype=bool)
    pieces = tokenizer.token_byte_values()  # id -> bytes (no specials)
    tail = [p[-1:] for p in prompt_bytes]  # the last byte: an EOI may straddle two tokens
    forwards = forced_total = 0

    def accept(tokens: np.ndarray) -> None:
        """Advance the grammar and the per-row state by one token per row (host)."""
        if (tokens[~finished] < 0).any():  # draw() marks rows whose logits were not finite
            model.clear_caches()
            raise NonFiniteLogits(
                f"the model's logits are not finite (NaN or infinite) at position {pos}: its "
                "weights are broken (NaN / inf) or overflow in this dtype; no sample written"
            )
        tokens[finished] = fill
        if constraint is not None:
            active = ~finished
            ok = constraint.advance(np.where(active, tokens, eos))
            if not ok[active].all():  # cannot happen: the mask allowed only legal tokens
                raise RuntimeError("constrained sampler produced an illegal token")
        for i in np.flatnonzero(~finished):
            t = int(tokens[i])
            if t == eos:
                finished[i] = True
                continue
            out[i].append(t)
            piece = pieces.get(t, b"")
            if piece and stop_at_eoi:
                if b"\xff\xd9" in tail[i] + piece:  # EOI: the stream is complete
                    finished[i] = True
                tail[i] = piece[-1:]

    rows_in = prompts if guidance is None else guidance.pair(prompts)
    idx = torch.tensor(rows_in, dtype=torch.long, device=device)
    if constraint is not None:
        constraint.mask(mask_np)
    if SHARE_PROMPT and b > 1 and all(p == prompts[0] for p in prompts):
        # one prompt for every row (unconditional sampling): prefill it once, copy its cache
        if guidance is None:
            logits = forward(idx[:1], 0, prefill=True).expand(b, -1)
            model.copy_cache_row(b, plen)
        else:  # the prompt and its null twin into rows 0, 1; then to 0..b-1 and b..2b-1
            logits = forward(idx[[0, b]], 0, prefill=True).repeat_interleave(b, dim=0)
            model.copy_cache_row(rows, plen, src=1, start=b)
            model.copy_cache_row(b, plen)
    else:
        logits = forward(idx, 0, prefill=True)
    forwards += 1
    pos = plen  # the position the next sampled token takes
    while True:
        nxt = draw(logits, pos)
        if cuda:  # one pinned copy of the ids; the next forward is queued behind it
            ids_host.copy_(nxt, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            logits = forward(nxt.view(b, 1), pos) if pos + 1 < total else None
            forwards += 1
            copied.synchronize()
        else:
            ids_host.copy_(nxt)
        accept(ids_np)
        pos += 1
        if finished.all() or pos >= total:
            break
        if constraint is not None:
            constraint.mask(mask_np)  # for the token at `pos`, while the GPU runs
        forced: list[np.ndarray] = []
        if opts.jump_forward and constraint is not None:
            while pos + len(forced) < total:
                counts = mask_np.sum(axis=1)
                if not (counts[~finished] == 1).all():
                    break
                tokens = np.where(finished, fill, mask_np.argmax(axis=1))
                forced.append(tokens.copy())
                forced_total += int((~finished).sum())
                accept(tokens)
                if finished.all():
                    break
                constraint.mask(mask_np)
            if finished.all():
                break
        if forced and pos + len(forced) >= total:
            break
        if forced:
            run = torch.from_numpy(np.stack(forced, axis=1)).to(device)
            if cuda:  # the one-token step is already queued: append the run after it
                logits = forward(run, pos)
            else:
                logits = forward(torch.cat([nxt.view(b, 1), run], dim=1), pos - 1)
            forwards += 1
            pos += len(forced)
        elif not cuda:
            logits = forward(nxt.view(b, 1), pos - 1)
            forwards += 1
    if not compile:  # the compiled step's static cache stays for the next call
        model.clear_caches()
    if stats is not None:
        stats["forwards"] = stats.get("forwards", 0) + forwards
        stats["forced"] = stats.get("forced", 0) + forced_total
    return out


class _Repeat(Sequence):
    """``[item] * n`` without the list (``n`` may be 10**9: samples are made lazily)."""

    def __init__(self, item: Any, n: int) -> None:
        self.item, self.n = item, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        if isinstance(i, slice):
            return _Repeat(self.item, len(range(self.n)[i]))
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.item


def _run_batches(
    model,
    tokenizer,
    prompt_bytes: Sequence[bytes],
    size: int,
    opts: SamplingSettings,
    stats: dict | None = None,
    stop_at_eoi: bool = True,
    on_result: Callable[[int, list[int]], None] | None = None,
    conds: Sequence[int] | None = None,
    guidance: Guidance | None = None,
) -> list[list[int]]:
    """Each prompt (after BOS) through :func:`_run`: prompts of equal token length share a
    batch (one KV cache position for all rows), ``opts.batch_size`` rows at a time; returns
    each prompt's new tokens, in order -- or, with ``on_result``, hands each prompt's index and
    new tokens to it as its batch finishes and returns ``[]`` (one prompt repeated,
    :class:`_Repeat`, is encoded once and never listed). ``conds``: each prompt's COND id,
    put after BOS (a class-conditional model); ``guidance``: see :mod:`.guidance`."""
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError("the tokenizer needs BOS and EOS tokens")
    room = model.args.max_seq_len
    opts = replace(opts, max_tokens=opts.max_tokens or room, seed=opts.seed or 0)
    by_len: dict[int, Sequence[int]] = {}
    # sentencepiece's dummy prefix ("▁"): the model saw it after BOS, before every image, so an
    # empty prompt starts with it too (a non-empty one is encoded with it)
    prefix = getattr(tokenizer, "dummy_prefix", None)

    def start(p: bytes) -> list[int]:
        if not len(p) and prefix is not None:
            return [tokenizer.bos_id, prefix]
        return [tokenizer.bos_id] + tokenizer.encode(p)

    if isinstance(prompt_bytes, _Repeat):
        ids = start(prompt_bytes.item)
        prompts: Sequence[list[int]] = _Repeat(ids, len(prompt_bytes))
        by_len = {len(ids): range(len(prompt_bytes))} if len(prompt_bytes) else {}
    else:
        prompts = [start(p) for p in prompt_bytes]
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)  # type: ignore[union-attr]
    extra = 0 if conds is None else 1  # COND after BOS

    def row(i: int) -> list[int]:
        p = prompts[i]
        return p if conds is None else [p[0], int(conds[i]), *p[1:]]

    for n in by_len:
        if n + extra >= room:
            raise ValueError(f"prompt of {n + extra} tokens leaves no room (max_seq_len {room})")
    batch_size = opts.batch_size or len(prompts)
    results: list[list[int]] = [[] for _ in prompts] if on_result is None else []
    was_training = model.training
    model.eval()
    n_chunk = 0
    try:
        prepare_for_sampling(model, opts.dtype)
        with kernel_threads(model):
            for ids in by_len.values():
                for s in range(0, len(ids), batch_size):
                    chunk = ids[s : s + batch_size]
                    new = _run(model, tokenizer, [row(i) for i in chunk],
                               [prompt_bytes[i] for i in chunk], size, opts, n_chunk, stats,
                               stop_at_eoi, guidance)  # fmt: skip
                    n_chunk += 1
                    for i, toks in zip(chunk, new):
                        if on_result is None:
                            results[i] = toks
                        else:
                            on_result(i, toks)
    finally:
        model.train(was_training)
    return results


def generate_tokens(
    model,
    tokenizer,
    prompts: Sequence[bytes],
    *,
    settings: SamplingSettings | None = None,
    stop_at_eoi: bool = False,
    on_result: Callable[[int, list[int]], None] | None = None,
    **options: Any,
) -> list[list[int]]:
    """Unconstrained continuations of byte ``prompts`` (each after BOS): the new token ids of
    each, up to EOS, ``max_tokens`` or the context -- the sampler without any JPEG knowledge,
    for other byte formats (the H.264 clips of :mod:`jpeglm.video.sample`). ``options`` /
    ``settings``: as :func:`jpeglm.inference.sample.generate`'s (no grammar, no jump-forward
    here; ``seed`` defaults to 0). ``stop_at_eoi``: also stop at a JPEG EOI (FFD9).
    ``on_result``: each prompt's index and new tokens handed to it as its batch finishes,
    nothing kept, ``[]`` returned (``prompts`` may then be one prompt repeated lazily, as
    :func:`jpeglm.inference.sample.generate` does for ``n`` samples)."""
    if settings is None:
        options.setdefault("seed", 0)
    opts = SamplingSettings.of(settings, **options)
    opts = replace(opts, constrained=False, jump_forward=False)
    eos = tokenizer.eos_id
    if not isinstance(prompts, _Repeat):
        prompts = [bytes(p) for p in prompts]
    if on_result is not None:

        def done(i: int, toks: list[int]) -> None:
            on_result(i, [t for t in toks if t != eos])

        _run_batches(model, tokenizer, prompts, 256, opts, None, stop_at_eoi, on_result=done)
        return []
    new = _run_batches(model, tokenizer, prompts, 256, opts, None, stop_at_eoi)
    return [[t for t in toks if t != eos] for toks in new]


def repeat_prompt(prompt: bytes, n: int) -> Sequence[bytes]:
    """``[prompt] * n`` made lazily (``n`` may be 10**9), for :func:`generate_tokens`."""
    return _Repeat(bytes(prompt), n)
