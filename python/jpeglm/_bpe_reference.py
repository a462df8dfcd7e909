"""Moved to :mod:`jpeglm.reference.bpe` (the plain-Python BPE twin); kept so old imports work."""

from jpeglm.reference.bpe import (  # noqa: F401
    MAX_TOKEN_BYTES,
    __all__,
    _merge,
    decode,
    encode,
    encode_pieces,
    train,
    vocab_from_merges,
)
