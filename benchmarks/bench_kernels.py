"""Per-kernel forward + backward time and peak memory: jpeglm's Triton kernels vs their peers.

    python benchmarks/bench_kernels.py [--device auto|cuda|cpu] [--tokens 8192] [--no-write]

On CUDA, at Llama-7B sizes (hidden 4096, MLP 11008, 32 heads of 128, bf16, 8192 tokens), each
op's forward + backward is timed with ``triton.testing.do_bench`` (median) and its peak memory
above the inputs is measured, for:

* eager: the plain PyTorch reference (``jpeglm.reference.kernels``), what the model runs
  without kernels;
* torch.compile: the same reference compiled by Inductor;
* Liger-Kernel (``pip install liger-kernel``), when importable: LigerRMSNorm (llama casting),
  liger_rotary_pos_emb, LigerSiLUMulFunction, LigerFusedLinearCrossEntropyLoss;
* jpeglm: the Triton kernels of ``jpeglm.kernels``.

The fused linear + cross-entropy runs at the Llama-2 vocabulary (32,000), where the logits
dominate memory, and at JPEG-LM's (323). In-place RoPE needs a non-leaf input, so every RoPE
contender starts from a copy of q and k (the same extra work for all).

On CPU, Triton runs only in its interpreter, whose timings mean nothing, so only the
reference path (eager PyTorch) is timed, at small shapes; the GPU table stays open until a
CUDA run. Results go to the "Kernels" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, parse_device_args, round_robin, today, write_section  # noqa: E402

from jpeglm.reference import kernels as reference  # noqa: E402

Run = Callable[[], None]  # one forward + backward


@dataclass
class Case:
    op: str
    shape: str
    tokens: int
    contenders: dict[str, Run] = field(default_factory=dict)


def _fwd_bwd(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Run:
    """A closure running ``fn(*inputs)`` and a backward with a fixed upstream gradient."""
    grad: list[torch.Tensor] = []

    def run() -> None:
        out = fn(*inputs)
        if out.ndim == 0:
            out.backward()
            return
        if not grad:
            grad.append(torch.randn_like(out))
        out.backward(grad[0])

    return run


def _leaf(*shape: int, device: str, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (
        (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_()
    )


def _liger() -> dict[str, object] | None:
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        from liger_kernel.transformers import (
            LigerFusedLinearCrossEntropyLoss,
            LigerRMSNorm,
            liger_rotary_pos_emb,
        )
    except Exception:  # not installed, or built for another torch / triton
        return None
    return {
        "rms_norm": LigerRMSNorm,
        "rope": liger_rotary_pos_emb,
        "swiglu": LigerSiLUMulFunction.apply,
        "flce": LigerFusedLinearCrossEntropyLoss,
    }


# ------------------------------------------------------------------------------------ cases


def rms_norm_case(tokens: int, dim: int, device: str, dtype: torch.dtype, gpu: bool) -> Case:
    x = _leaf(tokens, dim, device=device, dtype=dtype)
    w = torch.ones(dim, device=device, dtype=dtype, requires_grad=True)
    case = Case("RMSNorm", f"({tokens}, {dim})", tokens)
    case.contenders["eager"] = _fwd_bwd(lambda: reference.rms_norm(x, w, 1e-5))
    if gpu:
        compiled = torch.compile(reference.rms_norm)
        case.contenders["torch.compile"] = _fwd_bwd(lambda: compiled(x, w, 1e-5))
        liger = _liger()
        if liger:
            norm = liger["rms_norm"](dim, eps=1e-5, casting_mode="llama").to(device, dtype)
            case.contenders["Liger"] = _fwd_bwd(lambda: norm(x))
        from jpeglm.kernels.rms_norm import rms_norm

        case.contenders["jpeglm"] = _fwd_bwd(lambda: rms_norm(x, w, 1e-5))
    return case


def rope_case(
    batch: int, seq: int, heads: int, head_dim: int, device: str, dtype: torch.dtype, gpu: bool
) -> Case:
    q0 = _leaf(batch, seq, heads, head_dim, device=device, dtype=dtype)
    k0 = _leaf(batch, seq, heads, head_dim, device=device, dtype=dtype)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(seq, device=device).float(), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    case = Case("RoPE (q and k)", f"2 x ({batch}, {seq}, {heads}, {head_dim})", batch * seq)

    def sum_of(fn: Callable) -> Callable[[], torch.Tensor]:
        # One scalar out of q and k, so every contender does the same backward.
        return lambda: sum((t.float() * 1e-3).sum() for t in fn())

    def eager():
        q, k = q0.clone(), k0.clone()
        return reference.rope(q, cos, sin), reference.rope(k, cos, sin)

    case.contenders["eager"] = _fwd_bwd(sum_of(eager))
    if gpu:
        compiled_rope = torch.compile(reference.rope)
        case.contenders["torch.compile"] = _fwd_bwd(
            sum_of(
                lambda: (compiled_rope(q0.clone(), cos, sin), compiled_rope(k0.clone(), cos, sin))
            )
        )
        liger = _liger()
        if liger:
            # Liger: (batch, heads, seq, head_dim) and HF's full-width (1, seq, head_dim) tables.
            cos_full = torch.cat([cos, cos], -1)[None].to(dtype)
            sin_full = torch.cat([sin, sin], -1)[None].to(dtype)

            def liger_rope():
                q, k = q0.clone().transpose(1, 2), k0.clone().transpose(1, 2)
                return liger["rope"](q, k, cos_full, sin_full)

            case.contenders["Liger"] = _fwd_bwd(sum_of(liger_rope))
        from jpeglm.kernels.rope import rope

        case.contenders["jpeglm"] = _fwd_bwd(
            sum_of(lambda: (rope(q0.clone(), cos, sin), rope(k0.clone(), cos, sin)))
        )
    return case


def swiglu_case(tokens: int, hidden: int, device: str, dtype: torch.dtype, gpu: bool) -> Case:
    gate = _leaf(tokens, hidden, device=device, dtype=dtype)
    up = _leaf(tokens, hidden, device=device, dtype=dtype)
    case = Case("SwiGLU", f"2 x ({tokens}, {hidden})", tokens)
    case.contenders["eager"] = _fwd_bwd(lambda: reference.swiglu(gate, up))
    if gpu:
        compiled = torch.compile(reference.swiglu)
        case.contenders["torch.compile"] = _fwd_bwd(lambda: compiled(gate, up))
        liger = _liger()
        if liger:
            case.contenders["Liger"] = _fwd_bwd(lambda: liger["swiglu"](gate, up))
        from jpeglm.kernels.swiglu import swiglu

        case.contenders["jpeglm"] = _fwd_bwd(lambda: swiglu(gate, up))
    return case


def flce_case(
    tokens: int, dim: int, vocab: int, device: str, dtype: torch.dtype, gpu: bool
) -> Case:
    h = _leaf(tokens, dim, device=device, dtype=dtype)
    w = _leaf(vocab, dim, device=device, dtype=dtype, scale=0.02)
    targets = torch.randint(0, vocab, (tokens,), device=device)
    case = Case(f"linear + cross-entropy, vocab {vocab:,}", f"({tokens}, {dim}) x ({vocab}, {dim})",
                tokens)  # fmt: skip
    case.contenders["eager"] = _fwd_bwd(lambda: reference.fused_linear_cross_entropy(h, w, targets))
    if gpu:
        compiled = torch.compile(reference.fused_linear_cross_entropy)
        case.contenders["torch.compile"] = _fwd_bwd(lambda: compiled(h, w, targets))
        liger = _liger()
        if liger:
            loss_fn = liger["flce"]()
            case.contenders["Liger"] = _fwd_bwd(lambda: loss_fn(w, h, targets))
        from jpeglm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy

        case.contenders["jpeglm"] = _fwd_bwd(lambda: fused_linear_cross_entropy(h, w, targets))
    return case


# ---------------------------------------------------------------------------------- measure


def measure_gpu(run: Run) -> tuple[float, float]:
    """(median milliseconds, peak MiB above what was allocated before) of one fwd + bwd."""
    import triton.testing

    run()  # compile / autotune outside the timing
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return ms, peak


def run_gpu(tokens: int) -> str:
    device, dtype = "cuda", torch.bfloat16
    dim, hidden, heads, head_dim = 4096, 11008, 32, 128
    batch, seq = max(1, tokens // 2048), min(tokens, 2048)
    cases = [
        rms_norm_case(tokens, dim, device, dtype, True),
        rope_case(batch, seq, heads, head_dim, device, dtype, True),
        swiglu_case(tokens, hidden, device, dtype, True),
        flce_case(tokens, dim, 32000, device, dtype, True),
        flce_case(tokens, dim, 323, device, dtype, True),
    ]
    rows = ["| op | shape (bf16) | implementation | fwd+bwd ms | vs eager | vs Liger | peak MiB "
            "| memory vs eager |", "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for case in cases:
        results: dict[str, tuple[float, float] | None] = {}
        for name, run in case.contenders.items():
            try:
                results[name] = measure_gpu(run)
            except Exception as e:  # e.g. OOM, or a peer's API that changed: record, go on
                print(f"{case.op} / {name}: {type(e).__name__}: {e}", file=sys.stderr)
                results[name] = None
            torch.cuda.empty_cache()
        eager, liger = results.get("eager"), results.get("Liger")
        for name, res in results.items():
            if res is None:
                rows.append(f"| {case.op} | {case.shape} | {name} | failed | | | | |")
                continue
            ms, mib = res
            vs_eager = f"{eager[0] / ms:.2f}x" if eager else ""
            vs_liger = f"{liger[0] / ms:.2f}x" if liger else "n/a"
            mem = f"{mib / eager[1]:.2f}x" if eager and eager[1] > 0 else ""
            rows.append(f"| {case.op} | {case.shape} | {name} | {ms:.3f} | {vs_eager} | "
                        f"{vs_liger} | {mib:,.0f} | {mem} |")  # fmt: skip
            print(rows[-1], flush=True)
    liger_note = "Liger-Kernel " + (_liger_version() or "not installed (its column stays n/a)")
    gpu = torch.cuda.get_device_name()
    header = (
        f"Machine: {gpu}; host {machine()}. Date: {today()}. torch {torch.__version__}, "
        f"triton {_version('triton')}, {liger_note}.\n"
        f"Forward + backward of each op at Llama-7B sizes, {tokens} tokens, bf16; median of "
        "`triton.testing.do_bench`; peak memory above the inputs. 'vs' columns: speed-up "
        "(>1 is faster) and memory ratio (<1 is smaller). Command: "
        "`python benchmarks/bench_kernels.py`."
    )
    goals = ("Goals (issue 5, H100): each kernel >= 1.0x Liger; fused linear + cross-entropy "
             "<= 0.4x eager peak memory.")  # fmt: skip
    return "\n\n".join([header, "\n".join(rows), goals])


def run_cpu(repeats: int) -> str:
    device, dtype = "cpu", torch.float32
    tokens, dim, hidden, heads, head_dim = 512, 512, 1408, 8, 64
    cases = [
        rms_norm_case(tokens, dim, device, dtype, False),
        rope_case(1, tokens, heads, head_dim, device, dtype, False),
        swiglu_case(tokens, hidden, device, dtype, False),
        flce_case(tokens, dim, 323, device, dtype, False),
    ]
    fns = {}
    for case in cases:
        run = case.contenders["eager"]

        def once(run: Run = run, n: int = case.tokens) -> int:
            run()
            return n

        fns[case.op] = once
    rates = round_robin(fns, repeats=repeats, min_time=0.2)
    rows = ["| op | shape (fp32) | eager PyTorch fwd+bwd ms | tokens/s |", "|---|---|---:|---:|"]
    for case in cases:
        rate = rates[case.op]
        rows.append(f"| {case.op} | {case.shape} | {case.tokens / rate * 1e3:.3f} | {rate:,.0f} |")
    header = (
        f"Machine: {machine()}, no GPU. Date: {today()}. torch {torch.__version__} "
        f"({torch.get_num_threads()} torch threads; 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f}: a shared, busy machine).\n"
        "**CPU run: reference path only.** Triton kernels run on CPU only in Triton's "
        "interpreter, whose timings mean nothing, and Liger-Kernel needs CUDA; so this table "
        "times the eager PyTorch reference ops (`jpeglm.reference.kernels`, what the model runs "
        f"on CPU) at small shapes, best of {repeats} round-robin repeats. The GPU comparison "
        "(eager / torch.compile / Liger / jpeglm at Llama-7B sizes) is still open: run "
        "`python benchmarks/bench_kernels.py` on a CUDA machine."
    )
    return "\n\n".join([header, "\n".join(rows)])


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "not installed"


def _liger_version() -> str | None:
    v = _version("liger-kernel")
    return None if v == "not installed" or _liger() is None else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per op on GPU")
    ap.add_argument("--repeats", type=int, default=5, help="round-robin repeats on CPU")
    args, gpu = parse_device_args(ap)
    t0 = time.perf_counter()
    body = run_gpu(args.tokens) if gpu else run_cpu(args.repeats)
    print(body)
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if not args.no_write:
        write_section("Kernels", body)


if __name__ == "__main__":
    main()
