"""atheris: jpeglm.codec on arbitrary bytes (strict and tolerant decode, header, with_tables,
mcu_validity, coefficients). Allowed outcomes: a result of the documented shape, or
JPEGError / ValueError. Anything else (another exception, a crash) is a finding."""

from __future__ import annotations

import sys

import atheris
import numpy as np
from _harness import corpus_args, jpeg_seeds

from jpeglm import codec


def test_one(data: bytes) -> None:
    if not data:
        return
    quality = 1 + data[0] % 100
    stream = data[1:]
    try:
        img = codec.decode(stream, quality=quality)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    except ValueError:  # JPEGError
        pass
    size = 16 * (1 + data[0] % 4)
    r = codec.decode(stream, tolerant=True, quality=quality, size=size)
    assert 0 <= r.valid_mcus <= r.total_mcus, r
    assert r.image.dtype == np.uint8 and r.image.shape[2] == 3
    for fn in (codec.header, codec.with_tables, codec.mcu_validity, codec.coefficients):
        try:
            fn(stream) if fn is codec.header else fn(stream, quality)
        except ValueError:
            pass


def main() -> None:
    # instrument_all, not instrument_imports: jpeglm may come through the editable install's
    # custom loader, which instrument_imports does not see.
    atheris.instrument_all()
    atheris.Setup(corpus_args("codec", jpeg_seeds), test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
