"""atheris: Tokenizer.load (from a file), Tokenizer.from_sentencepiece (bytes) and encode /
decode of whatever loads, on arbitrary bytes. Allowed: a tokenizer, or ValueError (BPEError
is one). The first byte picks the entry point."""

from __future__ import annotations

import os
import sys
import tempfile

import atheris
from _harness import corpus_args

from jpeglm.tokenizer import Tokenizer

_DIR = tempfile.mkdtemp(prefix="jpeglm-fuzz-tok-")
_PATH = os.path.join(_DIR, "tok.txt")


def seeds() -> list[bytes]:
    tok = Tokenizer.train(
        [bytes(range(256)) * 4, b"abcabcabd" * 20], vocab_size=300, progress=False
    )
    tok.save(_PATH)
    text = open(_PATH, "rb").read()
    return [b"\x00" + text, b"\x00" + text[: len(text) // 2], b"\x01" + b"\x0a\x05\x0a\x01a"]


def test_one(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    try:
        if data[0] % 2 == 0:
            with open(_PATH, "wb") as f:
                f.write(body)
            tok = Tokenizer.load(_PATH)
        else:
            tok = Tokenizer.from_sentencepiece(body)
    except ValueError:
        return
    try:
        ids = tok.encode(body)
    except ValueError:  # a byte with no token and no unk
        return
    if tok.unk_id is None or tok.unk_id not in ids:
        assert tok.decode(ids) == body
    tok.decode([i % tok.vocab_size for i in body])


def main() -> None:
    # instrument_all, not instrument_imports: jpeglm may come through the editable install's
    # custom loader, which instrument_imports does not see.
    atheris.instrument_all()
    atheris.Setup(corpus_args("tokenizer", seeds), test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
