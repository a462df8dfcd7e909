"""Whole-model training throughput: jpeglm's kernels vs eager PyTorch vs torch.compile.

    python benchmarks/bench_model.py [--device auto|cuda|cpu] [--sizes base 1B] [--steps 10]
                               [--precision autocast bf16] [--no-write]

A training step is what ``jpeglm.train.loop`` runs: forward (loss through the linear +
cross-entropy op), backward, gradient clipping and a fused AdamW update, on packed sequences of
12,288 tokens (the paper's context), in one of two precisions:

* ``autocast`` (the trainer's single-GPU and DDP way, the default): fp32 master weights, the
  forward under ``torch.autocast(bfloat16)`` on CUDA;
* ``bf16``: bf16 parameters, as FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` computes
  (its fp32 master copy lives in the shards, outside this single-GPU step).

Three ways to run the same ``Transformer``:

* eager: the PyTorch reference backend (``JPEGLM_BACKEND=torch``), SDPA attention;
* torch.compile: the reference backend with every block compiled, as ``compile=true`` in the
  trainer does (``layer.compile()``);
* jpeglm: the Triton backend (RMSNorm, RoPE, SwiGLU, fused linear + cross-entropy kernels) and
  flash-attn 2 when it is installed (SDPA otherwise; the table says which).

Reported: tokens/s (median step time after warm-up), MFU = training FLOPs/token x tokens/s /
the card's dense bf16 peak, with the trainer's count of FLOPs/token (``6 N + 6 L d T``: causal
attention computes half the score matrix; ``Transformer.flops_per_token``; the peaks are
``jpeglm.train.metrics.PEAK_BF16_FLOPS``), and peak memory. On CPU only the reference path of small
models runs (fp32, no autocast, as the trainer on CPU), and says so. Results go to the "Model"
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, parse_device_args, today, write_section  # noqa: E402

from jpeglm.model import ModelArgs, Transformer  # noqa: E402

PRECISIONS = ("autocast", "bf16")


def _trainer_peaks() -> dict[str, float]:
    """``jpeglm.train.metrics.PEAK_BF16_FLOPS``, the trainer's table of dense bf16 peaks. Should
    importing jpeglm.train.metrics fail (a GPU machine with a partial install), the literal is read
    from the module's source instead."""
    try:
        from jpeglm.train.metrics import PEAK_BF16_FLOPS

        return PEAK_BF16_FLOPS
    except ImportError:
        import ast
        import importlib.util

        source = open(importlib.util.find_spec("jpeglm.train.metrics").origin).read()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "PEAK_BF16_FLOPS" for t in node.targets
            ):
                return ast.literal_eval(node.value)
        raise


def peak_flops(name: str) -> float | None:
    """The card's dense bf16 peak FLOP/s (the trainer's table), or None if unknown."""
    return next((v for k, v in _trainer_peaks().items() if k in name), None)


def build(size: str, mode: str, device: str, precision: str, seq: int) -> Transformer:
    """The model as the trainer builds it: fp32 parameters (``autocast``) or bf16 ones, each
    block compiled for ``torch.compile``."""
    args = ModelArgs.from_name(size, max_seq_len=max(seq, ModelArgs.from_name(size).max_seq_len))
    backend = "triton" if mode == "jpeglm" else "torch"
    with torch.device("meta"):  # no memory until materialised on the device
        model = Transformer(args, backend=backend)
    model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():  # random init on the device: reset_parameters draws on the CPU
        for p in model.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    if precision == "bf16":
        model.to(torch.bfloat16)
    if mode == "torch.compile":
        for layer in model.layers:
            layer.compile()
    return model


