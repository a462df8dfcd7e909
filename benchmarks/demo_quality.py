"""Measure a 32x32 MNIST JPEG-LM checkpoint the way benchmarks/RESULTS.md's "Demo model" does.

    python benchmarks/demo_quality.py CHECKPOINT_DIR [--samples 64] [-o out.json] [--grid g.png]

On the stratified held-out digits of ``samples.mnist_split`` (the last 50 of each digit):
bits/byte of the canonical streams; ``--samples`` constrained samples at the checkpoint's
recorded sampling settings (jpeglm.json), judged by ``jpeglm.eval.judge`` (share recognised with
>= 90% confidence, distinct digits); completions of the held-out digits from their top MCU row
(16 px) scored against the repeat-last-row baseline (PSNR, SSIM of the lower half).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def measure(ckpt: Path, n_samples: int = 64, n_completions: int = 100, seed: int = 0) -> tuple:
    import torch

    from jpeglm import codec
    from jpeglm.checkpoint.hf import load_pretrained
    from jpeglm.data import bundled as samples
    from jpeglm.eval import judge
    from jpeglm.eval.metrics import bits_per_byte, completion_scores
    from jpeglm.inference.sample import complete, generate
    from jpeglm.tokenizer import Tokenizer

    meta = json.loads((ckpt / "jpeglm.json").read_text())
    kw = dict(meta.get("sampling") or {"temperature": 0.4, "top_k": 8, "top_p": 0.9})
    model = load_pretrained(ckpt, dtype=torch.float32).eval()
    tok = Tokenizer.load(ckpt / "tokenizer.jpeglm")
    digits, labels = samples.mnist()
    _, held = samples.mnist_split()
    res: dict = {"checkpoint": ckpt.name, "parameters": model.num_params(), "sampling": kw}

    t0 = time.perf_counter()
    streams = [codec.encode(d, size=32) for d in digits[held]]
    res["held_out_bits_per_byte"] = bits_per_byte(model, tok, streams, size=32)["bits_per_byte"]
    # per digit: shows which digits a checkpoint trained on (the pre-issue-18 split held out 9s)
    res["held_out_bits_per_byte_by_digit"] = [
        bits_per_byte(model, tok, [s for s, i in zip(streams, held) if labels[i] == d], size=32)[
            "bits_per_byte"
        ]
        for d in range(10)
    ]
    res["seconds_bpb"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen = generate(model, tok, n=n_samples, size=32, max_tokens=600, seed=seed, **kw)
    j = judge.default_judge()
    res["samples"] = j.score([s.image for s in gen])
    res["samples"]["decodable"] = sum(s.clean for s in gen) / len(gen)
    res["seconds_samples"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # an equal number of each digit among the held-out ones
    per = max(1, n_completions // 10)
    pick = np.concatenate([held[labels[held] == d][:per] for d in range(10)])
    comp = complete(model, tok, list(digits[pick]), rows=1, size=32, max_tokens=600, seed=seed,
                    **kw)  # fmt: skip
    originals = [codec.decode(codec.encode(d, size=32)) for d in digits[pick]]
    res["completion"] = completion_scores(originals, [c.image for c in comp], rows=1)
    res["completion"]["n"] = len(pick)
    res["completion"]["judge"] = j.score([c.image for c in comp])
    res["seconds_completion"] = time.perf_counter() - t0
    return res, gen


def sweep(ckpt: Path, grid: list[dict], seeds: list[int], n_samples: int = 64,
          n_completions: int = 100) -> list[dict]:  # fmt: skip
    """Sampling settings on held-out data: for each setting of ``grid`` (temperature / top_k /
    top_p), the judge's share of ``n_samples`` constrained samples recognised and their distinct
    digits, per seed, and the lower-half SSIM / PSNR of completions of ``n_completions``
    held-out digits (first seed) against the repeat-last-row baseline."""
    import torch

    from jpeglm import codec
    from jpeglm.checkpoint.hf import load_pretrained
    from jpeglm.data import bundled as samples
    from jpeglm.eval import judge
    from jpeglm.eval.metrics import completion_scores
    from jpeglm.inference.sample import complete, generate
    from jpeglm.tokenizer import Tokenizer

    model = load_pretrained(ckpt, dtype=torch.float32).eval()
    tok = Tokenizer.load(ckpt / "tokenizer.jpeglm")
    digits, labels = samples.mnist()
    _, held = samples.mnist_split()
    per = max(1, n_completions // 10)
    pick = np.concatenate([held[labels[held] == d][:per] for d in range(10)])
    originals = [codec.decode(codec.encode(d, size=32)) for d in digits[pick]]
    j = judge.default_judge()
    rows = []
    for kw in grid:
        row: dict = {**kw, "share": [], "distinct": []}
        for seed in seeds:
            gen = generate(model, tok, n=n_samples, size=32, max_tokens=600, seed=seed, **kw)
            sc = j.score([g.image for g in gen])
            row["share"].append(sc["share"])
            row["distinct"].append(sc["distinct"])
        comp = complete(model, tok, list(digits[pick]), rows=1, size=32, max_tokens=600,
                        seed=seeds[0], **kw)  # fmt: skip
        row["completion"] = completion_scores(originals, [c.image for c in comp], rows=1)
        row["mean_share"] = float(np.mean(row["share"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--completions", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=Path, help="also write the samples as a PNG grid")
    ap.add_argument("-o", "--out", type=Path)
    ap.add_argument("--sweep", action="store_true",
                    help="instead: temperature x top-k grid, seeds 11-13; a table")  # fmt: skip
    a = ap.parse_args()
    if a.sweep:
        grid = [{"temperature": t, "top_k": k, "top_p": 0.9}
                for t in (0.1, 0.2, 0.3, 0.4, 0.6) for k in (4, 16)]  # fmt: skip
        grid.append({"temperature": 1.0, "top_k": 50, "top_p": 0.9})  # the paper's
        rows = sweep(a.checkpoint, grid, [11, 12, 13], a.samples, a.completions)
        lines = ["| temperature | top-k | share recognised (3 seeds) | per seed | distinct | "
                 "completion SSIM / baseline |", "|---:|---:|---:|---|---|---:|"]  # fmt: skip
        for r in rows:
            c = r["completion"]
            lines.append(
                f"| {r['temperature']} | {r['top_k']} | {r['mean_share']:.1%} | "
                f"{' / '.join(f'{x:.0%}' for x in r['share'])} | "
                f"{' / '.join(map(str, r['distinct']))} | "
                f"{c['ssim']:.3f} / {c['baseline_ssim']:.3f} |"
            )
        print("\n".join(lines))
        if a.out:
            a.out.write_text(json.dumps(rows, indent=1) + "\n" + "\n".join(lines) + "\n")
        return
    res, gen = measure(a.checkpoint, a.samples, a.completions, a.seed)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    if a.grid:
        from PIL import Image

        from jpeglm.eval.metrics import image_grid

        ims = [s.image for s in gen]
        rows = [ims[i : i + 8] for i in range(0, len(ims) - len(ims) % 8, 8)]
        Image.fromarray(image_grid(rows)).save(a.grid)


if __name__ == "__main__":
    main()
