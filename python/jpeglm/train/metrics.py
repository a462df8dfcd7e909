"""What rank 0 reports while training runs, beside ``metrics.jsonl``: throughput (model FLOP/s
and MFU against the card's dense bf16 peak, :data:`PEAK_BF16_FLOPS`), TensorBoard scalars in
``OUT/tb`` (when installed) and ``loss.png`` (when matplotlib is)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jpeglm._io import atomic_open
from jpeglm.train.run_folder import read_metrics

if TYPE_CHECKING:
    from jpeglm.train.config import TrainConfig

__all__ = ["PEAK_BF16_FLOPS", "peak_flops"]

#: dense bf16 peak FLOP/s of the cards MFU is usually quoted for (per GPU, no sparsity)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12, "L4": 121e12, "V100": 125e12}  # fmt: skip


def peak_flops(device: torch.device, override: float = 0.0) -> float:
    """The device's peak FLOP/s for MFU: ``override`` when given, else looked up by the GPU's
    name; 0 (MFU not reported) for a CPU or an unknown card."""
    if override > 0:
        return override
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 0.0)


def _tensorboard(out: Path, cfg: TrainConfig):
    """A TensorBoard ``SummaryWriter`` into ``out/tb`` when tensorboard is installed."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _plot(out: Path) -> None:
    """loss.png from metrics.jsonl (skipped when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = read_metrics(out / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
    ev = [r for r in rows if "eval_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    with atomic_open(out / "loss.png", "wb", record=True) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
