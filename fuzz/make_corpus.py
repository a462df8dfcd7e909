"""Write the libFuzzer seed corpus into fuzz/corpus/<target>/ (small: well under 1 MB in all).

Seeds come from the bundled images (python/jpeglm/data/assets/images) through
``jpeglm.codec.encode`` at a few sizes and qualities: stripped streams, complete JPEGs,
truncated and bit-flipped ones.
JPEG targets take one leading byte that picks the quality (1 + byte % 100). Run from the repo
root: ``python fuzz/make_corpus.py`` (or ``make fuzz-corpus``); it replaces the old seeds.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
from pathlib import Path

from jpeglm import codec, grammar

ROOT = Path(__file__).resolve().parent
IMAGES = ROOT.parent / "python" / "jpeglm" / "data" / "images"
JPEG_TARGETS = ("decode", "decode_tolerant", "tables", "coefficients", "mcu_validity")


def _write(target: str, data: bytes) -> None:
    folder = ROOT / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def jpeg_seeds() -> list[tuple[int, bytes]]:
    """(quality, stream) pairs: stripped, complete, truncated, damaged."""
    rng = random.Random(0)
    images = sorted(IMAGES.glob("*.png"))
    out: list[tuple[int, bytes]] = []
    for i, path in enumerate(images):
        for size, quality in ((16, 25), (32, 5), (48, 75), (64, 25))[: 2 + i % 3]:
            s = codec.encode(path, quality=quality, size=size)
            out.append((quality, s))
            full = codec.with_tables(s, quality)
            if i % 2 == 0:
                out.append((quality, full))
            cut = rng.randrange(len(s) // 2, len(s))
            out.append((quality, s[:cut]))
            flipped = bytearray(s)
            pos = rng.randrange(codec.header(s)["scan_offset"], len(s))
            flipped[pos] ^= 1 << rng.randrange(8)
            out.append((quality, bytes(flipped)))
    out.append((25, b""))
    out.append((25, b"\xff\xd8"))
    out.append((25, codec.tables(25)))
    return out


def main() -> None:
    corpus = ROOT / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    seeds = jpeg_seeds()
    for target in JPEG_TARGETS:
        for quality, s in seeds:
            _write(target, bytes([quality - 1]) + s)

    # Scan automaton: mode byte (bit0 size 32, bit1 start at scan, bit2 guided) + bytes.
    for size in (16, 32):
        s = codec.encode(IMAGES / "astronaut.png", size=size)
        scan = s[len(grammar.ScanAutomaton(size).header) :]
        big = size == 32
        _write("scan_grammar", bytes([big]) + s)  # a whole stream from SOI, raw
        _write("scan_grammar", bytes([big | 2]) + scan)  # the scan only
        _write("scan_grammar", bytes([big | 2]) + scan[: len(scan) // 2])
        _write("scan_grammar", bytes([big | 2 | 4]) + bytes(range(256)))  # guided walk
    # Token grammar: flags (bit0 size 32, bit1 at scan, bit2 the 256 bytes, bit3 guided,
    # bit4 EOS valid), extra tokens (length byte + bytes), then one id pick per step.
    scan16 = codec.encode(IMAGES / "camera.png", size=16)[len(grammar.ScanAutomaton(16).header) :]
    extra = b"".join(bytes([len(scan16[k : k + 3])]) + scan16[k : k + 3] for k in range(0, 24, 3))
    _write("token_grammar", bytes([2 | 4 | 8 | 16, 9]) + extra + b"\x00" + bytes(range(200)))
    _write("token_grammar", bytes([2 | 4 | 16, 0]) + scan16)
    _write("token_grammar", bytes([1 | 2 | 8 | 16, 8]) + extra + bytes(range(100)))
    # BPE: flags (bit0 whole_token, bit1 fuse_unk, bit2 unk, bit3 the 256 bytes), extra tokens
    # (length byte, bytes, rank byte; length 0 = special), then the text / ids.
    text = codec.encode(IMAGES / "coffee.png", size=32)
    pieces = [text[k : k + 2] for k in range(100, 140, 2)] + [text[200:204], text[300:303]]
    vocab = b"".join(bytes([len(p)]) + p + bytes([r]) for r, p in enumerate(pieces))
    for flags in (8, 8 | 1, 4 | 2, 8 | 4 | 32):
        _write("bpe", bytes([flags, len(pieces)]) + vocab + text[:600])
    _write("bpe", bytes([8, 3]) + b"\x02ab\x01\x02bc\x00\x03abc\x02" + b"abcabcab")
    _write("bpe", bytes([8 | 32, 0]) + struct.pack("<8i", 0, 1, 255, 256, -1, 7, 2**31 - 1, 3))
    # BPE training: number of merges, then documents separated by FF FE.
    for k, path in enumerate(sorted(IMAGES.glob("*.png"))[:3]):
        docs = [codec.encode(path, size=16, quality=q) for q in (25, 50)]
        _write("bpe_train", bytes([20 + 10 * k]) + b"\xff\xfe".join(docs))
    _write("bpe_train", b"\x30" + b"aaaaaaaabababab\xff\xfeaaab")

    total = sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file())
    n = sum(1 for f in corpus.rglob("*") if f.is_file())
    print(f"wrote {n} seeds, {total / 1024:.0f} KiB, into {corpus}")


if __name__ == "__main__":
    main()
