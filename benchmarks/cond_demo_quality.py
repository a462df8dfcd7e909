"""Measure (and choose the settings of) the conditional 32x32 MNIST demo model (issue 34).

    python benchmarks/cond_demo_quality.py CHECKPOINT [--sweep] [--ship DEST] [--samples 64]
                                           [-o out.json] [--no-write]

"Ask for a 7, get a 7": for each digit, ``--samples`` constrained samples with that label, judged
by the project's digit judge (``jpeglm.eval.judge``: a sample counts when the judge gives the
REQUESTED digit probability >= 0.9), over seeds 0, 1, 2; beside it the unconditional shipped
model (``mnist32``) at the same sampling settings (its rate for a digit: the share of its samples
judged that digit). Held-out bits/byte (the last 50 digits of each label, never trained on) with
the label and without it (the null class).

``--sweep``: first choose the guidance scale and the sampling settings on other seeds (100,
101; 32 samples per digit) by the mean rate; ``--ship DEST``: write the checkpoint in bf16 to
DEST with the chosen settings recorded (``sampling``, ``conditioning.cfg``), and measure that
folder too (the figures of what ships: bf16 weights, the recorded settings). Writes the
"Conditional demo model" section of benchmarks/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, today, write_section  # noqa: E402

SETTINGS = [  # (temperature, top_k, top_p): the unconditional demo's, and a looser one
    (0.4, 4, 0.9),
    (0.7, 8, 0.9),
]
SCALES = [1.0, 2.0, 3.0, 5.0]


def requested_rate(judge, images, digits, threshold: float = 0.9) -> np.ndarray:
    """Per sample: whether the judge gives its requested digit probability >= threshold."""
    p = judge.proba(np.stack(images))
    return p[np.arange(len(p)), np.asarray(digits)] >= threshold


def sample_rates(m, judge, n: int, seeds, settings, cfg: float) -> dict:
    from jpeglm.inference.sample import generate

    t, k, p = settings
    hits = np.zeros(10)
    clean = total = 0
    for seed in seeds:
        got = generate(m.model, m.tokenizer, n=n, size=32, labels=[str(d) for d in range(10)],
                       cfg=cfg, conditioning=m.conditioning, temperature=t, top_k=k, top_p=p,
                       seed=seed, max_tokens=600, batch_size=min(8 * n, 256))  # fmt: skip
        digits = [int(s.label) for s in got]
        ok = requested_rate(judge, [s.image for s in got], digits)
        hits += np.bincount(digits, weights=ok, minlength=10)
        clean += sum(s.clean for s in got)
        total += len(got)
    per = hits / (n * len(seeds))
    return {"mean": float(per.mean()), "min": float(per.min()),
            "per_digit": [round(float(x), 4) for x in per], "decodable": clean / total}  # fmt: skip


def unconditional_rates(judge, n: int, seeds, settings) -> dict:
    """The shipped unconditional model at the same settings: per digit d, the share of its
    samples the judge calls d (what asking it for a d gives)."""
    from jpeglm.checkpoint.load import load_model
    from jpeglm.data import bundled
    from jpeglm.inference.sample import generate

    u = load_model(bundled.DEMO_CHECKPOINT)
    t, k, p = settings
    per = np.zeros(10)
    for seed in seeds:
        got = generate(u.model, u.tokenizer, n=10 * n, size=32, temperature=t, top_k=k, top_p=p,
                       seed=seed, max_tokens=600, batch_size=256)  # fmt: skip
        prob = judge.proba(np.stack([s.image for s in got]))
        best = prob[:, :10].argmax(1)
        ok = prob[np.arange(len(prob)), best] >= 0.9
        per += np.bincount(best[ok], minlength=10) / len(got)
    per /= len(seeds)
    return {"mean": float(per.mean()), "min": float(per.min()),
            "per_digit": [round(float(x), 4) for x in per]}  # fmt: skip


def held_out_bpb(m) -> dict:
    from jpeglm import codec
    from jpeglm.data import bundled
    from jpeglm.eval.metrics import bits_per_byte

    digits, labels = bundled.mnist()
    _, held = bundled.mnist_split()
    streams = [codec.encode(d, size=32) for d in digits[held]]
    cond = m.conditioning
    with_label = [cond.id_of(str(labels[i])) for i in held]
    return {
        "with_label": bits_per_byte(m.model, m.tokenizer, streams, size=32, conds=with_label)[
            "bits_per_byte"
        ],  # fmt: skip
        "without_label": bits_per_byte(
            m.model, m.tokenizer, streams, size=32, conds=[cond.null_id] * len(streams)
        )["bits_per_byte"],  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--ship", default=None)
    ap.add_argument("-o", "--out", default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--scales", type=float, nargs="+", default=SCALES, help="--sweep's scales")
    ap.add_argument("--settings", nargs="+", default=None, metavar="T,K,P",
                    help="--sweep's temperature,top-k,top-p triples")  # fmt: skip
    args = ap.parse_args()
    scales = args.scales
    grid = (
        SETTINGS
        if args.settings is None
        else [(float(t), int(k), float(p)) for t, k, p in (x.split(",") for x in args.settings)]
    )
    import torch

    from jpeglm.checkpoint.load import load_model
    from jpeglm.eval.judge import calibration, default_judge

    torch.set_num_threads(os.cpu_count() or 1)
    m = load_model(args.checkpoint, dtype=torch.float32)
    if m.conditioning is None:
        sys.exit(f"{args.checkpoint}: not a conditional model")
    judge = default_judge()
    rec = m.info.get("sampling", {})
    settings = (rec.get("temperature", 0.4), rec.get("top_k", 4), rec.get("top_p", 0.9))
    cfg = m.conditioning.cfg
    res: dict = {"checkpoint": str(args.checkpoint), "parameters": m.model.num_params()}
    t0 = time.perf_counter()
    if args.sweep:
        sweep = []
        for s in grid:
            for scale in scales:
                r = sample_rates(m, judge, 32, (100, 101), s, scale)
                sweep.append({"settings": s, "cfg": scale, **r})
                print(f"sweep {s} cfg {scale}: mean {r['mean']:.3f} min {r['min']:.3f}", flush=True)
        best = max(sweep, key=lambda r: (r["mean"], r["min"]))
        settings, cfg = tuple(best["settings"]), best["cfg"]
        res["sweep"] = sweep
    res["chosen"] = {"temperature": settings[0], "top_k": settings[1], "top_p": settings[2],
                     "cfg": cfg}  # fmt: skip
    seeds = (0, 1, 2)
    res["conditional"] = sample_rates(m, judge, args.samples, seeds, settings, cfg)
    res["conditional_no_guidance"] = sample_rates(m, judge, args.samples, seeds, settings, 1.0)
    res["unconditional_model"] = unconditional_rates(judge, args.samples, seeds, settings)
    res["held_out_bits_per_byte"] = held_out_bpb(m)
    res["judge_calibration"] = calibration(judge)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    if args.ship:
        from jpeglm.checkpoint.hf import load_hf_state, save_hf

        src = Path(args.checkpoint)
        a, state = load_hf_state(src)
        meta = json.loads((src / "jpeglm.json").read_text())
        meta["sampling"] = {"temperature": settings[0], "top_k": settings[1], "top_p": settings[2]}
        meta["conditioning"]["cfg"] = cfg
        save_hf(Path(args.ship), a, state, dtype=torch.bfloat16, tokenizer=src / "tokenizer.jpeglm",
                metadata=meta, replace=True)  # fmt: skip
        print("wrote", args.ship)
        # the figures of what is shipped: the bf16 folder at its recorded settings
        shipped = load_model(args.ship, dtype=torch.float32)
        res["shipped"] = sample_rates(shipped, judge, args.samples, seeds, settings, cfg)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    if not args.no_write:
        write_section("Conditional demo model", report(res, args))


def report(res: dict, args) -> str:
    c, g, u = res["conditional"], res["conditional_no_guidance"], res["unconditional_model"]
    ch = res["chosen"]
    lines = [
        f"Machine: {machine()}. Date: {today()}. Command: `python benchmarks/cond_demo_quality.py "
        f"{' '.join(sys.argv[1:])}`. {args.samples} samples per digit "
        "and seed, seeds 0, 1, 2; a sample counts when the digit judge gives the requested digit "
        f"probability >= 0.9. Settings: temperature {ch['temperature']}, top-k {ch['top_k']}, "
        f"top-p {ch['top_p']}, guidance {ch['cfg']}.",
        "",
        "| model | mean | worst digit | " + " | ".join(str(d) for d in range(10)) + " |",
        "|---|---:|---:|" + "---:|" * 10,
    ]
    rows = [(f"conditional, cfg {ch['cfg']}", c)]
    if "shipped" in res:
        rows.append((f"the shipped bf16 folder ({args.ship}), cfg {ch['cfg']}", res["shipped"]))
    rows += [("conditional, cfg 1 (no guidance)", g),
             ("unconditional mnist32 (share judged that digit)", u)]  # fmt: skip
    for name, r in rows:
        cells = " | ".join(f"{x:.0%}" for x in r["per_digit"])
        lines.append(f"| {name} | {r['mean']:.1%} | {r['min']:.0%} | {cells} |")
    b = res["held_out_bits_per_byte"]
    lines += ["", f"Held-out bits/byte (500 digits never trained on): {b['with_label']:.3f} with "
              f"the label, {b['without_label']:.3f} without (the null class). Decodable: "
              f"{c['decodable']:.0%} of the conditional samples."]  # fmt: skip
    if "sweep" in res:
        scales = sorted({r["cfg"] for r in res["sweep"]})
        grid = list(dict.fromkeys(tuple(r["settings"]) for r in res["sweep"]))
        lines += ["", "Sweep on seeds 100-101 (32 samples per digit): mean share as requested",
                  "", "| temperature, top-k, top-p | " + " | ".join(f"cfg {s}" for s in scales)
                  + " |", "|---|" + "---:|" * len(scales)]  # fmt: skip
        for s in grid:
            row = [r for r in res["sweep"] if tuple(r["settings"]) == s]
            lines.append(f"| {s[0]}, {s[1]}, {s[2]} | "
                         + " | ".join(f"{r['mean']:.1%}" for r in row) + " |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
