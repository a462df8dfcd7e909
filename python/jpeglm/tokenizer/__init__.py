"""The byte-level BPE tokenizer (:mod:`jpeglm.tokenizer.bpe`) and its file formats
(:mod:`jpeglm.tokenizer.files`). ``from jpeglm.tokenizer import Tokenizer`` is the public face."""

from jpeglm.tokenizer.bpe import (
    BRAILLE_OFFSET,
    MAX_FILE_BYTES,
    MAX_VOCAB_SIZE,
    BPEError,
    PathLike,
    Tokenizer,
    braille_to_bytes,
    bytes_to_braille,
    load_file,
)

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
