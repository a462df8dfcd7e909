"""Tokenizer benchmark: jpeglm's native BPE side by side with tiktoken, HF tokenizers and
sentencepiece — encoding MB/s and training time — written to benchmarks/RESULTS.md.

Corpus: random crops (1/4 of the short side up to all of it, i.e. several scales) and
horizontal flips of the bundled photos, resized to 256x256 and canonically encoded
(``jpeglm.codec``). Training uses ``--images`` of them; encoding is measured on a held-out set
and on random bytes of the same total size (in 5 KB items).

All peers use the same vocabulary for encoding: tiktoken gets our ``mergeable_ranks`` (pattern
``[\\s\\S]+``: no regex split), HF tokenizers loads our ``save_hf`` tokenizer.json, and
sentencepiece a model trained on the same corpus (its own merges). The text peers get the
braille-mapped text (``chr(b + 0x2800)``) prepared beforehand (not timed). MB/s count input
bytes; best of ``--repeat`` runs.

    python benchmarks/bench_tokenizer.py                  # 10k training images, writes RESULTS.md
    python benchmarks/bench_tokenizer.py --images 1000 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.tokenizer import Tokenizer, bytes_to_braille

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Tokenizer"


def make_corpus(n: int, seed: int) -> list[bytes]:
    """Canonical streams of n random crops/flips/scales of the bundled photos."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(samples.photo(p.stem).convert("RGB")) for p in samples.photo_paths()]
    out: list[bytes] = []
    batch: list[np.ndarray] = []
    for k in range(n):
        a = photos[int(rng.integers(len(photos)))]
        h, w = a.shape[:2]
        s = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = a[y : y + s, x : x + s]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        batch.append(codec.prepare(np.ascontiguousarray(crop)))
        if len(batch) == 256 or k == n - 1:
            out += codec.encode_batch(batch)
            batch = []
    return out


def best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def train_sentencepiece(texts: list[str], vocab_size: int, threads: int) -> bytes:
    from jpeglm.tokenizer.sentencepiece import train_sentencepiece as train

    return train(texts, vocab_size, threads)


