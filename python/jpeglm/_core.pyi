"""Typed stub of the native extension ``jpeglm._core`` (built from csrc/)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

class JPEGError(ValueError): ...

def encode(
    image: Any, quality: int = 25, stripped: bool = True, restart_blocks: int = 1
) -> bytes: ...
def encode_batch(
    images: Sequence[Any],
    quality: int = 25,
    threads: int = 0,
    stripped: bool = True,
    restart_blocks: int = 1,
) -> list[bytes]: ...
def encode_stack(
    stack: Any, quality: int = 25, threads: int = 0, stripped: bool = True, restart_blocks: int = 1
) -> list[bytes]: ...
def tables(quality: int = 25) -> bytes: ...
def with_tables(data: Any, quality: int = 25) -> bytes: ...
def decode(
    data: Any, quality: int = 25, tolerant: bool = False, fallback_size: int = 0
) -> tuple[NDArray[np.uint8], int, int, bool]: ...
def decode_batch(
    items: Sequence[Any],
    quality: int = 25,
    tolerant: bool = False,
    threads: int = 0,
    fallback_size: int = 0,
) -> list[tuple[NDArray[np.uint8], int, int, bool]]: ...
def parse_header(data: Any) -> dict[str, Any]: ...
def mcu_validity(data: Any, quality: int = 25) -> NDArray[np.bool_]: ...
def default_threads() -> int: ...
