"""JPEG, step by step, in plain numpy: the canonical JPEG-LM stream, readable and exact.

This is the educational twin of :mod:`jpeglm.codec` (which calls libjpeg natively), in the
spirit of tiktoken's ``_educational.py``. Every step of baseline JPEG is one short function,
named after the step, in the order the data flows::

    RGB --rgb_to_ycbcr--> Y, Cb, Cr --downsample_420--> Y, Cb/2, Cr/2
        --split_blocks (8x8, minus 128)--> blocks --fdct_islow--> coefficients x 8
        --quantize--> small integers --zigzag--> 1-D sequences
        --run_length (DC difference, (run, size) pairs)--> symbols
        --huffman (standard tables)--> bits --byte_stuffing + restart markers--> bytes

The encoder reproduces libjpeg's integer arithmetic wherever it decides the output bytes:
the fixed-point colour conversion (jccolor.c), the 2x2 box downsampling with alternating
rounding bias (jcsample.c), the integer "islow" forward DCT (jfdctint.c) and the rounding
division of quantization (jcdctmgr.c). So ``encode(rgb)`` is byte-identical to
``jpeglm.codec.encode(rgb)`` (tests check it). Beside each exact step sits a ``*_textbook``
version — the formula from a textbook in floating point — and the docstrings say how the two
differ (never by more than one unit after quantization rounding on typical images).

The decoder parses the stream back into the same quantized coefficients that libjpeg reads
(``jpeglm.codec.coefficients``), then reconstructs pixels with libjpeg's integer inverse DCT
(jidctint.c), triangular "fancy" chroma upsampling (jdsample.c) and fixed-point colour
conversion (jdcolor.c): ``decode`` equals ``jpeglm.codec.decode`` pixel for pixel.
``decode_textbook`` does the same with a float IDCT, nearest-neighbour upsampling and float
colour conversion.

Everything here is slow on purpose (a Python loop over symbols): use ``jpeglm.codec`` for work.

The encoder steps live in :mod:`jpeglm.reference.jpeg_encode`, their inverses and the decoder
in :mod:`jpeglm.reference.jpeg_decode`; this module gathers both under one name.
"""

from __future__ import annotations

from jpeglm.reference.jpeg_decode import (
    BitReader,
    decode,
    decode_coefficients,
    decode_textbook,
    dequantize,
    extend,
    idct_islow,
    idct_textbook,
    merge_blocks,
    read_block,
    split_scan,
    un_run_length,
    unzigzag,
    upsample_420_fancy,
    upsample_420_textbook,
    ycbcr_to_rgb,
    ycbcr_to_rgb_textbook,
)
from jpeglm.reference.jpeg_encode import (
    AC_CHROMA,
    AC_CHROMA_BITS,
    AC_CHROMA_VALS,
    AC_LUMA,
    AC_LUMA_BITS,
    AC_LUMA_VALS,
    DC_CHROMA,
    DC_CHROMA_BITS,
    DC_CHROMA_VALS,
    DC_LUMA,
    DC_LUMA_BITS,
    DC_LUMA_VALS,
    STD_CHROMA_QUANT,
    STD_LUMA_QUANT,
    ZIGZAG,
    BitWriter,
    dct_basis,
    dct_matrix,
    downsample_420,
    downsample_420_textbook,
    encode,
    fdct_islow,
    fdct_textbook,
    header,
    huffman_codes,
    huffman_encode_block,
    islow_odd_part,
    magnitude,
    mcu_blocks,
    quant_table,
    quantize,
    quantize_textbook,
    quantized_coefficients,
    rgb_to_ycbcr,
    rgb_to_ycbcr_textbook,
    run_length,
    split_blocks,
    tables,
    zigzag,
)

__all__ = [
    "AC_CHROMA",
    "AC_CHROMA_BITS",
    "AC_CHROMA_VALS",
    "AC_LUMA",
    "AC_LUMA_BITS",
    "AC_LUMA_VALS",
    "DC_CHROMA",
    "DC_CHROMA_BITS",
    "DC_CHROMA_VALS",
    "DC_LUMA",
    "DC_LUMA_BITS",
    "DC_LUMA_VALS",
    "STD_CHROMA_QUANT",
    "STD_LUMA_QUANT",
    "ZIGZAG",
    "BitReader",
    "BitWriter",
    "dct_basis",
    "dct_matrix",
    "decode",
    "decode_coefficients",
    "decode_textbook",
    "dequantize",
    "downsample_420",
    "downsample_420_textbook",
    "encode",
    "extend",
    "fdct_islow",
    "islow_odd_part",
    "fdct_textbook",
    "header",
    "huffman_codes",
    "huffman_encode_block",
    "idct_islow",
    "idct_textbook",
    "magnitude",
    "mcu_blocks",
    "merge_blocks",
    "quant_table",
    "quantize",
    "quantize_textbook",
    "quantized_coefficients",
    "read_block",
    "rgb_to_ycbcr",
    "rgb_to_ycbcr_textbook",
    "run_length",
    "split_blocks",
    "split_scan",
    "tables",
    "un_run_length",
    "unzigzag",
    "upsample_420_fancy",
    "upsample_420_textbook",
    "ycbcr_to_rgb",
    "ycbcr_to_rgb_textbook",
    "zigzag",
]
