"""Reading a trainer checkpoint's DCP files without running any code they carry.

A ``step_N`` folder is exchanged between people like an HF folder, so every file in it is
untrusted. torch's ``FileSystemReader`` reads the ``.metadata`` file with a plain
``pickle.load`` and DCP's default load planner reads the non-tensor items of the shards
(optimizer hyper-parameters) with ``torch.load(weights_only=False)``: a pickle there runs its
``__reduce__`` payload on load. Here:

* :class:`SafeFileSystemReader` -- ``read_metadata`` unpickles with :class:`MetadataUnpickler`,
  which admits only DCP's metadata classes and the few torch / pathlib objects they hold (the
  way ``torch.load(weights_only=True)`` admits only tensors): any other global is refused with
  one ``ValueError`` naming the file, before anything is built from it. The metadata read is
  also checked to be DCP's ``Metadata`` with shard files inside the folder.
* :class:`SafeLoadPlanner` -- the default planner with ``load_bytes`` through
  ``torch.load(weights_only=True)``. Tensors are read by the reader with ``torch.load``, whose
  default from torch 2.6 (the floor of ``jpeglm[train]``) is ``weights_only=True``.

:func:`jpeglm.checkpoint.dcp.load_train_checkpoint` (sampling, ``export`` and ``resume=true``) reads
every DCP checkpoint through both.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata

__all__ = ["MetadataUnpickler", "SafeFileSystemReader", "SafeLoadPlanner", "read_metadata"]

_META = "torch.distributed.checkpoint.metadata"
#: the globals a DCP ``.metadata`` pickle may name: DCP's own metadata classes (plain
#: dataclasses and one enum), ``torch.Size``, the function torch pickles layouts through, and
#: the path class of ``StorageMeta.checkpoint_id``. Torch dtypes (``torch.float32``, ...) are
#: admitted as the values they are, not as callables.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {(_META, n) for n in ("Metadata", "TensorStorageMetadata", "TensorProperties",
                          "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex",
                          "StorageMeta", "_MEM_FORMAT_ENCODING")}
    | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
       ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}
    | {(m, n) for m in ("pathlib", "pathlib._local") for n in ("PosixPath", "PurePosixPath")}
)  # fmt: skip


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds only DCP checkpoint metadata (:data:`ALLOWED_GLOBALS` and torch
    dtypes); any other global -- ``os.system``, ``builtins.eval``, ... -- is an
    ``UnpicklingError`` naming it, raised before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not DCP checkpoint metadata")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not DCP checkpoint metadata")


def read_metadata(path: str | os.PathLike) -> Metadata:
    """The ``Metadata`` in the DCP metadata file ``path``, read with :class:`MetadataUnpickler`
    and checked; ``ValueError`` naming the file for anything else (a refused global, a torn or
    foreign pickle, shard files outside the folder)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            meta = MetadataUnpickler(f).load()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from e
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing {path}: {e} (a pickle can run code; not loaded)") from e
    except Exception as e:  # noqa: BLE001 - torn or garbage pickles raise anything
        raise ValueError(f"{path} is not DCP checkpoint metadata ({type(e).__name__}: {e})") from e
    if not isinstance(meta, Metadata):
        raise ValueError(f"{path} is not DCP checkpoint metadata (it holds a "
                         f"{type(meta).__name__})")  # fmt: skip
    storage = getattr(meta, "storage_data", None)
    if not isinstance(storage, dict):
        raise ValueError(f"{path} is not DCP checkpoint metadata (no storage map)")
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name:
            raise ValueError(f"{path} names a shard file outside its folder: {name!r}")
        if "\\" in name or "\0" in name:
            raise ValueError(f"{path} names a shard file outside its folder: {name!r}")
    return meta


class SafeFileSystemReader(FileSystemReader):
    """torch's ``FileSystemReader`` whose ``read_metadata`` builds only DCP metadata
    (:func:`read_metadata`): a ``.metadata`` with a pickled payload is refused, never run."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        metadata = read_metadata(path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner with the non-tensor items read by
    ``torch.load(weights_only=True)`` (the default one unpickles them without restriction)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        # Read under weights_only; what that admits (tensors, numbers, strings, containers)
        # is written again and handed to the default planner, which reads back only it.
        obj = torch.load(value, weights_only=True)
        safe = io.BytesIO()
        torch.save(obj, safe)
        safe.seek(0)
        super().load_bytes(read_item, safe)
