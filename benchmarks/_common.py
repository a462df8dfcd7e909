"""Shared helpers for the benchmark harnesses: timing, machine description, RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model, core count, OS and Python, for the results header."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def today() -> str:
    return _dt.date.today().isoformat()


def round_robin(
    fns: dict[str, Callable[[], int]], repeats: int = 5, min_time: float = 0.2
) -> dict[str, float]:
    """Items/s of each callable, best of ``repeats``; the callables take turns in every repeat.

    Interleaving makes a noisy machine (another process on a core) hurt every contender alike
    instead of whichever happened to run during the spike. Each callable returns how many items
    it processed; each turn runs it for at least ``min_time`` seconds.
    """
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            n = 0
            t0 = time.perf_counter()
            while True:
                n += fn()
                dt = time.perf_counter() - t0
                if dt >= min_time:
                    break
            best[name] = max(best[name], n / dt)
    return best


def parse_device_args(ap):  # noqa: ANN001, ANN201 - argparse parser in, (args, gpu) out
    """Add the torch benchmarks' shared flags (--threads, --no-write; ``--device`` must be
    defined already), parse, apply --threads; returns ``(args, gpu)``."""
    import torch

    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return args, gpu


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, atomically."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".RESULTS.")
    with os.fdopen(fd, "w") as f:
        f.write(text.rstrip() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, RESULTS)
