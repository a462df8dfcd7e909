"""The stages of ``scripts/gpu_check.sh``: one function per stage, one process per stage.

    python benchmarks/gpu_check.py stage NAME --n N --out DIR [--dry]
    python benchmarks/gpu_check.py summary --out DIR [--to FILE] [--dry]
    python benchmarks/gpu_check.py compiled-decode --layers L --cache C --out FILE

Each stage writes ``DIR/<n>_<name>.md`` (its tables) and ``DIR/<n>_<name>.json`` (status,
one-line headline, numbers) as it goes, so a stage killed at its cap still leaves what it
measured, and exits 0 (PASS), 1 (FAIL) or 3 (SKIP). Each watches its cap
(``JPEGLM_STAGE_TIMEOUT``, :func:`time_left`): a measurement that no longer fits is a row
saying so, not a kill. ``summary`` folds the stage files and the script's ``stages.tsv`` into
``summary.md`` (``DIR/summary.md``, or ``FILE``), markdown ready to paste into
benchmarks/RESULTS.md ("GPU check" section). ``compiled-decode`` is the decode stage's child
process: the sampler's compiled step on a 7B-width model of a few layers, killed by the stage
when compiling overruns.

``--dry`` (automatic without CUDA): tiny shapes on the CPU, Triton kernels in the interpreter
(``TRITON_INTERPRET=1``, set by the script); what needs a GPU is reported SKIP, but its code
still runs at tiny shapes, so the script cannot rot unseen. GPU numbers are only ever those of
a real run.

MFU (stage ``train``) uses the trainer's count: training FLOPs per token ``6 N + 6 L d T``
(``Transformer.flops_per_token``: N the matmul parameters, L layers, d width, T the sequence;
causal attention computes half of the ``12 L d T`` score/value products), times tokens/s,
over the card's dense bf16 peak (``jpeglm.train.metrics.PEAK_BF16_FLOPS``).

This module imports torch only inside the stages: ``summary`` runs without it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GiB = 2**30

# Datasheet HBM bandwidth (bytes/s) by a substring of the device name; first match wins.
HBM_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("A10G", 0.6e12),
    ("L4", 0.3e12),
]

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
EXIT = {PASS: 0, FAIL: 1, SKIP: 3}
ARCHIVE = "gpu_check.tar.gz"  # beside summary.md: every stage file (scripts/gpu_check.sh)

_STAGE_END = math.inf  # monotonic deadline of the running stage (run_stage sets it)


def time_left() -> float:
    """Seconds before the running stage reaches its cap (``JPEGLM_STAGE_TIMEOUT``; the
    script kills it there), less a 5 s margin to save the report."""
    return _STAGE_END - time.monotonic() - 5.0


# ------------------------------------------------------------------------------- reporting


def md_table(head: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A markdown table; ``align`` one character per column (``l`` or ``r``)."""
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def pct(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


@dataclass
class Report:
    """What a stage found; saved after every change, so a timeout keeps the partial result."""

    n: int
    name: str
    out: Path
    dry: bool
    status: str = PASS
    headline: str = ""
    parts: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.save()

    def fail(self, why: str) -> None:
        self.status = FAIL
        self.failures.append(why)
        self.save()

    def skip(self, why: str) -> None:
        if self.status != FAIL:
            self.status = SKIP
        self.headline = self.headline or f"skipped: {why}"
        self.parts.append(f"SKIP: {why}")
        self.save()

    def save(self) -> None:
        stem = self.out / f"{self.n}_{self.name}"
        body = "\n\n".join(self.parts)
        if self.failures:
            body += "\n\nFailed checks:\n" + "\n".join(f"- {f}" for f in self.failures)
        stem.with_suffix(".md").write_text(f"### {self.n} {self.name}\n\n{body.strip()}\n")
        record = {
            "n": self.n, "name": self.name, "status": self.status, "headline": self.headline,
            "dry": self.dry, "failures": self.failures, "data": self.data,
        }  # fmt: skip
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, stem.with_suffix(".json"))


# ---------------------------------------------------------------------------------- helpers


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_bench(name: str):
    """A benchmarks/ script (``bench_NAME.py``) as a module."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "not installed"


def _importable(module: str) -> str:
    """'yes', or why not (a package can be installed yet fail to import)."""
    try:
        importlib.import_module(module)
        return "yes"
    except Exception as e:
        return f"no ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"


def _python_headers() -> str:
    """'yes (path)' when Python.h is where a CMake build of ``_core`` looks, else why not."""
    import sysconfig

    include = sysconfig.get_paths()["include"]
    header = Path(include) / "Python.h"
    if header.is_file():
        return f"yes ({include})"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"no: {header} missing (install python3-dev or python{version}-dev)"


def _env_data(out: Path) -> dict:
    """What stage env recorded (device, versions, measured ceilings), or {}."""
    for path in sorted(out.glob("*_env.json")):
        try:
            return json.loads(path.read_text())["data"]
        except (OSError, ValueError, KeyError):
            pass
    return {}


def datasheet_bandwidth(name: str) -> float | None:
    return next((bw for key, bw in HBM_BANDWIDTH if key in name), None)


def rel_err(a, truth) -> float:
    """||a - truth|| / ||truth|| in float64 (0 when both are 0)."""
    a, t = a.detach().double(), truth.detach().double()
    denom = t.norm().item()
    diff = (a - t).norm().item()
    return diff / denom if denom > 0 else diff


def cosine(a, b) -> float:
    import torch

    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _random_init_(model, std: float = 0.02) -> None:
    """Random weights drawn on the model's device (``reset_parameters`` draws on the CPU, which
    takes minutes at 7B)."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)


# ------------------------------------------------------------------------------ stage: env


def stage_env(r: Report) -> None:
    """Versions, the device, and two ceilings measured on it: device-to-device copy bandwidth
    and a large bf16 matmul."""
    import torch

    info: dict[str, object] = {
        "date": _dt.date.today().isoformat(),
        "host": f"{platform.node()} {platform.system()} {platform.release()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch)": torch.version.cuda or "none",
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "liger-kernel": _version("liger-kernel"),
        "liger_kernel.transformers imports": _importable("liger_kernel.transformers"),
        "Python headers (to build _core)": _python_headers(),
        "flash-attn": _version("flash-attn"),
        "jpeglm._core": _importable("jpeglm._core"),
        "jpeglm.kernels": _importable("jpeglm.reference.kernels"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
        "mode": "dry (CPU, tiny shapes)" if r.dry else "GPU",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update({
            "device": torch.cuda.get_device_name(0), "capability": f"{p.major}.{p.minor}",
            "SMs": p.multi_processor_count, "memory GiB": round(p.total_memory / GiB, 1),
            "devices visible": torch.cuda.device_count(),
        })  # fmt: skip
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            info["driver, max SM / mem MHz"] = smi.stdout.strip() or smi.stderr.strip()[:100]
        except (OSError, subprocess.TimeoutExpired) as e:
            info["driver, max SM / mem MHz"] = f"nvidia-smi: {e}"
        # ceilings: a 4 GiB device copy (bytes read + written) and an 8192^3 bf16 matmul
        x = torch.empty(GiB, dtype=torch.float32, device="cuda")
        y = torch.empty_like(x)
        ms = _cuda_time(lambda: y.copy_(x), reps=10)
        info["copy TB/s (measured)"] = round(2 * x.numel() * 4 / (ms / 1e3) / 1e12, 2)
        del x, y
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        ms = _cuda_time(lambda: a @ b, reps=10)
        info["bf16 matmul TFLOP/s (measured)"] = round(2 * 8192**3 / (ms / 1e3) / 1e12)
        bw = datasheet_bandwidth(info["device"])
        info["HBM TB/s (datasheet)"] = bw / 1e12 if bw else "unknown"
        r.headline = (f"{info['device']}, {info['SMs']} SMs, {info['memory GiB']} GiB; "
                      f"copy {info['copy TB/s (measured)']} TB/s, bf16 matmul "
                      f"{info['bf16 matmul TFLOP/s (measured)']} TFLOP/s")  # fmt: skip
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}), no CUDA"
        r.headline = f"no CUDA: dry run, torch {torch.__version__}, triton {info['triton']}"
    missing = []
    if not info["Python headers (to build _core)"].startswith("yes"):
        missing.append("no Python headers: _core cannot be built here (stage core SKIP, the "
                       "sampler tests left out)")  # fmt: skip
    if info["liger_kernel.transformers imports"] != "yes":
        missing.append("liger_kernel.transformers does not import: no Liger comparison"
                       + (" (the dry run never installs it)" if r.dry else ""))  # fmt: skip
    r.headline += "".join(f"; {m}" for m in missing) or "; Python headers and Liger: ok"
    r.data.update(info)
    r.add(md_table(["what", "value"], [[k, v] for k, v in info.items()], "ll"))


