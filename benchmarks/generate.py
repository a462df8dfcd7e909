"""Sampling speed: jpeglm's KV-cached sampler vs Hugging Face ``generate`` on the same weights.

    python benchmarks/generate.py [--model small] [--tokens 128] [--no-write]

Random weights of the named size are saved as a HF checkpoint, loaded by both sides; each
samples ``--tokens`` new tokens after BOS with temperature 1, top-k 50, top-p 0.9, at batch 1
and batch 16 (HF with ``min_new_tokens`` so it never stops early; jpeglm counts only the tokens
it actually generated, stopping rows that emit EOS). On CPU, fp32, one run, same threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from jpeglm import codec, samples
from jpeglm.model import ModelArgs, Transformer
from jpeglm.sample import generate
from jpeglm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, today, write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="small")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import transformers

    streams = [codec.encode(p) for p in samples.photo_paths()]
    tok = Tokenizer.train(streams, vocab_size=320, progress=False)
    torch.manual_seed(0)
    margs = ModelArgs.from_name(args.model, vocab_size=tok.vocab_size, max_seq_len=2048)
    ours = Transformer(margs).eval()
    rows = ["| batch | implementation | new tokens/s | vs HF |", "|---|---|---:|---:|"]
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    n = args.tokens
    for batch in (1, 16):
        ids = torch.full((batch, 1), tok.bos_id)
        hf.generate(ids, do_sample=True, max_new_tokens=4, min_new_tokens=4, top_k=50, top_p=0.9,
                    pad_token_id=tok.pad_id)  # warm-up  # fmt: skip
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(ids, do_sample=True, max_new_tokens=n, min_new_tokens=n, top_k=50,
                        top_p=0.9, pad_token_id=tok.pad_id)  # fmt: skip
        hf_rate = batch * n / (time.perf_counter() - t0)
        rows.append(f"| {batch} | HF transformers generate | {hf_rate:,.0f} | 1.00x |")
        for constrained in (False, True):
            generate(ours, tok, n=batch, size=256, max_tokens=4, constrained=constrained)
            t0 = time.perf_counter()
            out = generate(
                ours, tok, n=batch, size=256, max_tokens=n, constrained=constrained, seed=1
            )
            rate = sum(len(s.tokens) for s in out) / (time.perf_counter() - t0)
            name = "jpeglm generate" + (" (constrained)" if constrained else "")
            rows.append(f"| {batch} | {name} | {rate:,.0f} | {rate / hf_rate:.2f}x |")
    body = (
        f"Machine: {machine()}. Date: {today()}. torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {torch.get_num_threads()} threads. Model `{args.model}` "
        f"({ours.num_params() / 1e6:.1f}M parameters, random weights, fp32), {n} new tokens; "
        "command: `python benchmarks/generate.py`.\n\n" + "\n".join(rows) + "\n\n"
        "Goals (issue 7): >= 2x HF generate; 7B batch-1 decode >= 70% of the card's memory-"
        "bandwidth bound — GPU rows are not measured here (no GPU in this task)."
    )
    print(body)
    if not args.no_write:
        write_section("Generation", body)


if __name__ == "__main__":
    main()
