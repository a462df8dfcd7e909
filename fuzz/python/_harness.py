"""Shared set-up for the atheris harnesses: seed corpus folders and the libFuzzer arguments.

Each harness is run as ``python fuzz/python/fuzz_X.py [libFuzzer args]`` (``make fuzz-python``).
Without a corpus argument it uses build/fuzz/pycorpus/<name>, seeded on first use.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def corpus_args(name: str, seeds: Callable[[], Iterable[bytes]]) -> list[str]:
    """sys.argv with the harness's corpus folder added when no folder was given."""
    args = list(sys.argv)
    if any(not a.startswith("-") for a in args[1:]):
        return args
    folder = ROOT / "build" / "fuzz" / "pycorpus" / name
    if not folder.is_dir() or not any(folder.iterdir()):
        folder.mkdir(parents=True, exist_ok=True)
        for s in seeds():
            (folder / hashlib.sha1(s).hexdigest()[:16]).write_bytes(s)
    return [*args, str(folder)]


def jpeg_seeds() -> list[bytes]:
    """Quality byte + stream, as the native corpus (fuzz/corpus/decode) holds them."""
    folder = ROOT / "fuzz" / "corpus" / "decode"
    return [p.read_bytes() for p in sorted(folder.iterdir())][:40] if folder.is_dir() else [b""]
