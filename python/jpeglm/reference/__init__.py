"""Educational reference codec: JPEG step by step in readable numpy (see :mod:`.jpeg`)."""

from jpeglm.reference.jpeg import (
    decode,
    decode_coefficients,
    encode,
    quantized_coefficients,
    tables,
)

__all__ = ["encode", "decode", "decode_coefficients", "quantized_coefficients", "tables"]
