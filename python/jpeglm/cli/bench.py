"""The quick speed check behind ``jpeglm bench``: the installed package's headline speeds
against the peers present (Pillow; tiktoken when installed).

The full harnesses, with RESULTS.md, are in the repository's benchmarks/; this one needs
nothing but the package and measures on ``images`` random crops of the bundled photos: the
best of three timed runs after a warm-up, as images per second (tokenizing: MB/s).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np

__all__ = ["run", "table"]


def _rate(fn: Callable[[], object], n: float) -> float:
    """``n`` units over the best of three timed calls of ``fn`` (after one untimed call)."""
    fn()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def run(images: int = 64) -> list[tuple[str, str, float]]:
    """Measure; one ``(task, implementation, rate)`` row per implementation present."""
    from PIL import Image

    from jpeglm import codec
    from jpeglm.data import bundled as samples
    from jpeglm.tokenizer import Tokenizer

    imgs = [codec.prepare(c) for c in samples.random_crops(images, flip=True)]
    pil = [Image.fromarray(a) for a in imgs]
    streams = codec.encode_batch(imgs)
    full = [codec.with_tables(x) for x in streams]

    def pil_enc() -> None:
        for im in pil:
            im.save(io.BytesIO(), "JPEG", quality=25, subsampling="4:2:0", streamtype=2,
                    restart_marker_blocks=1)  # fmt: skip

    n = len(imgs)
    rows = [
        ("encode", "Pillow", _rate(pil_enc, n)),
        ("encode", "jpeglm (1 thread)", _rate(lambda: [codec.encode(a) for a in imgs], n)),
        ("encode", "jpeglm batch (all cores)",
         _rate(lambda: codec.encode_batch(np.stack(imgs)), n)),
        ("decode", "Pillow",
         _rate(lambda: [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in full], n)),
        ("decode", "jpeglm (1 thread)", _rate(lambda: [codec.decode(x) for x in streams], n)),
        ("decode", "jpeglm batch (all cores)", _rate(lambda: codec.decode_batch(streams), n)),
    ]  # fmt: skip
    tok = Tokenizer.train(streams, vocab_size=320, progress=False)
    mb = sum(map(len, streams)) / 1e6
    rows.append(("tokenize MB/s", "jpeglm", _rate(lambda: [tok.encode(x) for x in streams], mb)))
    try:
        import tiktoken

        enc = tiktoken.Encoding("j", pat_str=r"[\s\S]+", mergeable_ranks=tok.mergeable_ranks,
                                special_tokens={})  # fmt: skip
        rows.append(("tokenize MB/s", "tiktoken",
                     _rate(lambda: [enc._encode_bytes(x) for x in streams], mb)))  # fmt: skip
    except ImportError:
        pass
    return rows


def table(rows: list[tuple[str, str, float]]) -> str:
    """The rows of :func:`run` as the printed table (a header line, then one line each)."""
    lines = [f"{'task':<14} {'implementation':<26} {'rate':>10}  (images/s unless noted)"]
    lines += [f"{task:<14} {name:<26} {r:>10,.1f}" for task, name, r in rows]
    return "\n".join(lines)
