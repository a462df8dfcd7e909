"""Whole-model training throughput: jpeglm's kernels vs eager PyTorch vs torch.compile.

    python benchmarks/model.py [--device auto|cuda|cpu] [--sizes base 1B] [--steps 10] [--no-write]

A training step is forward (loss through the linear + cross-entropy op), backward and a fused
AdamW update, bf16 parameters, on packed sequences of 12,288 tokens (the paper's context).
Three ways to run the same ``Transformer``:

* eager: the PyTorch reference backend (``JPEGLM_BACKEND=torch``), SDPA attention;
* torch.compile: the reference backend under ``torch.compile``;
* jpeglm: the Triton backend (RMSNorm, RoPE, SwiGLU, fused linear + cross-entropy kernels) and
  flash-attn 2 when it is installed (SDPA otherwise; the table says which).

Reported: tokens/s (median step time after warm-up), MFU = training FLOPs/token x tokens/s /
the card's dense bf16 peak (FLOPs/token = 6 N + 12 L d T, ``Transformer.flops_per_token``),
and peak memory. On CPU only the reference path of small models runs (fp32), and says so.
Results go to the "Model" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, today, write_section  # noqa: E402

from jpeglm.model import ModelArgs, Transformer  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
]


def peak_flops(name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key in name:
            return flops
    return None


def train_step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor):
    inputs, targets = idx[:, :-1], idx[:, 1:]

    def step() -> float:
        loss = model(inputs, targets=targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return 0.0

    return step


def measure(
    size: str, mode: str, batch: int, seq: int, steps: int, device: str, dtype: torch.dtype
) -> dict[str, float | str]:
    """Tokens/s, MFU and peak memory of one (size, mode) pair."""
    torch.manual_seed(0)
    args = ModelArgs.from_name(size)
    backend = "triton" if mode == "jpeglm" else "torch"
    with torch.device(device):  # initialise in place: a 1B model would not fit twice
        model = Transformer(args, backend=backend).to(dtype)
    flops_per_token = model.flops_per_token(seq, causal=False)
    attention = model.backend.attention_impl
    fused = device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    runner = torch.compile(model) if mode == "torch.compile" else model
    idx = torch.randint(0, args.vocab_size, (batch, seq + 1), device=device)
    step = train_step_fn(runner, opt, idx)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3 if device == "cuda" else 1):  # warm-up (and compilation)
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    tokens_per_s = batch * seq / seconds
    result: dict[str, float | str] = {
        "tokens/s": tokens_per_s,
        "step ms": seconds * 1e3,
        "attention": attention,
        "params": model.num_params(),
    }
    if device == "cuda":
        result["peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
        peak = peak_flops(torch.cuda.get_device_name())
        if peak:
            result["MFU"] = flops_per_token * tokens_per_s / peak
    del model, opt, runner, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def table(results: list[tuple[str, str, int, int, dict | None]], gpu: bool) -> str:
    head = "| model | params | batch x seq | implementation | attention | tokens/s | vs eager |"
    sep = "|---|---:|---|---|---|---:|---:|"
    if gpu:
        head += " MFU | peak GiB |"
        sep += "---:|---:|"
    rows = [head, sep]
    eager: dict[str, float] = {}
    for size, mode, batch, seq, r in results:
        if r is None:
            rows.append(f"| {size} | | {batch} x {seq} | {mode} | | failed (see log) | |"
                        + (" | |" if gpu else ""))  # fmt: skip
            continue
        if mode == "eager":
            eager[size] = float(r["tokens/s"])
        speed = f"{float(r['tokens/s']) / eager[size]:.2f}x" if size in eager else ""
        row = (f"| {size} | {int(r['params']) / 1e6:,.1f}M | {batch} x {seq} | {mode} | "
               f"{r['attention']} | {float(r['tokens/s']):,.0f} | {speed} |")  # fmt: skip
        if gpu:
            mfu = f"{100 * float(r['MFU']):.1f}%" if "MFU" in r else "n/a"
            row += f" {mfu} | {float(r['peak GiB']):.1f} |"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument(
        "--sizes", nargs="+", default=None, help="default: base 1B (GPU), tiny small (CPU)"
    )
    ap.add_argument("--seq", type=int, default=None, help="default: 12288 (GPU), 256 (CPU)")
    ap.add_argument("--batch", type=int, default=None, help="default: 2 for base, else 1")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 GPU, 5 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    sizes = args.sizes or (["base", "1B"] if gpu else ["tiny", "small"])
    seq = args.seq or (12288 if gpu else 256)
    steps = args.steps or (10 if gpu else 5)
    modes = ["eager", "torch.compile", "jpeglm"] if gpu else ["eager"]

    results = []
    for size in sizes:
        batch = args.batch or (2 if size == "base" and gpu else 1)
        for mode in modes:
            try:
                r = measure(size, mode, batch, seq, steps, device, dtype)
            except Exception as e:  # OOM or a missing piece: record and go on
                print(f"{size} / {mode}: {type(e).__name__}: {e}", file=sys.stderr)
                r = None
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
            results.append((size, mode, batch, seq, r))
            print(table(results[-1:], gpu).splitlines()[-1], flush=True)

    if gpu:
        header = (
            f"Machine: {torch.cuda.get_device_name()}; host {machine()}. Date: {today()}. "
            f"torch {torch.__version__}.\n"
            f"Training step (forward + backward + fused AdamW), bf16 parameters, median of "
            f"{steps} steps after 3 warm-up steps. MFU against the card's dense bf16 peak with "
            "6N + 12LdT FLOPs per token. Command: `python benchmarks/model.py`."
        )
        goals = "Goals (issue 5, H100): training >= 1.5x eager; MFU >= 45% at 1B."
        body = "\n\n".join([header, table(results, gpu), goals])
    else:
        header = (
            f"Machine: {machine()}, no GPU. Date: {today()}. torch {torch.__version__} "
            f"({torch.get_num_threads()} torch threads; 1-min load average at the end "
            f"{os.getloadavg()[0]:.1f}: a shared, busy machine).\n"
            "**CPU run: reference path only** (eager PyTorch, fp32, small models): Triton runs on "
            "CPU only in its interpreter and flash-attn needs CUDA, so kernels, torch.compile "
            f"and MFU are not measured here. Training step = forward + backward + AdamW, median "
            f"of {steps} steps. The GPU comparison (base and 1B at 12,288 tokens: eager / "
            "torch.compile / jpeglm kernels, tokens/s and MFU) is still open: run "
            "`python benchmarks/model.py` on a CUDA machine."
        )
        body = "\n\n".join([header, table(results, gpu)])
    print(body)
    if not args.no_write:
        write_section("Model", body)


if __name__ == "__main__":
    main()