def train_step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor,
                  autocast: bool):  # fmt: skip
    """One trainer step: forward under autocast (when on), backward, clip, AdamW, zero_grad."""
    inputs, targets = idx[:, :-1], idx[:, 1:]
    device = idx.device.type
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast else (
        contextlib.nullcontext)  # fmt: skip

    def step() -> float:
        with ctx():
            loss = model(inputs, targets=targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure(
    size: str, mode: str, batch: int, seq: int, steps: int, device: str,
    precision: str = "autocast", warmup: int | None = None,
) -> dict[str, float | str]:  # fmt: skip
    """Tokens/s, MFU and peak memory of one (size, mode, precision)."""
    model = build(size, mode, device, precision, seq)
    flops_per_token = model.flops_per_token(seq)  # causal attention counted as half
    attention = model.backend.attention_impl
    cuda = device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, model.args.vocab_size, (batch, seq + 1), device=device, generator=gen)
    step = train_step_fn(model, opt, idx, autocast=cuda and precision == "autocast")

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup if warmup is not None else (3 if cuda else 1)):  # (and compilation)
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    tokens_per_s = batch * seq / seconds
    result: dict[str, float | str] = {
        "tokens/s": tokens_per_s,
        "step ms": seconds * 1e3,
        "attention": attention,
        "params": model.num_params(),
        "precision": precision if cuda else "fp32",
        "flops/token": flops_per_token,
        "loss": float(losses[-1]) if losses else float("nan"),
    }
    if cuda:
        result["peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
        peak = peak_flops(torch.cuda.get_device_name())
        if peak:
            result["MFU"] = flops_per_token * tokens_per_s / peak
    del model, opt, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def table(results: list[tuple[str, str, int, int, dict | None]], gpu: bool) -> str:
    head = ("| model | params | batch x seq | precision | implementation | attention | tokens/s "
            "| vs eager |")  # fmt: skip
    sep = "|---|---:|---|---|---|---|---:|---:|"
    if gpu:
        head += " MFU | peak GiB |"
        sep += "---:|---:|"
    rows = [head, sep]
    eager: dict[tuple[str, str], float] = {}
    for size, mode, batch, seq, r in results:
        if r is None:
            rows.append(f"| {size} | | {batch} x {seq} | | {mode} | | failed (see log) | |"
                        + (" | |" if gpu else ""))  # fmt: skip
            continue
        key = (size, str(r["precision"]))
        if mode == "eager":
            eager[key] = float(r["tokens/s"])
        speed = f"{float(r['tokens/s']) / eager[key]:.2f}x" if key in eager else ""
        params, rate = int(r["params"]) / 1e6, float(r["tokens/s"])
        row = (f"| {size} | {params:,.1f}M | {batch} x {seq} | {r['precision']} | {mode} "
               f"| {r['attention']} | {rate:,.0f} | {speed} |")  # fmt: skip
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
    ap.add_argument("--precision", nargs="+", choices=PRECISIONS, default=None,
                    help="GPU: autocast (fp32 weights, the trainer's) and/or bf16 (FSDP-style "
                         "bf16 parameters); default both. CPU: always fp32")  # fmt: skip
    args, gpu = parse_device_args(ap)
    device = "cuda" if gpu else "cpu"
    sizes = args.sizes or (["base", "1B"] if gpu else ["tiny", "small"])
    seq = args.seq or (12288 if gpu else 256)
    steps = args.steps or (10 if gpu else 5)
    modes = ["eager", "torch.compile", "jpeglm"] if gpu else ["eager"]
    precisions = (args.precision or list(PRECISIONS)) if gpu else ["autocast"]

    results = []
    for size in sizes:
        batch = args.batch or (2 if size == "base" and gpu else 1)
        for precision in precisions:
            for mode in modes:
                try:
                    r = measure(size, mode, batch, seq, steps, device, precision)
                except Exception as e:  # OOM or a missing piece: record and go on
                    print(f"{size} / {precision} / {mode}: {type(e).__name__}: {e}",
                          file=sys.stderr)  # fmt: skip
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
            "Training step as `jpeglm.train.loop` runs it (forward + backward + clipping + fused "
            "AdamW): `autocast` = fp32 master weights under bf16 autocast (the trainer on one "
            "GPU / DDP), `bf16` = bf16 parameters (FSDP2's compute dtype). Median of "
            f"{steps} steps after 3 warm-up steps. MFU against the card's dense bf16 peak with "
            "6N + 6LdT FLOPs per token (causal attention counted as half, as the trainer "
            "reports it). Command: `python benchmarks/bench_model.py`."
        )
        goals = "Goals (issue 5, H100): training >= 1.5x eager; MFU >= 45% at 1B."
        body = "\n\n".join([header, table(results, gpu), goals])
    else:
        header = (
            f"Machine: {machine()}, no GPU. Date: {today()}. torch {torch.__version__} "
            f"({torch.get_num_threads()} torch threads; 1-min load average at the end "
            f"{os.getloadavg()[0]:.1f}: a shared, busy machine).\n"
            "**CPU run: reference path only** (eager PyTorch, fp32 -- the trainer uses no "
            "autocast on CPU -- small models): Triton runs on CPU only in its interpreter and "
            "flash-attn needs CUDA, so kernels, torch.compile and MFU are not measured here. "
            "Training step = forward + backward + clipping + AdamW, median "
            f"of {steps} steps. The GPU comparison (base and 1B at 12,288 tokens: eager / "
            "torch.compile / jpeglm kernels, trainer's fp32 + autocast and bf16 parameters, "
            "tokens/s and MFU) is still open: run `python benchmarks/bench_model.py` on a CUDA "
            "machine, or `bash scripts/gpu_check.sh` (README, 'GPU check')."
        )
        body = "\n\n".join([header, table(results, gpu)])
    print(body)
    if not args.no_write:
        write_section("Model", body)


if __name__ == "__main__":
    main()
