"""The cost of classifier-free guidance per token (issue 33): a guided step beside the unguided
one at the same batch of conditional rows.

    python benchmarks/bench_guidance.py [--model small] [--tokens 64] [--rounds 3]
                                        [--batches 1,4,16] [--no-write]

A class-conditional model of random weights (``--model`` size, 10 classes) samples ``B``
conditional rows of one class from BOS + COND + the canonical 256x256 header, for ``--tokens``
new tokens (top-k 50, top-p 0.9), with ``cfg=1`` (no guidance: ``B`` rows per forward) and
``cfg=3`` (guided: ``B`` rows beside their ``B`` null twins, ``2B`` rows per forward, the
logits mixed ``u + s * (c - u)``), with the grammar mask (the default: a random model's rows
then never stop early at EOS, which would leave too few steps to time). The per-step cost is
the marginal one: the time of a run of ``--tokens`` minus that of a run of one token (the
prefill), over the steps between them (model calls, from the sampler's ``stats``); per token
is per step over ``B``. Contenders take turns (round robin, best of ``--rounds``). Goal:
guided <= 2.1x the unguided step.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from jpeglm import codec
from jpeglm.conditioning import Conditioning
from jpeglm.data import bundled as samples
from jpeglm.inference.sample import generate
from jpeglm.model import ModelArgs, Transformer
from jpeglm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, round_robin, today, write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="small")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    streams = [codec.encode(p) for p in samples.photo_paths()]
    tok = Tokenizer.train(streams, vocab_size=320, progress=False)
    header = streams[0][: codec.header(streams[0])["scan_offset"]]  # canonical 256x256 header
    cond = Conditioning(tuple(f"class{i}" for i in range(10)), tok.vocab_size, cfg=3.0)
    torch.manual_seed(0)
    margs = ModelArgs.from_name(args.model, vocab_size=cond.vocab_size, max_seq_len=2048)
    model = Transformer(margs).eval()
    n = args.tokens
    kw = dict(size=256, prompt=header, top_k=50, top_p=0.9, seed=1, labels=["class3"],
              conditioning=cond)  # fmt: skip
    rows = [
        "| batch B | steps timed | unguided ms/step | guided ms/step | guided ms/token | "
        "guided / unguided |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for batch in (int(b) for b in args.batches.split(",")):
        for constrained in (True,):
            fns, forwards = {}, {}
            for cfg in (1.0, 3.0):
                for tokens in (n, 1):
                    name = (cfg, tokens)

                    def run(cfg=cfg, tokens=tokens, name=name, constrained=constrained,
                            batch=batch, forwards=forwards) -> int:  # fmt: skip
                        stats: dict = {}
                        generate(model, tok, n=batch, cfg=cfg, max_tokens=tokens,
                                 constrained=constrained, stats=stats, **kw)  # fmt: skip
                        forwards[name] = stats["forwards"]
                        return 1  # one run: the rate is runs per second

                    fns[name] = run
            rates = round_robin(fns, repeats=args.rounds, min_time=0.0)
            step, steps = {}, {}
            for cfg in (1.0, 3.0):
                steps[cfg] = forwards[cfg, n] - forwards[cfg, 1]
                step[cfg] = (1 / rates[cfg, n] - 1 / rates[cfg, 1]) / steps[cfg]
            ratio = step[3.0] / step[1.0]
            ratios.append(ratio)
            rows.append(
                f"| {batch} | {steps[1.0]} / {steps[3.0]} | {step[1.0] * 1e3:.2f} | "
                f"{step[3.0] * 1e3:.2f} | {step[3.0] / batch * 1e3:.2f} | {ratio:.2f}x |"
            )
            print(rows[-1], flush=True)
    body = (
        f"Machine: {machine()}. Date: {today()}. torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Model `{args.model}` "
        f"({model.num_params() / 1e6:.1f}M parameters, random weights, vocabulary "
        f"{tok.vocab_size} + 10 classes + null), fp32, prompt BOS + COND + canonical 256x256 "
        f"header, {n} new tokens, top-k 50 / top-p 0.9, round robin best of {args.rounds}; "
        "command: `python benchmarks/bench_guidance.py`.\n\n" + "\n".join(rows) + "\n\n"
        "unguided: `cfg=1`, B conditional rows per forward; guided: `cfg=3`, the B rows and "
        "their B null twins in one forward of 2B rows (KV cache for both), logits mixed "
        "`u + s * (c - u)` in fp32, then the grammar mask and the draw for B rows; both with "
        "the grammar mask and jump-forward (the defaults). ms/step: the marginal time of one "
        "step of B tokens (a run's time minus the one-token run's, the prefill, over the model "
        "calls between them: `steps timed`, unguided / guided). At B = 1 a step reads the "
        "weights once for 1 or 2 rows (memory-bound: guidance nearly free); the cost grows "
        "toward 2x as the batch makes the step compute-bound. Goal: guided <= 2.1x unguided; worst "
        f"here {max(ratios):.2f}x."
    )
    print(body)
    if not args.no_write:
        write_section("Classifier-free guidance", body)


if __name__ == "__main__":
    main()
