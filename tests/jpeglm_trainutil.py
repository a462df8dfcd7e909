"""Shared by the trainer tests: a small prepared dataset and ways to run `jpeglm.train.loop` in
subprocesses (one process, torchrun on one "node", or several "nodes" on 127.0.0.1). Every run
is pinned to the CPU (CUDA_VISIBLE_DEVICES="") so losses compare exactly on a GPU machine too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.data import prepare as data
from jpeglm.tokenizer import Tokenizer


def crops(n: int, size: int, seed: int) -> list[Image.Image]:
    return [c.resize((size, size)) for c in samples.random_crops(n, seed, scale=(0.2, 0.6))]


def make_world(root: Path) -> tuple[Path, Tokenizer]:
    """Image folders (train / held-out), a tokenizer and prepared shards, at 32x32."""
    for split, n, seed in (("train", 96, 0), ("held", 24, 1)):
        (root / split).mkdir()
        for i, im in enumerate(crops(n, 48, seed)):
            im.save(root / split / f"{i:03d}.png")
    streams = [codec.encode(p, size=32) for p in sorted((root / "train").iterdir())]
    tok = Tokenizer.train(streams, vocab_size=300, progress=False)
    tok.save(root / "tok.jpeglm")
    for split in ("train", "held"):
        data.prepare(root / split, root / f"{split}_shards", tok, size=32, seq_len=128,
                     images_per_shard=32, progress=False)  # fmt: skip
    return root, tok


def cfg(root: Path, out: Path, **kw) -> list[str]:
    """key=value overrides of a small run on the prepared world."""
    base = {
        "train_data": [str(root / "train_shards")], "eval_data": [str(root / "held_shards")],
        "tokenizer": str(root / "tok.jpeglm"), "batch_size": 4, "max_steps": 12,
        "warmup_steps": 2, "eval_every": 6, "ckpt_every": 4, "out": str(out), "progress": False,
        "lr": 3e-3, "min_lr": 3e-4,
    }  # fmt: skip
    base.update(kw)
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def command(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "jpeglm.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "jpeglm.train", *args]  # fmt: skip


def run(args: list[str], nproc: int = 1, popen: dict | None = None):
    cmd = command(args, nproc)
    if popen is not None:
        return subprocess.Popen(cmd, env=env(), **popen)
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)


def losses(out: Path) -> list[float]:
    """The loss of each step; where a step was redone after a kill, its last record."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = {r["step"]: r["loss"] for r in rows}
    return [last[s] for s in sorted(last)]


def kill_repeatedly(cmd: list[str], after: Callable[[], None] | None = None, times: int = 3,
                    seed: int = 1) -> None:  # fmt: skip
    """Start ``cmd`` and SIGKILL it 1-3 s later, ``times`` times (seeded); ``after`` checks
    what is on disk after each kill."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(times):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(1.0, 3.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if after is not None:
            after()
