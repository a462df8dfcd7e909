"""Weights for sampling: the linear layers in the format ``Transformer.prepare_inference``
chose (fp32, bf16, fp16 or weight-only int8), and the CPU's fp32 decode kernels.

A decode step multiplies a few rows (the batch) by every weight matrix once, so on CPU its
speed is the rate at which the weights stream from memory. torch's GEMV/GEMM reaches about a
third of the bandwidth there (about 8 of 25 GB/s on the 2-core reference machine, and no gain
from a second thread); ``jpeglm._core.linear_matmul`` packs each weight into 32-column panels
read once, in order, by all cores, with 8-row register blocks; ``decode_attention`` reads the
filled KV cache the same way (``csrc/decode_kernels.h``). They are used for fp32 on CPU when
``_core`` is built with a kernel for the CPU (AVX2 or AVX-512); the model still imports and
runs without ``_core``. The readable references are ``x @ W.T`` (:func:`reference_linear`) and
SDPA; the tests compare them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "INFERENCE_DTYPES",
    "InferenceLinear",
    "cache_attention",
    "cache_attention_applies",
    "fast_kernel",
    "inference_act_dtype",
    "kernel_threads",
    "kernels_apply",
    "pack_weight",
    "packed_linear",
    "reference_linear",
]


def _load_kernel():  # noqa: ANN202 - the _core module or None
    import os

    if os.environ.get("JPEGLM_PACKED_LINEAR", "1") == "0":
        return None
    try:
        from jpeglm import _core
    except ImportError:
        return None
    if not hasattr(_core, "linear_matmul") or _core.linear_isa() == "generic":
        return None
    return _core


_UNSET = object()
_KERNEL = _UNSET


def fast_kernel():  # noqa: ANN201 - the _core module or None
    """``jpeglm._core`` when it has the CPU decode kernels for this CPU (AVX2 or AVX-512),
    else ``None``. Decided once, on first use (``prepare_inference``; importing the model
    never loads ``_core``): ``JPEGLM_PACKED_LINEAR=0`` in the environment turns the kernels
    off (then torch's ``F.linear`` and SDPA run)."""
    global _KERNEL
    if _KERNEL is _UNSET:
        _KERNEL = _load_kernel()
    return _KERNEL


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(n, k)`` fp32 CPU weight -> ``(ceil(n/32), k, 32)`` panels for :func:`packed_linear`."""
    core = fast_kernel()
    if core is None:
        raise RuntimeError("the packed linear kernel is not available (jpeglm._core not built)")
    w = weight.detach().to(torch.float32).contiguous()
    if w.data_ptr() % w.element_size():  # unaligned (a tensor mapped from an odd offset)
        w = w.clone()
    return torch.from_numpy(core.linear_pack(w.numpy()))


def _packed(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    fast_kernel().linear_matmul(rows.numpy(), panels.numpy(), y.numpy(), _threads())
    return y.view(*x.shape[:-1], out_features)


#: The kernel's thread count inside :func:`kernel_threads` (0: ``torch.get_num_threads()``).
_kernel_threads = 0


def _threads() -> int:
    return _kernel_threads or torch.get_num_threads()


@contextlib.contextmanager
def kernel_threads(model: torch.nn.Module) -> Iterator[None]:
    """While sampling ``model`` with packed fp32 weights on CPU: the packed kernel keeps all of
    torch's threads and torch's own ops run on one. torch's OpenMP workers spin-wait after each
    parallel op and take the cores the kernel's workers need (measured: a decode step of the
    `small` model at batch 1 took 21 ms with both on 2 threads, 8 ms this way, 15 ms with torch
    alone). Restores the thread count on exit; a no-op for every other case."""
    global _kernel_threads
    inf = getattr(model, "inference", None)
    packed = inf is not None and getattr(inf.get("output"), "panels", None) is not None
    if not packed or _kernel_threads:
        yield
        return
    saved = torch.get_num_threads()
    _kernel_threads = saved
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        _kernel_threads = 0


@torch.library.custom_op("jpeglm::packed_linear", mutates_args=())
def _packed_op(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor:
    return _packed(x, panels, out_features)


@_packed_op.register_fake
def _(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def packed_linear(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor:
    """``x @ W.T`` for fp32 CPU ``x`` ``(..., k)`` and ``panels = pack_weight(W)``. Eager calls
    go straight to the kernel; under ``torch.compile`` it is the opaque custom op
    ``jpeglm::packed_linear``, so ``fullgraph=True`` traces through it. No autograd."""
    if torch.compiler.is_compiling():
        return _packed_op(x, panels, out_features)
    return _packed(x, panels, out_features)


def kernels_apply(dtype: torch.dtype | None, device: torch.device) -> bool:
    """Whether the CPU decode kernels serve activations of ``dtype`` on ``device``: fp32 on
    CPU, kernel built."""
    return dtype == torch.float32 and device.type == "cpu" and fast_kernel() is not None


def cache_attention_applies(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether :func:`cache_attention` serves this step: fp32 on CPU, no autograd, kernel
    built (eager or under ``torch.compile``)."""
    return (
        k_cache.dtype == q.dtype
        and kernels_apply(q.dtype, q.device)
        and not torch.is_grad_enabled()
    )


