"""The Hugging Face Hub's pickle weights: ``pytorch_model.bin``, or shards
``pytorch_model-0000x-of-0000y.bin`` listed in ``pytorch_model.bin.index.json`` (the layout of
the released ``uwnlp/jpeg-lm-reimplementation``).

A pickle can carry code, so these files are read only with torch's restricted unpickler
(``torch.load(weights_only=True)``, torch >= 2.6: tensors, dicts and plain values, no other
global), memory-mapped (``mmap=True``: a shard's tensors are views of the file, copied one at a
time) and on the CPU; plain ``pickle`` never reads them. A file whose pickle names anything else
(a ``__reduce__`` payload: ``os.system``, ``exec``, ...) is refused in one ``ValueError`` naming
it, and nothing in it runs. Each file must hold a flat ``{name: tensor}`` dict of floating point
tensors (what ``save_pretrained(safe_serialization=False)`` writes).

:mod:`jpeglm.checkpoint.hf` checks and reads these files as it does safetensors ones: names
mapped to ours, shapes and dtypes checked before any tensor is copied.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from jpeglm.checkpoint.files import first_names, index_shards

__all__ = ["BIN_INDEX", "BIN_SINGLE", "bin_files", "bin_headers", "read_bin"]

BIN_SINGLE = "pytorch_model.bin"  #: the unsharded Hub weights file
BIN_INDEX = "pytorch_model.bin.index.json"  #: the index of the sharded Hub weights
MIN_TORCH = (2, 6)  #: the first torch whose weights-only unpickler is the load default
_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
           torch.float64: "F64"}  # fmt: skip


def bin_files(folder: Path) -> list[Path] | None:
    """The pickle weight files of a Hub folder (the single file, or the shards its index
    lists), or None when it has neither. The index is untrusted: its ``weight_map`` must be a
    non-empty object of name -> plain ``*.bin`` file names inside the folder."""
    single, index = folder / BIN_SINGLE, folder / BIN_INDEX
    if single.is_file():
        return [single]
    if not index.is_file():
        return None
    return index_shards(index, ".bin")


def _why(e: Exception) -> str:
    """What torch's (long, multi-line) refusal refused: the global the pickle names, else its
    first telling line (its advice to allowlist the global is left out)."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it names {found.group(1)}, which is no weight"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "unsupported" in ln.lower() or "blocked" in ln.lower():
            return ln[:200]
    return lines[0][:200] if lines else type(e).__name__


def _load(file: Path) -> dict[str, torch.Tensor]:
    """One weights file through torch's restricted unpickler, memory-mapped when it is in
    torch's zip format (a legacy file is read whole, still weights only)."""
    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        raise ValueError(
            f"{file}: reading pickle weights needs torch >= 2.6 (its restricted unpickler); "
            f"this is torch {torch.__version__}"
        )
    import zipfile

    mmap = zipfile.is_zipfile(file)
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": refused or read anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(file, weights_only=True, mmap=mmap, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(
            f"{file} is refused: not a weights-only PyTorch file (torch's restricted unpickler: "
            f"{_why(e)}); nothing in it was run"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file} must hold a dict of tensor name -> tensor, got {type(obj)}")
    odd = [repr(k)[:80] for k, v in obj.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]  # fmt: skip
    if odd:
        raise ValueError(f"{file} holds entries that are not named tensors: {first_names(odd)}")
    return obj


def bin_headers(file: Path) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors-style dtype such as ``"BF16"``, shape) of each tensor in ``file``;
    a dtype that is not floating point is reported by its torch name."""
    for key, t in _load(file).items():
        yield key, _DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)


def read_bin(file: Path, keys: list[tuple[str, str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) for each (our name, key) of ``keys``, one at a time: each is copied
    out of the mapped file into fresh contiguous memory."""
    state = _load(file)
    for ours, key in keys:
        yield ours, state[key].clone(memory_format=torch.contiguous_format)
    del state