def train_hf(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    hf = HFTokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=[chr(0x2800 + b) for b in range(256)],
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    return hf


def encode_methods(
    tok: Tokenizer,
    enc,
    hf,
    sp,
    items: list[bytes],
    txt: list[str],
    threads: int,
    pool: ThreadPoolExecutor,
) -> dict[str, Callable[[], object]]:
    """The encoders to time, each over the whole item list."""
    return {
        "jpeglm encode (list)": lambda: [tok.encode(d) for d in items],
        "jpeglm encode_to_numpy": lambda: [tok.encode_to_numpy(d) for d in items],
        f"jpeglm encode_batch_to_numpy ({threads} threads)": lambda: tok.encode_batch_to_numpy(
            items, threads=threads
        ),
        f"jpeglm encode_batch (lists, {threads} threads)": lambda: tok.encode_batch(
            items, threads=threads
        ),
        "tiktoken _encode_bytes": lambda: [enc._encode_bytes(d) for d in items],
        f"tiktoken batch ({threads} threads)": lambda: list(pool.map(enc._encode_bytes, items)),
        "HF tokenizers encode": lambda: [hf.encode(s) for s in txt],
        "HF tokenizers encode_batch": lambda: hf.encode_batch(txt),
        "sentencepiece encode": lambda: [sp.encode(s) for s in txt],
        f"sentencepiece batch ({threads} threads)": lambda: sp.encode(txt, num_threads=threads),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10_000, help="training images")
    ap.add_argument("--eval-images", type=int, default=500, help="held-out images to encode")
    ap.add_argument("--vocab", type=int, nargs="+", default=[320, 4096])
    ap.add_argument("--threads", type=int, default=2, help="threads for the batch calls")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-hf-train", action="store_true", help="skip HF training (slow)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    import sentencepiece as spm
    import tiktoken
    import tokenizers

    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    corpus = make_corpus(args.images, seed=0)
    held_out = make_corpus(args.eval_images, seed=1)
    rng = np.random.default_rng(2)
    eval_bytes = sum(map(len, held_out))
    random_items = [rng.bytes(5000) for _ in range(max(1, eval_bytes // 5000))]
    corpus_mb = sum(map(len, corpus)) / 1e6
    print(
        f"corpus: {len(corpus)} images, {corpus_mb:.1f} MB; held out: {len(held_out)} images, "
        f"{eval_bytes / 1e6:.1f} MB ({time.perf_counter() - t0:.0f} s to make)",
        flush=True,
    )
    corpus_text = [bytes_to_braille(d) for d in corpus]
    sets = {"JPEG": held_out, "random": random_items}
    texts = {name: [bytes_to_braille(d) for d in items] for name, items in sets.items()}
    nbytes = {name: sum(map(len, items)) for name, items in sets.items()}
    pool = ThreadPoolExecutor(args.threads)

    speed: dict[tuple[str, int, str], float] = {}  # (method, vocab, set) -> MB/s
    train_s: dict[tuple[str, int], float | None] = {}
    tmp = Path(tempfile.mkdtemp())
    for vocab in args.vocab:
        print(f"\nvocab {vocab}", flush=True)
        t = time.perf_counter()
        tok = Tokenizer.train(corpus, vocab, threads=args.threads, progress=False)
        train_s[("jpeglm", vocab)] = time.perf_counter() - t
        print(f"  train jpeglm: {train_s[('jpeglm', vocab)]:.2f} s", flush=True)
        t = time.perf_counter()
        sp_model = train_sentencepiece(corpus_text, vocab, args.threads)
        train_s[("sentencepiece", vocab)] = time.perf_counter() - t
        print(f"  train sentencepiece: {train_s[('sentencepiece', vocab)]:.2f} s", flush=True)
        if args.skip_hf_train:
            train_s[("HF tokenizers", vocab)] = None
        else:
            t = time.perf_counter()
            train_hf(corpus_text, vocab)
            train_s[("HF tokenizers", vocab)] = time.perf_counter() - t
            print(f"  train HF: {train_s[('HF tokenizers', vocab)]:.2f} s", flush=True)

        enc = tok.to_tiktoken()
        tok.save_hf(tmp / "tokenizer.json")
        hf = tokenizers.Tokenizer.from_file(str(tmp / "tokenizer.json"))
        sp = spm.SentencePieceProcessor(model_proto=sp_model)
        for name, items in sets.items():
            txt = texts[name]
            assert enc._encode_bytes(items[0]) == tok.encode(items[0])
            assert hf.encode(txt[0]).ids == tok.encode(items[0])
            methods = encode_methods(tok, enc, hf, sp, items, txt, args.threads, pool)
            for method, fn in methods.items():
                fn()  # warm up
                seconds = best_time(fn, args.repeat)
                speed[(method, vocab, name)] = nbytes[name] / seconds / 1e6
                print(
                    f"  {name:6s} {method:45s} {speed[(method, vocab, name)]:8.1f} MB/s", flush=True
                )
    pool.shutdown()

    # -- the report -------------------------------------------------------------------------------
    methods = list(dict.fromkeys(m for m, _, _ in speed))
    cols = [(v, s) for v in args.vocab for s in sets]
    base = "tiktoken _encode_bytes"
    lines = [
        HEADING,
        "",
        f"`python benchmarks/bench_tokenizer.py` — {dt.date.today().isoformat()}, {cpu_model()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, tiktoken "
        f"{tiktoken.__version__}, tokenizers {tokenizers.__version__}, sentencepiece "
        f"{spm.__version__}. Load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs on the machine skew the numbers, "
        "the 2-thread columns most).",
        "",
        f"Training corpus: {len(corpus)} canonical 256x256 quality-25 streams of random "
        f"crops/flips/scales of the bundled photos ({corpus_mb:.1f} MB). Encoding: "
        f"{len(held_out)} held-out streams ({eval_bytes / 1e6:.1f} MB) and random bytes in 5 KB "
        "items (same total). Encoding MB/s of input bytes, best of "
        f"{args.repeat}; (x) = ratio to tiktoken `_encode_bytes` on the same column. The text "
        "peers encode the braille-mapped text, prepared beforehand. tiktoken and HF use our "
        "vocabulary (identical ids); sentencepiece its own model trained on the same corpus.",
        "",
        "| encode, MB/s | " + " | ".join(f"vocab {v}, {s}" for v, s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for m in methods:
        cells = []
        for v, s in cols:
            x = speed[(m, v, s)]
            cells.append(f"{x:.1f} ({x / speed[(base, v, s)]:.1f}x)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Training on the {len(corpus)}-image corpus ({args.threads} threads where the "
        "trainer takes a thread count), seconds; (x) = how many times slower than jpeglm:",
        "",
        "| train, s | " + " | ".join(f"vocab {v}" for v in args.vocab) + " |",
        "|---|" + "---:|" * len(args.vocab),
    ]
    for name in ("jpeglm", "HF tokenizers", "sentencepiece"):
        cells = []
        for v in args.vocab:
            x = train_s.get((name, v))
            ours = train_s[("jpeglm", v)]
            cells.append("not run" if x is None else f"{x:.2f} ({x / ours:.1f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    section = "\n".join(lines) + "\n"
    print("\n" + section)
    if not args.no_write:
        write_section(section)
        print(f"written to {RESULTS}")


def write_section(section: str) -> None:
    """Replace (or append) the "## Tokenizer" section of RESULTS.md, leaving the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == HEADING), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        rest = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)


if __name__ == "__main__":
    main()