def _cuda_time(fn: Callable[[], object], reps: int = 10, warmup: int = 3) -> float:
    """Mean milliseconds of ``fn`` over ``reps`` calls, CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


# -------------------------------------------------------------------------- stage: kernels

# relative-error floors: the kernel passes when its error (vs the fp32 reference) is within
# max(2 x eager PyTorch's error in the same dtype, floor)
ERR_FLOOR = {"fp32": 1e-4, "bf16": 2e-2}


def _kernel_shapes(dry: bool) -> dict:
    if dry:
        return {"tokens": 24, "dim": 64, "hidden": 176, "heads": 4, "head_dim": 16,
                "vocabs": (70, 323), "batch": 2}  # fmt: skip
    # Llama-7B: hidden 4096, MLP 11008, 32 heads of 128; the 32k Llama vocabulary and ours
    return {"tokens": 4096, "dim": 4096, "hidden": 11008, "heads": 32, "head_dim": 128,
            "vocabs": (32000, 323), "batch": 2}  # fmt: skip


def _accuracy_rows(dtype_name: str, shapes: dict, device) -> list[dict]:
    """Every kernel and eager PyTorch in ``dtype`` against the reference on fp32 copies of the
    same inputs: relative errors of the output and each gradient, peak memory on CUDA."""
    import torch

    from jpeglm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
    from jpeglm.kernels.rms_norm import rms_norm
    from jpeglm.kernels.rope import rope
    from jpeglm.kernels.swiglu import swiglu
    from jpeglm.reference import kernels as reference

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator(device="cpu").manual_seed(0)
    T, D, H = shapes["tokens"], shapes["dim"], shapes["hidden"]
    heads, hd, B = shapes["heads"], shapes["head_dim"], shapes["batch"]

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device)

    def leaves(*ts, dt):
        return [t.to(dt).detach().requires_grad_() for t in ts]

    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(T // B).float(), inv_freq)
    cos, sin = angles.cos().to(device), angles.sin().to(device)

    # (op, kernel, reference, inputs (fp32), names of: output, gradient of each input)
    cases: list[tuple[str, Callable, Callable, list, list[str]]] = []
    cases.append(("RMSNorm", lambda x, w: rms_norm(x, w, 1e-5),
                  lambda x, w: reference.rms_norm(x, w, 1e-5),
                  [rand(T, D, scale=2.0), rand(D, scale=0.1, shift=1.0)],
                  ["out", "dx", "dW"]))  # fmt: skip
    cases.append(("RoPE", lambda x: rope(x, cos, sin),
                  lambda x: reference.rope(x, cos, sin),
                  [rand(B, T // B, heads, hd)], ["out", "dx"]))  # fmt: skip
    cases.append(("SwiGLU", swiglu, reference.swiglu,
                  [rand(T, H, scale=2.0), rand(T, H)], ["out", "dgate", "dup"]))  # fmt: skip
    for vocab in shapes["vocabs"]:
        targets = torch.randint(0, vocab, (T,), generator=gen)
        targets[::17] = -100
        targets = targets.to(device)
        cases.append((
            f"linear+CE V={vocab}",
            lambda h, w, t=targets: fused_linear_cross_entropy(h, w, t),
            lambda h, w, t=targets: reference.fused_linear_cross_entropy(h, w, t),
            [rand(T, D), rand(vocab, D, scale=0.02)], ["loss", "dh", "dW"],
        ))  # fmt: skip

    rows = []
    cuda = device.type == "cuda"
    for op, kernel, ref, base, names in cases:
        truth_in = leaves(*base, dt=torch.float32)
        truth = ref(*truth_in)
        dy = None if truth.ndim == 0 else torch.randn(truth.shape, generator=gen).to(device)
        truth_grads = torch.autograd.grad(truth, truth_in, dy)
        errs, peaks = {}, {}
        for who, fn in (("jpeglm", kernel), ("eager", ref)):
            inputs = leaves(*base, dt=dtype)
            if cuda:
                _sync()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            out = fn(*inputs)
            grads = torch.autograd.grad(out, inputs, None if dy is None else dy.to(dtype))
            if cuda:
                _sync()
                peaks[who] = (torch.cuda.max_memory_allocated() - before) / 2**20
            errs[who] = [rel_err(out, truth)] + [
                rel_err(g, t) for g, t in zip(grads, truth_grads, strict=True)
            ]
            del out, grads, inputs
        for i, what in enumerate(names):
            k, e = errs["jpeglm"][i], errs["eager"][i]
            limit = max(2 * e, ERR_FLOOR[dtype_name])
            rows.append({
                "op": op, "dtype": dtype_name, "tensor": what, "jpeglm": k, "eager": e,
                "limit": limit, "ok": k <= limit,
                "peak MiB jpeglm": peaks.get("jpeglm"), "peak MiB eager": peaks.get("eager"),
            })  # fmt: skip
        del truth, truth_grads, truth_in
        _free()
    return rows


def _chunk_rows_table() -> tuple[str, list[dict]]:
    """How the fused linear + CE splits its rows, at the shapes that matter (arithmetic only:
    the launcher's own rule)."""
    from jpeglm.kernels.fused_linear_cross_entropy import chunk_rows

    rows, data = [], []
    for label, tokens, dim in (("kernel bench (7B width)", 8192, 4096),
                               ("1B training, 12,288 tokens", 12288, 2048),
                               ("7B training, 12,288 tokens", 12288, 4096)):  # fmt: skip
        for vocab in (32000, 323):
            chunk = min(chunk_rows(tokens, vocab, dim), tokens)
            n = math.ceil(tokens / chunk)
            logits_mib = chunk * vocab * 2 / 2**20
            h_mib = tokens * dim * 2 / 2**20
            rows.append([label, f"{vocab:,}", f"{tokens:,} x {dim}", n, f"{chunk:,}",
                         f"{logits_mib:,.1f}", f"{tokens * vocab * 2 / 2**20:,.1f}",
                         f"{h_mib:,.1f}"])  # fmt: skip
            data.append({"shape": label, "vocab": vocab, "chunks": n, "chunk_rows": chunk})
    text = md_table(
        ["shape", "vocab", "tokens x dim", "chunks", "rows/chunk", "bf16 logits/chunk MiB",
         "all logits MiB", "h MiB"], rows, "llrrrrrr",
    )  # fmt: skip
    return text, data


def stage_kernels(r: Report) -> None:
    """Accuracy of the compiled kernels at Llama-7B shapes (fp32, bf16) vs the reference; speed
    and peak memory vs eager, torch.compile and Liger (bf16); the linear + CE chunking."""
    import torch

    device = _device()
    shapes = _kernel_shapes(r.dry)
    r.add(
        f"Accuracy: {'tiny shapes, Triton interpreter (dry run)' if r.dry else 'Llama-7B shapes'}"
        f" -- {shapes['tokens']} tokens, dim {shapes['dim']}, MLP {shapes['hidden']}, "
        f"{shapes['heads']} heads of {shapes['head_dim']}, vocab {shapes['vocabs']}. Relative "
        "L2 error of each output and gradient against the PyTorch reference run on fp32 copies "
        "of the same inputs; 'eager' is that reference run in the tested dtype. A kernel passes "
        "within max(2 x eager, floor) (floor: fp32 1e-4, bf16 2e-2). Peak MiB: memory above "
        "the inputs during forward + backward (CUDA only)."
    )
    table_rows, all_rows = [], []
    for dtype_name in ("fp32", "bf16"):
        rows = _accuracy_rows(dtype_name, shapes, device)
        all_rows += rows
        for x in rows:
            table_rows.append([x["op"], x["dtype"], x["tensor"], fmt(x["jpeglm"], ".2e"),
                               fmt(x["eager"], ".2e"), fmt(x["limit"], ".1e"),
                               "ok" if x["ok"] else "**FAIL**", fmt(x["peak MiB jpeglm"], ",.0f"),
                               fmt(x["peak MiB eager"], ",.0f")])  # fmt: skip
            if not x["ok"]:
                r.fail(f"{x['op']} {x['dtype']} {x['tensor']}: error {x['jpeglm']:.2e} > "
                       f"{x['limit']:.1e}")  # fmt: skip
    r.data["accuracy"] = all_rows
    r.add(md_table(["op", "dtype", "tensor", "jpeglm err", "eager err", "limit", "", "jpeglm "
                    "peak MiB", "eager peak MiB"], table_rows, "lllrrrlrr"))  # fmt: skip
    worst = max(all_rows, key=lambda x: x["jpeglm"] / x["limit"])
    r.headline = (f"{sum(x['ok'] for x in all_rows)}/{len(all_rows)} errors within limits "
                  f"(worst {worst['op']} {worst['dtype']} {worst['tensor']} "
                  f"{worst['jpeglm']:.1e})")  # fmt: skip

    chunks_text, chunks = _chunk_rows_table()
    r.data["flce_chunks"] = chunks
    r.add("Fused linear + cross-entropy, rows per chunk (the launcher's rule, "
          "`chunk_rows`): at vocab 323 every shape is one chunk -- all logits at once, as "
          "eager holds them, and smaller than h -- so the op saves memory only at large "
          "vocabularies.\n\n" + chunks_text)  # fmt: skip

    if r.dry:
        r.add("Speed (eager / torch.compile / Liger / jpeglm, bf16, 8,192 tokens): needs CUDA, "
              "not run in the dry mode.")  # fmt: skip
        return
    kb = _load_bench("bench_kernels")
    tokens, dtype, dev = 8192, torch.bfloat16, "cuda"
    builders = [
        ("RMSNorm", lambda: kb.rms_norm_case(tokens, 4096, dev, dtype, True)),
        ("RoPE", lambda: kb.rope_case(tokens // 2048, 2048, 32, 128, dev, dtype, True)),
        ("SwiGLU", lambda: kb.swiglu_case(tokens, 11008, dev, dtype, True)),
        ("linear+CE vocab 32000", lambda: kb.flce_case(tokens, 4096, 32000, dev, dtype, True)),
        ("linear+CE vocab 323", lambda: kb.flce_case(tokens, 4096, 323, dev, dtype, True)),
    ]
    speed_rows, speed = [], []
    for op, build in builders:
        if time_left() < 15:  # each case compiles its torch.compile contender: ~5-15 s
            speed_rows.append([op, "all", f"not run: {max(time_left(), 0):.0f} s left in the "
                               "stage", "", "", "", ""])  # fmt: skip
            continue
        case = build()
        res: dict[str, tuple[float, float] | None] = {}
        for name, run in case.contenders.items():
            try:
                res[name] = kb.measure_gpu(run)
            except Exception as e:  # a peer's API that moved, OOM: record and go on
                print(f"{case.op} / {name}: {type(e).__name__}: {e}", file=sys.stderr)
                res[name] = None
            _free()
        eager, liger = res.get("eager"), res.get("Liger")
        for name, m in res.items():
            if m is None:
                speed_rows.append([case.op, name, "failed", "", "", "", ""])
                continue
            ms, mib = m
            speed.append({"op": case.op, "impl": name, "ms": ms, "peak_mib": mib})
            speed_rows.append([
                case.op, name, f"{ms:.3f}", f"{eager[0] / ms:.2f}x" if eager else "",
                f"{liger[0] / ms:.2f}x" if liger else "n/a", f"{mib:,.0f}",
                f"{mib / eager[1]:.2f}x" if eager and eager[1] > 0 else "",
            ])  # fmt: skip
        r.data["speed"] = speed
        del case
        _free()
        r.save()
    r.add(f"Speed, bf16, {tokens:,} tokens at Llama-7B sizes: forward + backward, median of "
          "`triton.testing.do_bench`; peak memory above the inputs. Liger-Kernel "
          f"{_version('liger-kernel')}.\n\n" + md_table(
              ["op", "implementation", "fwd+bwd ms", "vs eager", "vs Liger", "peak MiB",
               "memory vs eager"], speed_rows, "llrrrrr"))  # fmt: skip
    flce323 = {s["impl"]: s for s in speed if s["op"].endswith("vocab 323")}
    if "jpeglm" in flce323 and "eager" in flce323:
        j, e = flce323["jpeglm"], flce323["eager"]
        r.headline += (f"; linear+CE at vocab 323: 1 chunk, peak {j['peak_mib']:,.0f} MiB vs "
                       f"eager {e['peak_mib']:,.0f}")  # fmt: skip
    r.save()


# ---------------------------------------------------------------------------- stage: model


GRAD_RTOL = 1e-4  # per parameter, fp32: ||g - g_ref|| / ||g_ref|| (tests/test_kernels.py)


def _checkpointing_rows(r: Report, args, state: dict, idx, targets, g_ref: dict,
                        compiled: bool, modes: tuple[str, ...]) -> list[list[object]]:  # fmt: skip
    """Every parameter's gradient on the Triton backend under each activation-checkpointing
    mode -- eager, or each block compiled as the trainer's ``compile=true`` does -- against
    ``g_ref`` (the PyTorch backend, no checkpointing), fp32."""
    from jpeglm.model import Transformer

    how = "blocks compiled" if compiled else "eager"
    rows = []
    for ac in modes:
        if compiled and time_left() < 45:  # a compile of one block, forward and backward
            rows.append([how, ac, f"not run: {max(time_left(), 0):.0f} s left in the stage",
                         "", "", "", ""])  # fmt: skip
            continue
        model = Transformer(args, backend="triton").to(idx.device)
        model.load_state_dict(state)
        model.set_activation_checkpointing(ac)
        if compiled:
            for layer in model.layers:
                layer.compile()
        t0 = time.perf_counter()
        try:
            model(idx, targets=targets).backward()
        except Exception as e:
            print(f"{how} / {ac}: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append([how, ac, f"error: {type(e).__name__}", "", "", "", "**FAIL**"])
            r.fail(f"gradients, {how}, AC {ac}: {type(e).__name__}: {str(e)[:120]}")
            continue
        seconds = time.perf_counter() - t0
        errs = {n: rel_err(p.grad, g_ref[n]) for n, p in model.named_parameters()}
        worst = max(errs, key=errs.get)
        over = sum(e > GRAD_RTOL for e in errs.values())
        ok = errs[worst] <= GRAD_RTOL
        r.data[f"grads {how} / {ac}"] = {"worst": worst, "rel_err": errs[worst],
                                         "over_limit": over, "params": len(errs)}  # fmt: skip
        rows.append([how, ac, worst, f"{errs[worst]:.1e}", f"{over}/{len(errs)}",
                     f"{seconds:.1f}", "ok" if ok else "**FAIL**"])  # fmt: skip
        if not ok:
            r.fail(f"gradients, {how}, AC {ac}: {worst} off by {errs[worst]:.1e} (relative)")
        del model
        _free()
        r.save()
    return rows


def stage_model(r: Report) -> None:
    """The whole model, Triton backend vs PyTorch backend: loss and gradients (fp32, and the
    trainer's bf16 autocast on CUDA); every parameter's gradient under activation
    checkpointing none / selective / full (eager, then -- on CUDA, as time permits -- with
    each block compiled); decoding through the KV cache vs the full forward."""
    import torch

    from jpeglm.model import ModelArgs, Transformer

    device = _device()
    cuda = device.type == "cuda"
    size, batch, seq = ("tiny", 2, 32) if r.dry else ("base", 2, 1024)
    args = ModelArgs.from_name(size)
    torch.manual_seed(0)
    ref = Transformer(args, backend="torch").to(device)
    fast = Transformer(args, backend="triton").to(device)
    fast.load_state_dict(ref.state_dict())
    gen = torch.Generator(device="cpu").manual_seed(1)
    idx = torch.randint(0, args.vocab_size, (batch, seq), generator=gen).to(device)
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -100

    rows = []
    precisions = ["fp32"] + (["autocast bf16"] if cuda else [])
    for precision in precisions:
        losses, grads = [], []
        for model in (ref, fast):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "fp32"):
                loss = model(idx, targets=targets)
            loss.backward()
            losses.append(float(loss))
            grads.append([p.grad.detach().clone() for p in model.parameters()])
        cos_each = [cosine(a, b) for a, b in zip(grads[0], grads[1], strict=True)]
        flat = [torch.cat([g.flatten().double() for g in gs]) for gs in grads]
        cos_all = cosine(flat[0], flat[1])
        dloss = abs(losses[1] - losses[0])
        tol_loss, tol_cos = (1e-4, 0.9999) if precision == "fp32" else (2e-2, 0.99)
        ok = dloss <= tol_loss and cos_all >= tol_cos
        verdict = "ok" if ok else "**FAIL**"
        rows.append([precision, f"{losses[0]:.5f}", f"{losses[1]:.5f}", f"{dloss:.1e}",
                     f"{cos_all:.6f}", f"{min(cos_each):.6f}", verdict])  # fmt: skip
        r.data[f"train {precision}"] = {"loss_torch": losses[0], "loss_triton": losses[1],
                                        "cos_all": cos_all, "cos_min": min(cos_each)}  # fmt: skip
        if not ok:
            r.fail(f"{precision}: loss diff {dloss:.1e} (limit {tol_loss}) or gradient cosine "
                   f"{cos_all:.6f} (limit {tol_cos})")  # fmt: skip
        del grads, flat
    ref.zero_grad(set_to_none=True)
    fast.zero_grad(set_to_none=True)
    ref(idx, targets=targets).backward()  # fp32, no checkpointing: the reference gradients
    g_ref = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
    ref.zero_grad(set_to_none=True)
    state = ref.state_dict()
    modes = ("selective", "full", "none")  # selective first: the mode that once failed
    ac_rows = _checkpointing_rows(r, args, state, idx, targets, g_ref, False, modes)
    r.add(f"Model `{size}` ({fast.num_params() / 1e6:.1f}M parameters), batch {batch} x {seq} "
          f"tokens; Triton backend (attention: {fast.backend.attention_impl}) vs PyTorch "
          "backend, same weights: loss and gradient cosine (all parameters together, and the "
          "worst single parameter).\n\n" + md_table(
              ["precision", "loss torch", "loss triton", "|diff|", "grad cosine",
               "worst param cosine", ""], rows, "lrrrrrl"))  # fmt: skip

    # decode through the cache vs the full forward, the Triton backend
    prefill, steps = (16, 8) if r.dry else (512, 16)
    dec_rows = []
    with torch.no_grad():
        full = fast(idx[:, : prefill + steps]).float()
        for fmt_name in ["fp32"] + (["bf16"] if cuda else []):
            if fmt_name != "fp32":
                fast.prepare_inference(fmt_name)
            act = fast.inference["act_dtype"] if fast.inference else None
            fast.setup_caches(batch, prefill + steps, dtype=act)
            pos = torch.arange(prefill, device=device)
            pre = fast(idx[:, :prefill], input_pos=pos).float()
            worst = (pre - full[:, :prefill]).abs().max().item()
            agree = [(pre.argmax(-1) == full[:, :prefill].argmax(-1)).float().mean().item()]
            for j in range(steps):
                p = prefill + j
                step = fast.decode(idx[:, p : p + 1], torch.tensor([p], device=device)).float()
                worst = max(worst, (step - full[:, p]).abs().max().item())
                agree.append((step.argmax(-1) == full[:, p].argmax(-1)).float().mean().item())
            scale = full.abs().max().item()
            tol = 1e-3 * max(scale, 1.0) if fmt_name == "fp32" else float("inf")
            ok = worst <= tol
            dec_rows.append([fmt_name, f"{prefill} + {steps}", f"{worst:.2e}", f"{scale:.2f}",
                             f"{min(agree):.3f}", "ok" if ok else "**FAIL**"])  # fmt: skip
            r.data[f"decode {fmt_name}"] = {"max_abs_diff": worst, "logit_scale": scale,
                                            "argmax_agreement_min": min(agree)}  # fmt: skip
            if not ok:
                r.fail(f"decode {fmt_name}: logits differ from the full forward by {worst:.2e}")
            fast.clear_caches()
            fast.clear_inference()
    r.add("Prefill + one-token decode steps through the KV cache vs the full causal forward "
          "(Triton backend; fp32 weights, and the sampler's bf16 inference weights on CUDA: "
          "the bf16 row is reported, not checked).\n\n" + md_table(
              ["weights", "prefill + steps", "max |logit diff|", "max |logit|",
               "argmax agreement", ""], dec_rows, "llrrrl"))  # fmt: skip

    del fast
    _free()
    if r.dry:
        why = (
            "not run in the dry run (time): tests/test_kernels.py compiles them on CPU, "
            "stage graph_breaks trains compiled"
        )
        ac_rows.append(["blocks compiled", "all", why, "", "", "", ""])
    else:
        ac_rows += _checkpointing_rows(r, args, state, idx, targets, g_ref, True, modes)
    r.add(f"Every parameter's gradient, fp32, Triton backend under each activation-"
          f"checkpointing mode vs the PyTorch backend without it (same weights, batch {batch} "
          f"x {seq}): the worst parameter's relative error ||g - g_ref|| / ||g_ref|| and how "
          f"many exceed {GRAD_RTOL:g}. A loss or an all-parameter cosine hides one weight's "
          "error (issue 26: selective checkpointing re-rotated an in-place RoPE's saved "
          "input; 0.83 on one weight, losses equal). 'blocks compiled': each block "
          "`torch.compile`d, as `compile=true` trains; s: first forward + backward, "
          "compiling included.\n\n" + md_table(
              ["run", "activation ckpt", "worst parameter", "rel. error", "> limit", "s", ""],
              ac_rows, "lllrrrl"))  # fmt: skip
    grads = [v for k, v in r.data.items() if k.startswith("grads")]
    r.headline = "; ".join(
        f"{k}: cos {v['cos_all']:.5f}, dloss {abs(v['loss_torch'] - v['loss_triton']):.1e}"
        for k, v in r.data.items() if k.startswith("train")
    ) + (f"; per-parameter gradients under AC: worst {max(v['rel_err'] for v in grads):.1e} "
         f"over {len(grads)} runs" if grads else "") + "; decode max diff " + ", ".join(
        f"{k.split()[1]} {v['max_abs_diff']:.1e}" for k, v in r.data.items()
        if k.startswith("decode")
    )  # fmt: skip
    r.save()


# --------------------------------------------------------------------- stage: graph_breaks


def _explain(fn: Callable, *args, **kwargs) -> dict:
    import torch._dynamo as dynamo

    dynamo.reset()
    try:
        out = dynamo.explain(fn)(*args, **kwargs)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    reasons = []
    for b in out.break_reasons:
        text = str(getattr(b, "reason", b)).splitlines()[0][:160]
        if text not in reasons:
            reasons.append(text)
    return {"graphs": out.graph_count, "breaks": out.graph_break_count, "reasons": reasons}


def stage_graph_breaks(r: Report) -> None:
    """``torch._dynamo.explain`` over the training paths (one block, as ``compile=true``
    compiles it; the whole forward with its loss) and the sampler's decode step, which it
    compiles with ``fullgraph=True`` (a break there is an error: FAIL)."""
    import torch

    from jpeglm.model import ModelArgs, Transformer

    device = _device()
    cuda = device.type == "cuda"
    args = ModelArgs.from_name("tiny" if r.dry else "base", n_layers=2)
    # the kernels are torch.library ops (triton_op on a GPU, custom ops under the interpreter):
    # Dynamo traces both backends, in the dry run too
    backends = ["torch", "triton"]
    batch, seq = 2, 64
    rows = []
    for backend in backends:
        torch.manual_seed(0)
        model = Transformer(args, backend=backend).to(device)
        idx = torch.randint(0, args.vocab_size, (batch, seq), device=device)
        x = torch.randn(batch, seq, args.dim, device=device, requires_grad=True)
        cos, sin = model.rope.cos[:seq], model.rope.sin[:seq]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            block = _explain(model.layers[0], x, cos, sin)
            whole = _explain(model, idx, targets=idx)
        fmt_name = "bf16" if cuda else "fp32"
        with torch.no_grad():
            model.prepare_inference(fmt_name)
            model.setup_caches(batch, seq, dtype=model.inference["act_dtype"])
            model(idx[:, :8], input_pos=torch.arange(8, device=device))
            decode = _explain(model.decode, idx[:, 8:9], torch.tensor([8], device=device), 64)
        for what, res in (("training: one block", block), ("training: forward + loss", whole),
                          (f"decode step ({fmt_name} weights, fullgraph)", decode)):  # fmt: skip
            r.data[f"{backend} / {what}"] = res
            if "error" in res:
                rows.append([backend, what, "", "", "error: " + res["error"]])
            else:
                rows.append([backend, what, res["graphs"], res["breaks"],
                             "; ".join(res["reasons"][:4]) or "none"])  # fmt: skip
            if what.startswith("decode"):
                if "error" in res:
                    r.fail(f"{backend} decode: explain failed: {res['error']}")
                elif res["breaks"]:
                    r.fail(f"{backend} decode step has {res['breaks']} graph break(s): "
                           f"{'; '.join(res['reasons'][:2])}")  # fmt: skip
        del model
        _free()
        r.save()
    r.add(f"`torch._dynamo.explain`, model with {args.n_layers} layers of "
          f"`{'tiny' if r.dry else 'base'}` width, batch {batch} x {seq}"
          f"{', bf16 autocast for training' if cuda else ''}"
          + (" (dry run: the Triton kernels are custom ops run by the interpreter)"
             if r.dry else "")
          + ". The sampler compiles the decode step with fullgraph=True: any break there "
          "FAILs; training breaks are reported.\n\n"
          + md_table(["backend", "path", "graphs", "breaks", "reasons"], rows,
                     "llrrl"))  # fmt: skip
    r.headline = "; ".join(
        f"{k}: {v.get('breaks', 'error')} break(s)" for k, v in r.data.items()
        if "block" in k or "decode" in k
    )  # fmt: skip
    r.save()
    _triton_compile_training(r, device)


TRITON_COMPILE_NEED_S = 25  # compiling one block forward + backward, then the steps


def _triton_compile_training(r: Report, device) -> None:
    """The row "Triton + compile": a few AdamW steps of a 2-layer model built by the trainer's
    ``build_model`` with ``backend=triton``, ``compile=true`` and selective activation
    checkpointing (AC inside each compiled block, torchtitan's order), bf16 autocast on CUDA;
    the losses, against the same steps eager on the torch backend, and Dynamo's graph-break
    count over the whole run (``torch._dynamo.utils.counters``). Any break FAILs."""
    from types import SimpleNamespace

    import torch
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from jpeglm.model import ModelArgs
    from jpeglm.train.parallel import build_model

    what = "Triton + compile: training"
    if time_left() < TRITON_COMPILE_NEED_S:
        r.data[what] = {"error": f"not run: {max(time_left(), 0):.0f} s left in the stage"}
        r.add(f"{what}: {r.data[what]['error']}")
        return
    size, batch, seq, steps = ("tiny", 2, 32, 2) if r.dry else ("small", 4, 512, 4)
    args = ModelArgs.from_name(size, n_layers=2, max_seq_len=seq)
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, args.vocab_size, (steps, batch, seq + 1), generator=gen).to(device)
    cuda = device.type == "cuda"
    losses: dict[str, list[float]] = {}
    dynamo.reset()
    counters.clear()
    t0 = time.monotonic()
    for name, backend, compiled in (("torch eager", "torch", False),
                                    ("triton + compile", "triton", True)):  # fmt: skip
        cfg = SimpleNamespace(backend=backend, activation_checkpoint="selective",
                              compile=compiled, fsdp=False, seed=0, init_from=None)  # fmt: skip
        model, fwd = build_model(args, cfg, device, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cuda)
        losses[name] = []
        for step in range(steps):
            x, y = idx[step, :, :-1], idx[step, :, 1:]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = fwd(x, targets=y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(float(loss.detach()))
        del model, fwd, opt
        _free()
    breaks = sum(counters["graph_break"].values())
    reasons = [str(k).splitlines()[0][:160] for k in counters["graph_break"]][:4]
    graphs = counters["stats"]["unique_graphs"]
    diff = max(abs(a - b) for a, b in zip(losses["torch eager"], losses["triton + compile"]))
    tol = 5e-2 if cuda else 1e-4
    r.data[what] = {"graphs": graphs, "breaks": breaks, "reasons": reasons, "losses": losses,
                    "max_loss_diff": diff, "seconds": time.monotonic() - t0}  # fmt: skip
    if breaks:
        r.fail(f"{what}: {breaks} graph break(s): {'; '.join(reasons[:2])}")
    if not diff <= tol:
        r.fail(f"{what}: losses differ from torch eager by {diff:.2e} (limit {tol:g})")
    rows = [[name, " ".join(f"{v:.4f}" for v in vals)] for name, vals in losses.items()]
    r.add(f"**{what}** -- `build_model` (backend triton, compile=true, activation_checkpoint="
          f"selective), `{size}` width, 2 layers, batch {batch} x {seq}, {steps} AdamW steps"
          f"{', bf16 autocast' if cuda else ', fp32'}: Dynamo compiled {graphs} graph(s) with "
          f"**{breaks} graph break(s)**; max loss difference vs torch eager {diff:.1e} "
          f"(limit {tol:g}); {time.monotonic() - t0:.0f} s, compiling included.\n\n"
          + md_table(["run", "loss per step"], rows, "ll"))  # fmt: skip
    r.headline += f"; triton + compile training: {breaks} break(s), dloss {diff:.1e}"
    r.save()


# --------------------------------------------------------------------------- stage: decode


def stage_decode(r: Report) -> None:
    """One-token decode steps at 7B in bf16 with random weights (the sampler's prepared
    inference weights), cache 12,288, batch 1 and 16 (a shorter cache when the card cannot
    hold it): eager and CUDA-graph replay; achieved bandwidth against the HBM bound (weights +
    KV cache read per step). Then the sampler's compiled step (fullgraph, reduce-overhead) on
    a 7B-width model of :data:`COMPILED_DECODE_LAYERS` layers (compiling all 32 takes minutes;
    every layer is the same code), in a child process killed when it overruns what is left of
    the stage: SKIP, with the reason."""
    import torch

    from jpeglm.model import ModelArgs, Transformer

    device = _device()
    cuda = device.type == "cuda"
    if r.dry:
        size, fmt_name, cache_target, batches = "tiny", "fp32", 64, (1, 2)
    else:
        size, fmt_name, cache_target, batches = "7B", "bf16", 12288, (1, 16)
    args = ModelArgs.from_name(size)
    with torch.device("meta"):
        model = Transformer(args)
    if cuda:
        model.to(torch.bfloat16)
    model.to_empty(device=device)
    _random_init_(model)
    model.eval()
    with torch.no_grad():
        model.prepare_inference(fmt_name)
    weight_bytes = model.inference_bytes()
    act = model.inference["act_dtype"]
    kv_token = 2 * args.n_layers * args.n_kv_heads * args.head_dim * torch.finfo(act).bits // 8
    env = _env_data(r.out)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    hbm = datasheet_bandwidth(name) if cuda else None
    copy_bw = env.get("copy TB/s (measured)")
    copy_bw = float(copy_bw) * 1e12 if isinstance(copy_bw, (int, float)) else None
    r.data.update({"model": size, "params": model.num_params(), "weight_bytes": weight_bytes,
                   "kv_bytes_per_token": kv_token, "backend": model.backend.name,
                   "attention": model.backend.attention_impl, "hbm_datasheet": hbm,
                   "copy_measured": copy_bw, "rows": []})  # fmt: skip
    rows = []

    def record(batch: int, cache: int, mode: str, ms: float, weights: int = weight_bytes,
               kv: int = kv_token) -> None:  # fmt: skip
        moved = weights + batch * cache * kv
        achieved = moved / (ms / 1e3)
        row = {"batch": batch, "cache": cache, "mode": mode, "ms": ms,
               "tokens_per_s": batch / (ms / 1e3), "GB_per_step": moved / 1e9,
               "achieved_TBps": achieved / 1e12,
               "of_datasheet": achieved / hbm if hbm else None,
               "of_copy": achieved / copy_bw if copy_bw else None}  # fmt: skip
        r.data["rows"].append(row)
        rows.append([batch, f"{cache:,}", mode, f"{ms:.2f}", f"{row['tokens_per_s']:,.0f}",
                     f"{row['GB_per_step']:.1f}", f"{row['achieved_TBps']:.2f}",
                     pct(row["of_datasheet"]), pct(row["of_copy"])])  # fmt: skip
        r.save()

    for batch in batches:
        cache = cache_target
        if cuda:  # the longest cache (a multiple of 256) that fits beside the weights
            _free()
            free = torch.cuda.mem_get_info()[0] - 6 * GiB
            fits = int(free // (batch * kv_token)) // 256 * 256
            cache = max(256, min(cache_target, fits))
        with torch.no_grad():
            model.setup_caches(batch, cache, dtype=act, device=device)
            tok = torch.randint(0, args.vocab_size, (batch, 1), device=device)
            lengths = [cache] if r.dry else sorted({min(2048, cache), cache})
            for kv_len in lengths:
                pos = torch.tensor([kv_len - 1], device=device)  # the last slot: reads them all

                def step(tok=tok, pos=pos, kv_len=kv_len):
                    return model.decode(tok, pos, kv_len)

                if not cuda:
                    step()
                    t0 = time.perf_counter()
                    for _ in range(3):
                        step()
                    record(batch, kv_len, "eager (CPU)", (time.perf_counter() - t0) / 3 * 1e3)
                    continue
                record(batch, kv_len, "eager", _cuda_time(step, reps=10))
                try:
                    graph_ms = _graph_time(step)
                    record(batch, kv_len, "CUDA graph", graph_ms)
                except Exception as e:
                    print(f"CUDA graph capture failed: {type(e).__name__}: {e}", file=sys.stderr)
                    rows.append([batch, f"{kv_len:,}", "CUDA graph", "failed", "", "", "", "",
                                 ""])  # fmt: skip
        model.clear_caches()
        _free()

    # int8 weight-only sampling weights beside bf16 (eager; the compiled int8 step is the
    # child's): ~1 byte per weight read instead of 2, if the dequantisation keeps up
    with torch.no_grad():
        model.prepare_inference("int8")
        int8_bytes = model.inference_bytes()
        cache = r.data["rows"][-1]["cache"] if r.data["rows"] else cache_target
        model.setup_caches(1, cache, dtype=model.inference["act_dtype"], device=device)
        tok = torch.randint(0, args.vocab_size, (1, 1), device=device)
        pos = torch.tensor([cache - 1], device=device)

        def step_int8(tok=tok, pos=pos, cache=cache):
            return model.decode(tok, pos, cache)

        if cuda:
            ms = _cuda_time(step_int8, reps=10)
        else:
            step_int8()
            t0 = time.perf_counter()
            for _ in range(3):
                step_int8()
            ms = (time.perf_counter() - t0) / 3 * 1e3
        record(1, cache, "eager int8" + ("" if cuda else " (CPU)"), ms, weights=int8_bytes)
        model.clear_caches()

    model = None  # the 7B weights go before the child loads its own
    _free()
    compile_skip = ""
    if cuda:  # the sampler's compiled step, in a child process the stage kills on overrun
        compile_skip = _compiled_decode_rows(r, COMPILED_DECODE_LAYERS, cache_target, record,
                                             rows)  # fmt: skip

    bound = f"{hbm / 1e12:.2f} TB/s datasheet" if hbm else "no datasheet bandwidth"
    r.add(
        f"Decode step, `{size}` ({r.data['params'] / 1e6:,.1f}M parameters, random weights), "
        f"{fmt_name} inference weights ({weight_bytes / 1e9:.3g} GB read per step), KV cache "
        f"{act} ({kv_token / 2**10:.0f} KiB per token and sequence), backend "
        f"{r.data['backend']}, attention {r.data['attention']}. Each step decodes "
        "at the cache's last position, so attention reads every slot; HBM bound = (weights + "
        f"KV read) / bandwidth ({bound}; copy measured in stage env: "
        f"{fmt(copy_bw and copy_bw / 1e12, '.2f')} TB/s)."
        + (f" The compiled rows: a {COMPILED_DECODE_LAYERS}-layer model of 7B width (its own "
           f"eager row beside them; {r.data['compiled']['weight_bytes'] / 1e9:.2f} GB read per "
           f"step), compiling took {r.data['compiled']['compile_s']:.0f} s."
           if "compiled" in r.data else "")
        + ("" if cuda else " Dry run: CPU timings, no bound.") + "\n\n"
        + md_table(["batch", "cache", "mode", "ms/step", "tokens/s", "GB/step", "TB/s",
                    "of HBM peak", "of copy BW"], rows, "rrlrrrrrr")
    )  # fmt: skip
    if r.data["rows"]:
        best = {}  # per batch: the fastest mode at the longest cache, the full model only
        for row in r.data["rows"]:
            if "layers)" in row["mode"]:
                continue
            b = best.get(row["batch"])
            if b is None or (row["cache"], -row["ms"]) > (b["cache"], -b["ms"]):
                best[row["batch"]] = row
        r.headline = "; ".join(
            f"batch {b}: {x['ms']:.2f} ms/step at cache {x['cache']:,} ({x['mode']}), "
            + (f"{100 * x['of_datasheet']:.0f}% of HBM peak" if x["of_datasheet"] else "no bound")
            for b, x in sorted(best.items())
        )  # fmt: skip
        rows_few = [row for row in r.data["rows"] if "layers)" in row["mode"]]
        few = {row["mode"].split(" (")[0]: row for row in rows_few}
        for w in ("bf16", "int8"):  # the compiled step per weight format, against its eager
            c, e = few.get(f"torch.compile {w}"), few.get(f"eager {w}")
            if c and e and e["of_datasheet"]:
                r.headline += (f"; {COMPILED_DECODE_LAYERS}-layer step compiled {w} "
                               f"{100 * c['of_datasheet']:.0f}% of HBM peak "
                               f"(eager {100 * e['of_datasheet']:.0f}%)")  # fmt: skip
    if r.dry:
        r.skip("decode speed against the HBM bound needs CUDA; the code ran at tiny shapes")
    elif compile_skip:
        r.skip(compile_skip)
    r.save()


COMPILED_DECODE_LAYERS = 4


def _compiled_decode_rows(r: Report, layers: int, cache: int, record: Callable,
                          rows: list) -> str:  # fmt: skip
    """Run :func:`compiled_decode` in a child process within what is left of the stage;
    record its rows. Returns why it did not finish ('' when it did)."""
    import signal

    allowed = time_left() - 5
    if allowed < 30:
        why = f"the compiled decode step was not tried: {max(allowed, 0):.0f} s left in the stage"
        rows.append([1, "", f"torch.compile (sampler, {layers} layers)", why, "", "", "", "",
                     ""])  # fmt: skip
        return why
    out = r.out / f"{r.n}_compiled_decode.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "compiled-decode", "--layers",
           str(layers), "--cache", str(cache), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: inductor's workers too
    why = ""
    try:
        rc = proc.wait(timeout=allowed)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    done = json.loads(out.read_text()) if out.exists() else {}
    if done:
        r.data["compiled"] = done["bf16"] if "bf16" in done else next(iter(done.values()))
        r.data["compiled_formats"] = done
    for fmt_name, res in done.items():  # bf16, then int8 (weight-only, dequantised in-kernel)
        sizes = {"weights": res["weight_bytes"], "kv": res["kv_bytes_per_token"]}
        record(1, res["cache"], f"eager {fmt_name} ({layers} layers)", res["eager_ms"], **sizes)
        record(1, res["cache"], f"torch.compile {fmt_name} (sampler, {layers} layers)",
               res["compiled_ms"], **sizes)  # fmt: skip
    missing = [f for f in ("bf16", "int8") if f not in done]
    if rc is None:
        why = (
            f"compiling the sampler's decode step ({layers} layers of 7B width, "
            f"{', '.join(missing)}) did not finish in the {allowed:.0f} s left in the stage"
        )
        for f in missing:
            rows.append([1, "", f"torch.compile {f} (sampler, {layers} layers)",
                         "SKIP: overran", "", "", "", "", ""])  # fmt: skip
    elif rc != 0 or missing:
        for f in missing:
            rows.append([1, "", f"torch.compile {f} (sampler, {layers} layers)", "failed", "",
                         "", "", "", ""])  # fmt: skip
        r.fail(f"compiled decode step: the child exited {rc} (see log.txt)")
    return why


def compiled_decode(layers: int, cache: int, out: Path) -> int:
    """The decode stage's child: the sampler's compiled step
    (:func:`jpeglm.inference.loop.compile_decode`: fullgraph, static shapes, CUDA graphs and
    coordinate-descent tuning) on a 7B-width, ``layers``-layer model with random weights,
    batch 1 at the last of ``cache`` slots, for bf16 and then int8 (weight-only) sampling
    weights; after each, writes the compile time and the eager / compiled ms per step to
    ``out`` (JSON: one entry per weight format), so what finished is kept if it is killed."""
    import torch

    from jpeglm.inference.loop import compile_decode
    from jpeglm.model import ModelArgs, Transformer

    args = ModelArgs.from_name("7B", n_layers=layers)
    with torch.device("meta"):
        model = Transformer(args)
    model.to(torch.bfloat16)
    model.to_empty(device="cuda")
    _random_init_(model)
    model.eval()
    results = {}
    for fmt_name in ("bf16", "int8"):
        torch._dynamo.reset()
        with torch.no_grad():
            model.prepare_inference(fmt_name)
            act = model.inference["act_dtype"]
            model.setup_caches(1, cache, dtype=act, device="cuda")
            tok = torch.randint(0, args.vocab_size, (1, 1), device="cuda")
            pos = torch.tensor([cache - 1], device="cuda")
            eager_ms = _cuda_time(lambda t=tok, p=pos: model.decode(t, p, cache), reps=10)
            step = compile_decode(model, torch.device("cuda"))
            t0 = time.perf_counter()
            for _ in range(3):  # compile, record the CUDA graph, replay
                step(tok, pos, cache)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            compiled_ms = _cuda_time(lambda s=step, t=tok, p=pos: s(t, p, cache), reps=20)
        kv_token = 2 * layers * args.n_kv_heads * args.head_dim * torch.finfo(act).bits // 8
        results[fmt_name] = {
            "layers": layers, "cache": cache, "weight_bytes": model.inference_bytes(),
            "kv_bytes_per_token": kv_token,
            "compile_s": compile_s, "eager_ms": eager_ms, "compiled_ms": compiled_ms,
        }  # fmt: skip
        out.write_text(json.dumps(results))
    return 0


def _graph_time(step: Callable[[], object], reps: int = 20) -> float:
    """Milliseconds per replay of ``step`` captured into a CUDA graph."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return _cuda_time(graph.replay, reps=reps)


# ---------------------------------------------------------------------------- stage: train


def stage_train(r: Report) -> None:
    """Training tokens/s and MFU for the 1B preset at 12,288 tokens, the trainer's way (fp32
    master weights, bf16 autocast, fused AdamW): eager PyTorch, the jpeglm kernels, and
    torch.compile per block (``compile=true``)."""
    import torch

    bench = _load_bench("bench_model")
    cuda = torch.cuda.is_available()
    if r.dry:
        size, batch, seq, steps, warmup, modes = "tiny", 2, 32, 1, 1, ["eager", "jpeglm"]
    else:
        size, batch, seq, steps, warmup = "1B", 1, 12288, 3, 2
        modes = ["eager", "jpeglm", "torch.compile"]
    device = "cuda" if cuda else "cpu"
    rows = []
    eager = None
    for mode in modes:
        need = 50 if mode == "torch.compile" else 15  # compiling a block, forward and backward
        if time_left() < need:
            rows.append([mode, f"not run: {max(time_left(), 0):.0f} s left in the stage", "", "",
                         "", "", ""])  # fmt: skip
            continue
        try:
            res = bench.measure(size, mode, batch, seq, steps, device, "autocast", warmup=warmup)
        except Exception as e:
            print(f"{mode}: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append([mode, "failed", "", "", "", "", ""])
            r.fail(f"{mode}: {type(e).__name__}: {str(e)[:120]}")
            _free()
            continue
        if mode == "eager":
            eager = res["tokens/s"]
        r.data[mode] = res
        if not math.isfinite(float(res["loss"])):
            r.fail(f"{mode}: loss {res['loss']}")
        rows.append([mode, res["attention"], f"{res['step ms']:.0f}", f"{res['tokens/s']:,.0f}",
                     f"{res['tokens/s'] / eager:.2f}x" if eager else "",
                     pct(res.get("MFU"), 1),
                     fmt(res.get("peak GiB"), ".1f")])  # fmt: skip
        r.save()
    fpt = next((v["flops/token"] for v in r.data.values() if isinstance(v, dict)), float("nan"))
    r.add(
        f"`{size}` preset, batch {batch} x {seq:,} tokens, "
        f"{'fp32 master weights under bf16 autocast, fused AdamW' if cuda else 'fp32, AdamW'}, "
        f"gradient clipping; median of {steps} steps after {warmup} warm-up. MFU = "
        f"{fpt:.4g} FLOP/token (6N + 6LdT, causal attention as half) x tokens/s / the "
        "card's dense bf16 peak (`jpeglm.train.metrics.PEAK_BF16_FLOPS`).\n\n"
        + md_table(["implementation", "attention", "step ms", "tokens/s", "vs eager", "MFU",
                    "peak GiB"], rows, "llrrrrr")
    )  # fmt: skip
    r.headline = "; ".join(
        f"{m}: {v['tokens/s']:,.0f} tok/s" + (f", MFU {100 * v['MFU']:.1f}%" if "MFU" in v else "")
        for m, v in r.data.items() if isinstance(v, dict)
    )  # fmt: skip
    if r.dry:
        r.skip("tokens/s and MFU need CUDA; the training steps ran at tiny shapes on the CPU")
    r.save()


# --------------------------------------------------------------------------- stage: memory


def stage_memory(r: Report) -> None:
    """Peak memory of a training step (1B, 12,288 tokens, one GPU, the trainer's precision)
    with activation checkpointing none / selective / full, both backends, against
    ``jpeglm plan``'s prediction."""
    import torch

    from jpeglm.model import ModelArgs
    from jpeglm.train import memory as planmod

    bench = _load_bench("bench_model")
    cuda = torch.cuda.is_available()
    size, seq = ("tiny", 64) if r.dry else ("1B", 12288)
    args = ModelArgs.from_name(size)
    t0 = time.perf_counter()
    predicted = {row.ac: row.total for row in planmod.plan(args, seq_len=seq, gpus=1,
                                                            strategies=("DDP",))}  # fmt: skip
    r.data["plan_seconds"] = time.perf_counter() - t0
    r.data["predicted_GiB"] = {k: v / GiB for k, v in predicted.items()}
    device = "cuda" if cuda else "cpu"
    rows = []
    # dry: the PyTorch backend only (the Triton interpreter's steps ran in stage train)
    for backend_mode in ("eager",) if r.dry else ("eager", "jpeglm"):
        for ac in planmod.AC_MODES:
            pred = predicted[ac]
            if time_left() < 10:
                rows.append(["torch" if backend_mode == "eager" else "triton", ac,
                             f"not run: {max(time_left(), 0):.0f} s left", f"{pred / GiB:.2f}",
                             "", ""])  # fmt: skip
                continue
            try:
                measured = _step_memory(bench, size, backend_mode, ac, seq, device)
            except torch.OutOfMemoryError:
                _free()
                fits = cuda and pred + planmod.RESERVE <= torch.cuda.mem_get_info()[1]
                rows.append(
                    [
                        "torch" if backend_mode == "eager" else "triton",
                        ac,
                        "OOM",
                        f"{pred / GiB:.2f}",
                        "",
                        "**FAIL**" if fits else "(plan: no fit)",
                    ]
                )
                if fits and backend_mode == "eager":
                    r.fail(f"{backend_mode} / {ac}: out of memory where the plan fits")
                continue
            ratio = measured / pred if measured else None
            key = f"{backend_mode} / {ac}"
            r.data[key] = {"measured_GiB": measured and measured / GiB, "predicted_GiB": pred / GiB,
                           "ratio": ratio}  # fmt: skip
            verdict = ""
            if ratio is not None:
                verdict = "ok" if ratio <= 1.10 or backend_mode == "jpeglm" else "**FAIL**"
                if backend_mode == "eager" and ratio > 1.10:
                    r.fail(f"{key}: measured {measured / GiB:.1f} GiB > 1.10 x the plan's "
                           f"{pred / GiB:.1f} GiB")  # fmt: skip
            rows.append(["torch" if backend_mode == "eager" else "triton", ac,
                         fmt(measured and measured / GiB, ".2f"), f"{pred / GiB:.2f}",
                         fmt(ratio, ".2f"), verdict])  # fmt: skip
            _free()
            r.save()
    r.add(
        f"`{size}` at {seq:,} tokens (micro-batch 1), one GPU: `torch.cuda.max_memory_allocated` "
        "over a training step after the first (optimizer state resident), fp32 weights under "
        "bf16 autocast, vs `jpeglm plan`'s '1 GPU' total for the same activation "
        "checkpointing. The plan models the PyTorch backend (the torch rows must stay within "
        "1.10x of it); the Triton kernels save less, so their rows should come in under it. "
        "Not in either figure: the CUDA context and allocator caching.\n\n"
        + md_table(["backend", "activation ckpt", "measured GiB", "plan GiB", "measured/plan",
                    ""], rows, "llrrrl")
    )  # fmt: skip
    r.headline = (
        "; ".join(
            f"{k}: {v['measured_GiB']:.1f} / plan {v['predicted_GiB']:.1f} GiB"
            for k, v in r.data.items()
            if isinstance(v, dict) and v.get("measured_GiB")
        )
        or f"plan: {', '.join(f'{k} {v:.3g} GiB' for k, v in r.data['predicted_GiB'].items())}"
    )
    if r.dry:
        r.skip("peak memory needs CUDA; the plan and the checkpointed steps ran at tiny shapes")
    r.save()


def _step_memory(bench, size: str, mode: str, ac: str, seq: int, device: str) -> int | None:
    """Peak bytes allocated during the second training step (None on the CPU)."""
    import torch

    cuda = device == "cuda"
    model = bench.build(size, mode, device, "autocast", seq)
    model.set_activation_checkpointing(ac)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, model.args.vocab_size, (1, seq + 1), device=device, generator=gen)
    step = bench.train_step_fn(model, opt, idx, autocast=cuda)
    step()  # creates the optimizer state, which the plan counts as resident
    if not cuda:
        step()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


# --------------------------------------------------------------------------- stage: pytest


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


PYTEST_FILES = ["tests/test_kernels.py", "tests/test_sample.py", "tests/test_sample_cuda.py"]
# (the sampler's need _core; test_sample_cuda.py runs the sampling loop on the card)
# the compiled-block gradient variants: stage model runs them, at a larger size
PYTEST_DESELECT = "not (gradients_per_parameter and compiled)"


def stage_pytest(r: Report) -> None:
    """tests/test_kernels.py (the kernels; the model's per-parameter gradients under
    activation checkpointing) and the sampler's tests on the GPU, ``JPEGLM_BACKEND=triton``.
    The compiled-block gradient variants are left to stage model (:data:`PYTEST_DESELECT`)."""
    if r.dry:
        r.skip("the test suite runs separately in CI (scripts/test.sh); on a GPU this stage "
               f"runs {' and '.join(PYTEST_FILES)} there")  # fmt: skip
        return
    files = PYTEST_FILES[:1]
    core = _importable("jpeglm._core") == "yes"
    if core:
        files += PYTEST_FILES[1:]
    env = {**os.environ, "JPEGLM_BACKEND": "triton"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
           "-k", PYTEST_DESELECT, *files]  # fmt: skip
    allowed = max(time_left(), 1.0)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=allowed)  # fmt: skip
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:  # what it printed by then
        stdout, stderr, rc = _text(e.stdout), _text(e.stderr), None
    print(stdout[-20000:])
    print(stderr[-5000:], file=sys.stderr)
    lines = [x for x in stdout.splitlines() if x.strip()]
    failed = [x for x in lines if x.startswith(("FAILED", "ERROR"))]
    if rc is None:
        progress = lines[-1].split("[")[-1].strip(" ]") if lines else "0%"
        last = f"did not finish in the {allowed:.0f} s left (at {progress})"
    else:
        last = lines[-1].strip("= ") if lines else "(no output)"
    r.data.update({"files": files, "returncode": rc, "result": last,
                   "failed": failed})  # fmt: skip
    r.headline = last
    r.add(f"`JPEGLM_BACKEND=triton python -m pytest -q -k '{PYTEST_DESELECT}' {' '.join(files)}`"
          + ("" if core else f" ({PYTEST_FILES[1]} left out: no `jpeglm._core`)")
          + f": {last}\n\n" + "\n".join(f"- {x}" for x in failed[:30]))  # fmt: skip
    if failed or (rc is not None and rc != 0):
        r.fail(f"pytest: {last}")
    elif rc is None:
        r.skip(last)


STAGES: dict[str, Callable[[Report], None]] = {  # in the order scripts/gpu_check.sh runs them
    "env": stage_env,
    "kernels": stage_kernels,
    "model": stage_model,
    "train": stage_train,
    "memory": stage_memory,
    "decode": stage_decode,
    "graph_breaks": stage_graph_breaks,
    "pytest": stage_pytest,
}


def run_stage(name: str, n: int, out: Path, dry: bool) -> int:
    global _STAGE_END
    _STAGE_END = time.monotonic() + float(os.environ.get("JPEGLM_STAGE_TIMEOUT", "inf"))
    import torch

    dry = dry or not torch.cuda.is_available()
    r = Report(n, name, out, dry)
    r.save()
    try:
        STAGES[name](r)
    except Exception as e:
        import traceback

        traceback.print_exc()
        r.fail(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    r.save()
    print(f"[{name}] {r.status}: {r.headline}")
    return EXIT[r.status]


# -------------------------------------------------------------------------------- summary


def summary(out: Path, dry: bool, dest: Path | None = None) -> Path:
    """``summary.md`` (at ``dest``, default ``out/summary.md``) from ``out/stages.tsv`` (the
    script's verdicts: status, seconds, note) and the stage files in ``out``; written after
    every stage and at exit."""
    stages = []
    tsv = out / "stages.tsv"
    if tsv.exists():
        for line in tsv.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 4:
                stages.append(parts + [""] * (5 - len(parts)))
    env = _env_data(out)
    card = env.get("device", "unknown device")
    if "SMs" in env:
        card += f" ({env['SMs']} SMs, {env.get('memory GiB')} GiB, capability "
        card += f"{env.get('capability')}, driver {env.get('driver, max SM / mem MHz', '?')})"
    total = sum(int(s[3]) for s in stages if s[3].isdigit())
    date = env.get("date", _dt.date.today().isoformat())
    lines = [
        "## GPU check" + (" (dry run)" if dry else ""),
        "",
        f"Card: {card}. Date: {date}. Host: {env.get('host', '?')}, {env.get('cpus', '?')} "
        f"CPUs. Python {env.get('python', '?')}, torch {env.get('torch', '?')} (CUDA "
        f"{env.get('cuda (torch)', '?')}), triton {env.get('triton', '?')}, Liger-Kernel "
        f"{env.get('liger-kernel', '?')}, flash-attn {env.get('flash-attn', '?')}. Command: "
        f"`bash scripts/gpu_check.sh{' --dry' if dry else ''}`; {total} s of stages. Every "
        f"stage's files: `{ARCHIVE}` beside this summary.",
    ]
    if dry:
        lines += ["", "**Dry run** (no CUDA): tiny shapes on the CPU, Triton kernels in the "
                  "interpreter. It checks the script and the kernels' arithmetic; none of its "
                  "timings is a GPU figure."]  # fmt: skip
    lines += ["", md_table(["stage", "status", "time", "result"], [
        [f"{s[0]} {s[1]}", s[2], f"{s[3]} s", _stage_headline(out, s)] for s in stages
    ], "llrl")]  # fmt: skip
    for s in stages:
        md = out / f"{s[0]}_{s[1]}.md"
        if md.exists():
            lines += ["", md.read_text().strip()]
            if s[4]:
                lines += ["", f"({s[4]})"]
    path = dest or out / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".summary.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _stage_headline(out: Path, s: list[str]) -> str:
    try:
        record = json.loads((out / f"{s[0]}_{s[1]}.json").read_text())
        text = record.get("headline", "")
        if record.get("failures"):
            text += " -- failed: " + "; ".join(record["failures"][:2])
    except (OSError, ValueError):
        text = ""
    if s[4]:
        text = f"{s[4]}; {text}" if text else s[4]
    return text.replace("|", "/").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stage")
    st.add_argument("name", choices=sorted(STAGES))
    st.add_argument("--n", type=int, required=True)
    st.add_argument("--out", type=Path, required=True)
    st.add_argument("--dry", action="store_true")
    sm = sub.add_parser("summary")
    sm.add_argument("--out", type=Path, required=True)
    sm.add_argument("--to", type=Path, default=None)
    sm.add_argument("--dry", action="store_true")
    cd = sub.add_parser("compiled-decode")
    cd.add_argument("--layers", type=int, required=True)
    cd.add_argument("--cache", type=int, required=True)
    cd.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args(argv)
    if ns.cmd == "compiled-decode":
        return compiled_decode(ns.layers, ns.cache, ns.out)
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.cmd == "summary":
        print(summary(ns.out, ns.dry, ns.to))
        return 0
    return run_stage(ns.name, ns.n, ns.out, ns.dry)


if __name__ == "__main__":
    sys.exit(main())
