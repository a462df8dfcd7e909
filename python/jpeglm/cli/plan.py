"""``jpeglm plan``: the per-GPU memory of training (:mod:`jpeglm.train.memory`) as a report -- the
command's options and their checks, a trainer config read for its model and batch, one markdown
table per model with its footnotes, and how the numbers were obtained."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jpeglm.train.memory import DDP_SINGLE, GiB, PlanRow, param_counts, plan

if TYPE_CHECKING:
    from jpeglm.model import ModelArgs

__all__ = ["add_arguments", "format_table", "parse_size", "report", "run"]

NOTES = {
    "fsdp-accum": "accum > 1: the non-final micro-batches skip the reduce-scatter "
    "(set_requires_gradient_sync(False)), so the whole model's unsharded fp32 gradients stay "
    "resident: 4 B/param, not divided by the GPU count.",
}


def format_table(rows: Sequence[PlanRow], gpu_mem: float, mark: tuple[str, str] | None = None
                 ) -> str:  # fmt: skip
    """A markdown table of ``rows`` (GiB per GPU) with footnotes; ``mark`` flags one row."""
    cap = f"{gpu_mem / GiB:g} GiB"
    head = ("| strategy | AC | params | grads | optimizer | bf16 weights | activations "
            f"| transient | total GiB | {cap} |")  # fmt: skip
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    footnotes: list[str] = []
    for r in rows:
        marks = ""
        for note in r.notes:
            if note not in footnotes:
                footnotes.append(note)
            marks += f"[{footnotes.index(note) + 1}]"
        ac = r.ac + (" (config)" if mark == (r.strategy, r.ac) else "")
        cells = [r.params, r.grads, r.optimizer, r.bf16_weights, r.activations, r.transient]
        vals = " | ".join(f"{c / GiB:.1f}" for c in cells)
        grads_at = vals.split(" | ")
        grads_at[1] += marks
        verdict = "fits" if r.fits(gpu_mem) else "does not fit"
        lines.append(f"| {r.strategy} | {ac} | {' | '.join(grads_at)} | {r.total / GiB:.1f} "
                     f"| {verdict} |")  # fmt: skip
    for i, note in enumerate(footnotes, 1):
        lines.append(f"\n[{i}] {NOTES[note]}")
    return "\n".join(lines)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """``"80GB"`` / ``"80GiB"`` / ``"80"`` -> bytes. GB is read as GiB, as GPU makers mean it
    (an "80 GB" H100 has 81,559 MiB); a bare number is GiB."""
    m = _SIZE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"GPU memory {text!r} is not a size like 80GB, 141GiB or 24")
    unit = (m.group(2) or "G").upper()
    return float(m.group(1)) * 2 ** (10 * "BKMGT".index(unit))


def describe(args: ModelArgs, seq_len: int, gpus: int, micro_batch: int, accum: int) -> str:
    """One line naming what the table is for."""
    total = param_counts(args)[0]
    return (f"{total / 1e9:.2f}B params (dim {args.dim}, {args.n_layers} layers, hidden "
            f"{args.hidden_dim}, vocab {args.vocab_size}); {gpus} GPU(s); micro-batch "
            f"{micro_batch} x {seq_len} tokens; accum {accum}")  # fmt: skip


METHOD = (
    "GiB per GPU. Activations and transients measured on CPU (PyTorch reference ops, the "
    "trainer's dtypes) at small dims and extrapolated by a linear fit; the GPU's Triton kernels "
    "save less, so they are upper bounds. 'fits' leaves 2 GiB for the CUDA context, NCCL and "
    "workspaces; allocator fragmentation is not counted."
)


def run(
    models: Sequence[str],
    *,
    seq_len: int,
    gpus: int,
    gpu_mem: float,
    micro_batch: int,
    accum: int,
    model_args: dict | None = None,
    mark: tuple[str, str] | None = None,
) -> str:
    """The full report (one table per model) as markdown."""
    from jpeglm.model import ModelArgs

    parts = []
    for name in models:
        try:
            args = ModelArgs.from_name(name, **{"max_seq_len": seq_len, **(model_args or {})})
        except TypeError as e:
            raise ValueError(str(e)) from e
        rows = plan(args, seq_len=seq_len, gpus=gpus, micro_batch=micro_batch, accum=accum)
        parts.append(f"### {name}: {describe(args, seq_len, gpus, micro_batch, accum)}\n")
        parts.append(format_table(rows, gpu_mem, mark) + "\n")
    parts.append(METHOD)
    return "\n".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``jpeglm plan`` options."""
    p.add_argument("config", nargs="?", help="trainer TOML config (model, micro_batch_size, ...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p.add_argument("--model", default=None, help="preset (default: 1B and 7B; or the config's)")
    p.add_argument("--gpus", default="1", help="GPUs (data-parallel ranks)")
    p.add_argument("--gpu-mem", default="80GB", help="memory per GPU, e.g. 80GB, 141GiB")
    p.add_argument("--seq-len", default="12288", help="tokens per sequence")
    p.add_argument("--micro-batch", default=None, help="sequences per GPU per forward")
    p.add_argument("--accum", default=None, help="micro-batches per optimizer step")


def _positive(name: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--{name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"--{name} must be a positive integer, got {value!r}")
    return n


def report(ns: argparse.Namespace) -> str:
    """The report for parsed ``jpeglm plan`` arguments; bad input raises ``ValueError``."""
    gpus = _positive("gpus", ns.gpus, 1)
    seq_len = _positive("seq-len", ns.seq_len, 12288)
    gpu_mem = parse_size(ns.gpu_mem)
    micro = _positive("micro-batch", ns.micro_batch, 1)
    accum = _positive("accum", ns.accum, 1)
    model_args: dict = {}
    mark = None
    config, overrides = ns.config, list(ns.overrides)
    if config is not None and "=" in config:  # only overrides given
        config, overrides = None, [config, *overrides]
    if config is not None or overrides:
        from jpeglm.train.config import TrainConfig

        cfg = TrainConfig.load(config, overrides)
        models = [ns.model or cfg.model]
        model_args = dict(cfg.model_args)
        per_rank = max(1, cfg.batch_size // gpus)
        if ns.micro_batch is None:
            micro = cfg.micro_batch_size or per_rank
        if ns.accum is None:
            accum = max(1, per_rank // micro)
        ac = getattr(cfg, "activation_checkpoint", "none")
        mark = (DDP_SINGLE if gpus == 1 else "FSDP" if cfg.fsdp else "DDP", ac)
    else:
        models = [ns.model] if ns.model else ["1B", "7B"]
    from jpeglm.model import CONFIGS

    for name in models:
        if name not in CONFIGS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(CONFIGS)}")
    return run(models, seq_len=seq_len, gpus=gpus, gpu_mem=gpu_mem, micro_batch=micro,
               accum=accum, model_args=model_args, mark=mark)  # fmt: skip
