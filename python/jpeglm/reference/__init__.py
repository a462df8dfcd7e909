"""The slow, readable reference twins of the fast code, each the specification its fast
counterpart is tested against:

* :mod:`.jpeg` -- the educational codec: JPEG step by step in readable numpy
  (:mod:`.jpeg_encode`, :mod:`.jpeg_decode`; :mod:`.explain` draws it), twin of
  :mod:`jpeglm.codec`. Its main functions are re-exported here.
* :mod:`.scan` -- the canonical scan automaton in plain Python, twin of :mod:`jpeglm.grammar`.
* :mod:`.bpe` -- byte-level BPE in plain Python, twin of the native tokenizer.
* :mod:`.kernels` -- the model's ops in plain PyTorch, twin of the Triton kernels
  (:mod:`jpeglm.kernels`); imports torch, which the others never do.
"""

from jpeglm.reference.jpeg import (
    decode,
    decode_coefficients,
    encode,
    quantized_coefficients,
    tables,
)

__all__ = ["encode", "decode", "decode_coefficients", "quantized_coefficients", "tables"]
