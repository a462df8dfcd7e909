"""Sampling speed: jpeglm's sampler vs Hugging Face ``generate`` on the same weights.

    python benchmarks/bench_generate.py [--model small] [--tokens 128] [--rounds 3] [--no-compile]
                                  [--no-write]

Random weights of the named size are saved as a HF checkpoint and loaded by both sides. Every
contender continues the same prompt, BOS + the canonical 256x256 header, for ``--tokens`` new
tokens at temperature 1, top-k 50, top-p 0.9, at batch 1 and 16 (HF with ``min_new_tokens``
so it never stops early). Contenders take turns (round robin, best of ``--rounds``). jpeglm's
rate counts only sampled tokens: tokens the grammar forced and jump-forward appended are
counted apart (column "forced"), so jump-forward cannot inflate it.

Limits, measured in the same run (:func:`step_limit`): the larger of the step's compulsory
memory traffic (the weights in the row's format plus the KV cache at the mean filled length)
at the machine's read bandwidth, and its products with the weights hot in cache. "% limit" is
a row's step time against that (the step times include the prompt's prefill, spread over
the steps). Then bits/byte of held-out digits under the demo checkpoint in each
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

from jpeglm import codec
from jpeglm.checkpoint.hf import load_pretrained, save_pretrained
from jpeglm.data import bundled as samples
from jpeglm.inference.decode_kernels import InferenceLinear, inference_act_dtype
from jpeglm.inference.sample import generate
from jpeglm.model import ModelArgs, Transformer
from jpeglm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, round_robin, today, write_section  # noqa: E402


def step_limit(model: Transformer, fmt: str, batch: int, kv_slots: int, copies: int = 4) -> float:
    """Seconds per decode step at the machine's limit for weight format ``fmt``: the larger of
    (a) the step's compulsory memory traffic -- every linear weight in that format plus the KV
    cache of ``kv_slots`` filled positions per row -- at the machine's read bandwidth,
    measured by summing ``copies`` distinct, uncached copies with all threads, and (b) the
    step's products with the weights hot in cache, the fastest of torch's ``F.linear`` and
    jpeglm's packed kernel (fp32). Best of 5 each."""
    act = inference_act_dtype(fmt, torch.float32)
    mats = []
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        qkv = torch.cat([a.wq.weight, a.wk.weight, a.wv.weight])
        mats += [qkv, a.wo.weight, torch.cat([f.w1.weight, f.w3.weight]), f.w2.weight]
    mats.append(model.output.weight)
    mats = [w.detach() for w in mats]
    args = model.args
    kv_elems = 2 * args.n_layers * batch * args.n_kv_heads * kv_slots * args.head_dim
    weight_bytes = sum(InferenceLinear(w, fmt, act).nbytes() for w in mats)
    nbytes = weight_bytes + kv_elems * torch.finfo(act).bits // 8
    blocks = [[torch.randn(nbytes // 4 // 8) for _ in range(8)] for _ in range(copies)]
    best_bw = float("inf")
    with torch.no_grad():
        for r in range(5 * copies):
            t0 = time.perf_counter()
            for blk in blocks[r % copies]:
                blk.sum()
            best_bw = min(best_bw, time.perf_counter() - t0)
    del blocks
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=act) for w in mats}
    best_mm = float("inf")
    kinds = [InferenceLinear(w, fmt, act) for w in mats]
    if fmt == "fp32" and kinds[0].panels is not None:  # torch's products too: the faster
        kinds_torch = [lambda x, w=w: torch.nn.functional.linear(x, w) for w in mats]
    else:
        kinds_torch = []
    with torch.no_grad():
        for lins in (kinds, kinds_torch):
            if not lins:
                continue
            for _ in range(5):
                t0 = time.perf_counter()
                for w, lin in zip(mats, lins):
                    lin(xs[w.shape[1]])
                best_mm = min(best_mm, time.perf_counter() - t0)
    return max(best_bw, best_mm)


def bits_per_byte_table() -> list[str]:
    from jpeglm.data.bundled import DEMO_CHECKPOINT
    from jpeglm.eval.metrics import bits_per_byte
    from jpeglm.inference.loop import prepare_for_sampling

    model = load_pretrained(DEMO_CHECKPOINT, dtype=torch.float32).eval()
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
        save_pretrained(ours, d)
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
        slots = len(prompt_ids) + n // 2  # the mean filled length over the run
        limits = {fmt: step_limit(ours, fmt, batch, slots) for fmt in ("fp32", "bf16", "int8")}
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
        f"top-p 0.9, round robin best of {args.rounds}; command: "
        "`python benchmarks/bench_generate.py`."
        "\n\n" + "\n".join(rows) + "\n\n"
        "`constrained` = grammar mask on (the default), `plain` = off. fp32 / bf16 / int8: the "
        "sampling weights (`dtype=`; int8 = weight-only per-channel int8 with bf16 activations). "
        "`% limit`: the limit step time over the row's step time; the limit is the larger of "
        "the step's compulsory memory traffic (weights in that format + the KV cache at the mean"
        " filled length, read at the bandwidth measured in this run by summing uncached copies "
        "with all threads) and its products with the weights hot in cache (the faster of torch "
        "and jpeglm's packed kernel). `forced`: tokens appended by jump-forward, not counted in "
        "the rate. fp32 on CPU runs `_core`'s decode kernels (packed linear, cache attention; "
        "see `jpeglm.inference.decode_kernels`)."
    )
    if not args.no_bpb:
        body += (
            "\n\nQuality of the weight formats: bits/byte of the last 500 bundled MNIST digits "
            "(32x32, held out) under the demo checkpoint (`python/jpeglm/data/assets/checkpoints/"
            "mnist32`):\n\n" + "\n".join(bits_per_byte_table())
        )
    print(body)
    if not args.no_write:
        write_section("Generation", body)


if __name__ == "__main__":
    main()
