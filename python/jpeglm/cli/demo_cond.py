"""The class-conditional part of ``jpeglm demo`` (issue 34): with the shipped conditional model
(:data:`jpeglm.data.bundled.COND_CHECKPOINT`, classes "0".."9"), :data:`PER_DIGIT` samples of
each digit at the model's recorded sampling settings and guidance scale, shown one row per
digit beside the unconditional model's rows, and the digit judge's share of them recognised
as the digit asked for (:func:`jpeglm.eval.metrics.judge_requested`), overall and per digit.
Without the model folder the demo is as before, and says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PER_DIGIT", "cond_part"]

#: samples of each digit the demo draws (and shows, one row per digit)
PER_DIGIT = 8


def _shown(folder: Path) -> str:
    """The folder relative to the package's checkout when it is inside it, else as given."""
    root = Path(__file__).parents[2]
    try:
        return folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(folder)


def cond_part(
    seed: int, temperature: float | None = None, per_digit: int | None = None
) -> tuple[dict[str, Any] | None, list[tuple[str, list[np.ndarray]]], str]:
    """``per_digit`` samples of every digit from the conditional demo model: its report (None
    when the model is absent), the rows to show, ``(label, images)`` one per digit, and the
    summary to print (one line when absent). ``temperature``: the demo's override of the
    recorded one. ``per_digit``: default :data:`PER_DIGIT`."""
    import torch

    from jpeglm.checkpoint.load import load_model
    from jpeglm.data import bundled
    from jpeglm.eval.metrics import judge_requested
    from jpeglm.inference.sample import generate
    from jpeglm.inference.settings import SamplingSettings

    per_digit = PER_DIGIT if per_digit is None else per_digit
    folder = bundled.COND_CHECKPOINT
    if not (folder / "config.json").is_file():
        return None, [], f"(the conditional model is absent ({folder}): no per-digit rows)"
    t0 = time.perf_counter()
    loaded = load_model(folder, dtype=torch.float32)
    cond = loaded.conditioning
    if cond is None or not set(cond.names) <= {str(d) for d in range(10)}:
        raise ValueError(f"{folder}: the conditional demo model must have digit classes 0..9")
    settings = SamplingSettings.merged(loaded.info["sampling"], temperature=temperature,
                                       max_tokens=600, seed=seed)  # fmt: skip
    gen = generate(loaded.model, loaded.tokenizer, n=per_digit, size=loaded.image_size,
                   quality=loaded.quality, settings=settings, labels=["all"],
                   conditioning=cond)  # fmt: skip
    images = [s.image for s in gen]
    judged = judge_requested(images, [int(s.label) for s in gen])
    dt = time.perf_counter() - t0
    rows = [(f"digit {name} (cfg {cond.cfg:g})", images[i * per_digit : (i + 1) * per_digit])
            for i, name in enumerate(cond.names)]  # fmt: skip
    report = {
        "checkpoint": _shown(folder),
        "parameters": loaded.model.num_params(),
        "sampling": settings.record(),
        "cfg": cond.cfg,
        "samples_per_digit": per_digit,
        "decodable": sum(s.clean for s in gen) / len(gen),
        "judge_requested": judged,
        "seconds": dt,
    }
    worst = min(judged["per_class"], key=judged["per_class"].get)
    per = " ".join(f"{d}:{v:.0%}" for d, v in judged["per_class"].items())
    text = (
        f"class-conditional demo model ({report['parameters'] / 1e6:.2f}M parameters, guidance "
        f"scale {cond.cfg:g}): {per_digit} samples of each digit\n"
        f"  recognised as the digit asked for (judge, p >= 0.9): {judged['share']:.0%} "
        f"(worst digit {worst}: {judged['per_class'][worst]:.0%})\n"
        f"  per digit: {per}\n"
        f"  decodable: {report['decodable']:.0%} ({dt:.1f} s)"
    )
    return report, rows, text
