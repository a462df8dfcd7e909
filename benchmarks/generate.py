"""Sampling speed: jpeglm's sampler vs Hugging Face ``generate`` on the same weights.

    python benchmarks/generate.py [--model small] [--tokens 128] [--rounds 3] [--no-compile]
                                  [--no-write]

Random weights of the named size are saved as a HF checkpoint and loaded by both sides. Every
contender continues the same prompt, BOS + the canonical 256x256 header, for ``--tokens`` new
tokens at temperature 1, top-k 50, top-p 0.9, at batch 1 and 16 (HF with ``min_new_tokens``
so it never stops early). Contenders take turns (round robin, best of ``--rounds``). jpeglm's
rate counts only sampled tokens: tokens the grammar forced and jump-forward appended are
counted apart (column "forced"), so jump-forward cannot inflate it.

Limits, measured in the same run: batch 1 -- the time to stream the model's linear weights
once from memory (each matrix a separate, uncached tensor, in the row's weight format) with
one-row products; batch 16 -- the same products with 16 rows (GEMM rate). "% limit" is a row's
step time against that. Then bits/byte of held-out digits under the demo checkpoint in each
weight format (``--no-bpb`` skips it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from jpeglm import codec, samples
from jpeglm.model import InferenceLinear, ModelArgs, Transformer, inference_act_dtype
from jpeglm.sample import generate
from jpeglm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, round_robin, today, write_section  # noqa: E402


def weight_limit(model: Transformer, fmt: str, batch: int, copies: int = 4) -> float:
    """Seconds per decode step at the machine's limit: every linear weight of ``model`` in
    format ``fmt`` multiplied once by ``batch`` rows, ``copies`` distinct copies cycled so no
    matrix is in cache when it is read again; best of 5."""
    act = inference_act_dtype(fmt, torch.float32)
    shapes = []
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        qkv = torch.cat([a.wq.weight, a.wk.weight, a.wv.weight])
        shapes += [qkv, a.wo.weight, torch.cat([f.w1.weight, f.w3.weight]), f.w2.weight]
    shapes.append(model.output.weight)
    sets = [[InferenceLinear(w.detach() + 0, fmt, act) for w in shapes] for _ in range(copies)]
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=act) for w in shapes}
    best = float("inf")
    with torch.no_grad():
        for r in range(5 * copies):
            t0 = time.perf_counter()
            for lin in sets[r % copies]:
                lin(xs[lin.in_features])
            best = min(best, time.perf_counter() - t0)
    return best


def bits_per_byte_table() -> list[str]:
    from jpeglm.cli import DEMO_CHECKPOINT
    from jpeglm.eval import bits_per_byte
    from jpeglm.sample import prepare_for_sampling

    model = Transformer.from_pretrained(DEMO_CHECKPOINT, dtype=torch.float32).eval()
    tok = Tokenizer.load(DEMO_CHECKPOINT / "tokenizer.jpeglm")
    digits, _ = samples.mnist()
    streams = [codec.encode(d, size=32) for d in digits[-500:]]
    rows = ["| weights | bits/byte | vs fp32 | bits/token |", "|---|---:|---:|---:|"]
    base = None
    for fmt in ("fp32", "bf16", "int8"):
        prepare_for_sampling(model, fmt)
        r = bits_per_byte(model, tok, streams, size=32)
        base = r["bits_per_byte"] if base is None else base
        rows.append(
            f"| {fmt} | {r['bits_per_byte']:.4f} | {r['bits_per_byte'] - base:+.4f} | "
            f"{r['bits_per_token']:.4f} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="small")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-bpb", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import transformers

    streams = [codec.encode(p) for p in samples.photo_paths()]
    tok = Tokenizer.train(streams, vocab_size=320, progress=False)
    header = streams[0][: codec.header(streams[0])["scan_offset"]]  # canonical 256x256 header
    prompt_ids = [tok.bos_id] + tok.encode(header)
    torch.manual_seed(0)
    margs = ModelArgs.from_name(args.model, vocab_size=tok.vocab_size, max_seq_len=2048)
    ours = Transformer(margs).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    n = args.tokens
    kw = dict(size=256, prompt=header, max_tokens=n, top_k=50, top_p=0.9)
    rows = [
        "| batch | implementation | new tokens/s | vs HF | ms/step | % limit | forced |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for batch in (int(b) for b in args.batches.split(",")):
        ids = torch.tensor([prompt_ids] * batch)

        def hf_run(batch=batch, ids=ids) -> int:
            with torch.no_grad():
                hf.generate(ids, do_sample=True, max_new_tokens=n, min_new_tokens=n, top_k=50,
                            top_p=0.9, pad_token_id=tok.pad_id,
                            attention_mask=torch.ones_like(ids))  # fmt: skip
            return batch * n

        fns = {"HF transformers generate (fp32)": hf_run}
        forced: dict[str, int] = {}
        contenders = [("fp32", True, False), ("fp32", False, False), ("bf16", True, False),
                      ("int8", True, False)]  # fmt: skip
        if not args.no_compile:
            contenders += [("fp32", True, True), ("int8", True, True)]
        for fmt, constrained, comp in contenders:
            name = f"jpeglm {fmt}" + (" constrained" if constrained else " plain")
            name += " compile" if comp else ""

            def run(name=name, fmt=fmt, constrained=constrained, comp=comp, batch=batch,
                    forced=forced) -> int:  # fmt: skip
                stats: dict = {}
                out = generate(ours, tok, n=batch, seed=1, constrained=constrained, compile=comp,
                               dtype=fmt, stats=stats, **kw)  # fmt: skip
                forced[name] = stats["forced"]
                return sum(len(s.tokens) for s in out) - stats["forced"]

            fns[name] = run
        rates = round_robin(fns, repeats=args.rounds, min_time=0.0)
        limits = {fmt: weight_limit(ours, fmt, batch) for fmt in ("fp32", "bf16", "int8")}
        hf_rate = rates["HF transformers generate (fp32)"]
        for name, rate in rates.items():
            fmt = "fp32" if name.startswith("HF") else name.split()[1]
            step = batch / rate
            summary[(batch, name)] = rate / hf_rate
            rows.append(
                f"| {batch} | {name} | {rate:,.1f} | {rate / hf_rate:.2f}x | {step * 1e3:.1f} | "
                f"{limits[fmt] / step:.0%} of {fmt} {limits[fmt] * 1e3:.1f} ms | "
                f"{forced.get(name, 0)} |"
            )
        print("\n".join(rows), flush=True)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = " ".join(
        line.split(":", 1)[1].strip()
        for line in lscpu.splitlines()
        if line.startswith(("Model name", "CPU(s):"))
    )
    body = (
        f"Machine: {machine()} (`lscpu`: {cpu} CPUs). Date: {today()}. torch {torch.__version__}"
        f", transformers {transformers.__version__}, {torch.get_num_threads()} threads. Model "
        f"`{args.model}` ({ours.num_params() / 1e6:.1f}M parameters, random weights), prompt BOS"
        f" + canonical 256x256 header ({len(prompt_ids)} tokens), {n} new tokens, top-k 50 / "
        f"top-p 0.9, round robin best of {args.rounds}; command: `python benchmarks/generate.py`."
        "\n\n" + "\n".join(rows) + "\n\n"
        "`constrained` = grammar mask on (the default), `plain` = off. fp32 / bf16 / int8: the "
        "sampling weights (`dtype=`; int8 = weight-only per-channel int8 with bf16 activations). "
        "`% limit`: the limit step time (weights in that format streamed uncached through "
        "one-row products at batch 1, 16-row GEMMs at batch 16, measured in this run) over the "
        "row's step time. `forced`: tokens appended by jump-forward, not counted in the rate."
    )
    if not args.no_bpb:
        body += (
            "\n\nQuality of the weight formats: bits/byte of the last 500 bundled MNIST digits "
            "(32x32, held out) under the demo checkpoint (`python/jpeglm/data/checkpoints/"
            "mnist32`):\n\n" + "\n".join(bits_per_byte_table())
        )
    print(body)
    if not args.no_write:
        write_section("Generation", body)


if __name__ == "__main__":
    main()