def _cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor
) -> torch.Tensor:
    q = q.contiguous()
    out = torch.empty_like(q)
    kv_len = int(input_pos[-1]) + 1
    fast_kernel().decode_attention(
        q.numpy(), k_cache.numpy(), v_cache.numpy(), out.numpy(), kv_len, q.shape[-1] ** -0.5,
        _threads(),
    )  # fmt: skip
    return out


@torch.library.custom_op("jpeglm::cache_attention", mutates_args=())
def _cache_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor
) -> torch.Tensor:
    return _cache_attention(q, k_cache, v_cache, input_pos)


@_cache_attention_op.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor
) -> torch.Tensor:
    """Causal attention of ``q`` ``(batch, seq, heads, dim)`` at the consecutive positions
    ``input_pos`` over the cache slots ``0 .. input_pos[-1]`` of the whole static caches
    ``(rows, kv_heads, slots, dim)``, in ``_core`` (every cache byte read once, all cores);
    returns ``(batch, seq, heads, dim)``. The cut comes from ``input_pos``'s value, so a
    compiled step keeps one static graph (the custom op ``jpeglm::cache_attention``).
    Reference: SDPA over the cut cache with the causal mask; the tests compare the two."""
    if torch.compiler.is_compiling():
        return _cache_attention_op(q, k_cache, v_cache, input_pos)
    return _cache_attention(q, k_cache, v_cache, input_pos)


def reference_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The readable reference of :func:`packed_linear`: ``x @ W.T``."""
    return x @ weight.T


#: Weight formats for sampling (``Transformer.prepare_inference``): the storage of the linear
#: layers' weights, and the dtype activations and the KV cache use with them.
INFERENCE_DTYPES = ("fp32", "bf16", "fp16", "int8")


class InferenceLinear:
    """A bias-free linear layer for sampling: the weight in the activation dtype, or
    weight-only int8 with one scale per output channel (gpt-fast's ``WeightOnlyInt8Linear``:
    ``y = (x @ W_int8.T) * scales``, symmetric, ``scale = max|w| / 127`` per row).

    A plain object, not an ``nn.Module``: it is never a parameter, never saved, never trained.
    fp32 on CPU: the weight is packed into column panels for ``jpeglm._core``'s small-batch
    kernel (:func:`packed_linear`; every weight byte streamed once per call by all cores -- about
    2.5x torch's GEMV/GEMM at 1-16 rows on the reference machine), when ``_core`` is built and
    the CPU has AVX2 or AVX-512; ``weight`` is then ``None`` and ``panels`` holds it.
    int8 on CPU with bf16 activations and at most :attr:`PACKED_ROWS` rows runs in
    ``torch._weight_int8pack_mm`` (reads the int8 weight directly); otherwise the weight is
    converted to the activation dtype in the product (``torch.compile`` fuses that).
    """

    PACKED_ROWS = 4

    def __init__(self, weight: torch.Tensor, fmt: str, act_dtype: torch.dtype) -> None:
        self.int8 = fmt == "int8"
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            if self.int8:
                w = weight.detach().float()
                scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
                self.weight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
                self.scales = scales.to(act_dtype)
            else:
                self.weight = weight.detach().to(act_dtype)
                self.scales = None
        self.panels: torch.Tensor | None = None
        if (
            not self.int8
            and act_dtype == torch.float32
            and self.weight.device.type == "cpu"
            and fast_kernel() is not None
        ):
            self.panels = pack_weight(self.weight)
            self.weight = None  # one copy of the weights: the panels
        self.packed = (
            self.int8
            and self.weight.device.type == "cpu"
            and act_dtype == torch.bfloat16
            and hasattr(torch, "_weight_int8pack_mm")
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.panels is not None:
            return packed_linear(x.to(torch.float32), self.panels, self.out_features)
        if not self.int8:
            return F.linear(x.to(self.weight.dtype), self.weight)
        x = x.to(self.scales.dtype)
        if (
            self.packed
            and x.dtype == torch.bfloat16
            and x.numel() <= self.PACKED_ROWS * x.shape[-1]
        ):
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight, self.scales)
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales

    def nbytes(self) -> int:
        """Bytes of the weight as stored (padding of the last panel included)."""
        extra = 0 if self.scales is None else self.scales.numel() * self.scales.element_size()
        w = self.panels if self.panels is not None else self.weight
        return w.numel() * w.element_size() + extra


def inference_act_dtype(fmt: str, param_dtype: torch.dtype) -> torch.dtype:
    """The activation / KV-cache dtype that goes with weight format ``fmt``: fp32, bf16, fp16
    as named; int8 weights run with bf16 activations (fp16 when the model is fp16)."""
    if fmt not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(INFERENCE_DTYPES)}, got {fmt!r}")
    if fmt == "int8":
        return torch.float16 if param_dtype == torch.float16 else torch.bfloat16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[fmt]
