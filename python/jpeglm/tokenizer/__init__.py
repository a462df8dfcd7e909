"""The byte-level BPE tokenizer (:mod:`jpeglm.tokenizer.bpe`), what the tokenizer modules share
(:mod:`jpeglm.tokenizer.base`: limits, the byte <-> braille mapping) and its file formats
(:mod:`jpeglm.tokenizer.files`, :mod:`jpeglm.tokenizer.sentencepiece`).
``from jpeglm.tokenizer import Tokenizer`` is the public face."""

from jpeglm.tokenizer.base import (
    BRAILLE_OFFSET,
    MAX_FILE_BYTES,
    MAX_VOCAB_SIZE,
    BPEError,
    PathLike,
    braille_to_bytes,
    bytes_to_braille,
)
from jpeglm.tokenizer.bpe import Tokenizer, load_file

__all__ = [
    "BRAILLE_OFFSET",
    "MAX_FILE_BYTES",
    "MAX_VOCAB_SIZE",
    "BPEError",
    "PathLike",
    "Tokenizer",
    "braille_to_bytes",
    "bytes_to_braille",
    "load_file",
]
