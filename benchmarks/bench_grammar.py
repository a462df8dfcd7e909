"""Cost of grammar-constrained sampling: the token mask per decode step, batch 16.

    python benchmarks/bench_grammar.py [--batch 16] [--no-write]

A vocab-320 tokenizer is trained on canonical streams of the bundled photos; 16 held-out
streams are walked token by token (as a sampler would), and every step computes the
(batch, vocab) allowed-token mask and advances the automata. Reported: microseconds per
step (mask + advance), per stream-token, and — when torch is installed — the ratio to one
KV-cached decode step of the ``small`` model on the same CPU at the same batch size
(the overhead the constraint adds to sampling).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.grammar import TokenConstraint
from jpeglm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, today, write_section  # noqa: E402


def decodability_and_bits(tok: Tokenizer, crops: list) -> list[str]:
    """A tiny random model at 32x32 (the only model this CPU run has): decodability of samples
    with and without the constraint (same seeds), and bits per byte of held-out streams under
    the plain and the constrained (renormalised over allowed tokens) distributions."""
    import torch

    from jpeglm.eval.metrics import bits_per_byte
    from jpeglm.inference.sample import generate
    from jpeglm.model import ModelArgs, Transformer

    size = 32
    small = codec.encode_batch(crops, size=size)
    tok32 = Tokenizer.train(small[:80], vocab_size=300, progress=False)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok32.vocab_size, max_seq_len=4096))
    model.eval()
    n = 64
    con = generate(model, tok32, n=n, size=size, max_tokens=3000, seed=7)
    unc = generate(model, tok32, n=n, size=size, max_tokens=3000, seed=7, constrained=False)
    rate_c = sum(s.clean for s in con) / n
    rate_u = sum(s.clean for s in unc) / n

    held = small[80:]
    bits_plain = bits_per_byte(model, tok32, held, size=size)["bits_per_byte"]
    bits_con = bits_per_byte(model, tok32, held, constrained=True, size=size)["bits_per_byte"]
    return [
        f"| tiny random model, {size}x{size}: clean decodes, constrained | {rate_c:.0%} of {n} |",
        f"| same model and seeds, unconstrained | {rate_u:.0%} of {n} |",
        f"| bits/byte on {len(held)} held-out streams, plain | {bits_plain:.3f} |",
        f"| bits/byte, constrained (renormalised) | {bits_con:.3f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    b = args.batch

    crops = samples.random_crops(96, seed=0)
    streams = codec.encode_batch(crops)
    train, held = streams[:80], streams[80:]
    tok = Tokenizer.train(train, vocab_size=320, progress=False)
    seqs = [tok.encode(s) for s in held[:b]]
    tc = TokenConstraint.from_tokenizer(tok, 256)

    def walk(threads: int) -> tuple[float, int]:
        tc.start(b)
        out = np.empty((b, tc.vocab_size), dtype=bool)
        n_steps = min(args.steps, min(len(x) for x in seqs))
        t0 = time.perf_counter()
        for t in range(n_steps):
            tc.mask(out, threads=threads)
            ok = tc.advance([x[t] for x in seqs])
            assert ok.all() and out[np.arange(b), [x[t] for x in seqs]].all()
        return (time.perf_counter() - t0) / n_steps, n_steps

    walk(1)
    per_step_1, n_steps = min(walk(1) for _ in range(3))
    per_step_2, _ = min(walk(2) for _ in range(3))
    rows = [
        "| measurement | value |",
        "|---|---:|",
        f"| mask + advance per step, batch {b}, 1 thread | {per_step_1 * 1e6:,.0f} us |",
        f"| mask + advance per step, batch {b}, 2 threads | {per_step_2 * 1e6:,.0f} us |",
        f"| per stream-token (1 thread) | {per_step_1 / b * 1e6:,.1f} us |",
    ]
    try:
        import torch

        from jpeglm.model import ModelArgs, Transformer

        torch.manual_seed(0)
        model = Transformer(ModelArgs.from_name("small", vocab_size=tok.vocab_size)).eval()
        model.setup_caches(b, 512)
        idx = torch.randint(0, 256, (b, 1))
        with torch.no_grad():
            for i in range(5):
                model(idx, torch.tensor([i]))
            t0 = time.perf_counter()
            n = 20
            for i in range(n):
                model(idx, torch.tensor([5 + i]))
            step = (time.perf_counter() - t0) / n
        rows.append(
            f"| `small` model decode step, batch {b}, torch eager, CPU | {step * 1e3:,.1f} ms |"
        )
        rows.append(
            f"| constraint overhead per token (1 thread) | {100 * per_step_1 / step:.1f}% |"
        )
        rows += decodability_and_bits(tok, crops)
    except ImportError as e:
        rows.append(f"| model step | not measured ({e}) |")

    body = (
        f"Machine: {machine()}. Date: {today()}. Command: `python benchmarks/bench_grammar.py`.\n"
        f"Vocab {tok.vocab_size} BPE trained on 80 canonical 256x256 streams; {b} held-out streams "
        f"walked for {n_steps} tokens each (the mask is checked to allow the true next token).\n\n"
        + "\n".join(rows)
        + "\n\nGoal (issue 8): <= 5% overhead per token at batch 16 on GPU (GPU not measured here)."
    )
    print(body)
    if not args.no_write:
        write_section("Grammar-constrained sampling", body)


if __name__ == "__main__":
    main()
