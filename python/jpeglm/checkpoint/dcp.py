"""Checkpoints: the one home for reading and writing model weights and trainer state.

Two kinds of folder, and nothing else:

* **HF folder** -- what ``transformers.LlamaForCausalLM.from_pretrained``,
  :func:`jpeglm.checkpoint.hf.load_pretrained` and ``jpeglm sample`` load; its format is
  :mod:`jpeglm.checkpoint.hf`. The trainer writes one into
  ``OUT/final`` at the end of every run, and ``jpeglm export CKPT DEST`` (:func:`export`)
  makes one from any trainer checkpoint. An HF folder can also start a new run as its initial
  weights (``init_from``; no optimizer state).

* **Trainer checkpoint** ``OUT/step_N`` (this module) -- a ``torch.distributed.checkpoint``
  (DCP) folder, as in torchtitan: every rank writes its own shard of the model and optimizer
  state (``__R_0.distcp``; rank 0 adds ``.metadata``), plus ``train_state.json`` (step, data
  position, world size, the config), ``rng_rank{R}.pt`` per rank and a copy of the tokenizer.
  DCP reshards on load, so a checkpoint written by 8 ranks loads on 4 or on 1. The folder is
  written as ``OUT/.tmp_step_N`` by all ranks and renamed into place by rank 0 after every
  rank has finished (folder-level atomicity: a ``step_N`` folder is always complete); only the
  newest ``keep`` are kept. All ranks must see one shared file system (as on every cluster
  that trains at this scale). A write that fails removes its ``.tmp_step_N`` (the checkpoints
  before it are untouched); a full disk is one ``ValueError`` naming the folder and the space
  the checkpoint needs. Tests pause or fail a write through :data:`write_hook` (or the
  environment variable ``JPEGLM_TEST_CHECKPOINT_HOOK`` in a subprocess).

A checkpoint's pickles never run code: its DCP files are read through
:mod:`jpeglm.checkpoint.dcp_reader` (``.metadata`` by a restricted unpickler, shard items and
``rng_rank{R}.pt`` weights only).

Loading a model of either kind for sampling is :mod:`jpeglm.checkpoint.load` (it imports this
module, never the other way).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from jpeglm import _io
from jpeglm.checkpoint.files import (
    CHECKPOINT_STATE,
    DEFAULT_SHARD_SIZE,
    TOKENIZER_FILE,
    first_names,
    fsync_dir,
    read_json,
    swap_into_place,
)
from jpeglm.checkpoint.hf import save_hf
from jpeglm.model import ModelArgs, Transformer
from jpeglm.model.dtensor import copy_full_

__all__ = [
    "RankFailed",
    "checkpoint_bytes",
    "copy_state_into",
    "disk_full",
    "export",
    "gather_full_state",
    "list_checkpoints",
    "load_train_checkpoint",
    "model_args_from_state",
    "on_every_rank",
    "read_train_state",
    "save_train_checkpoint",
    "weights_size",
    "write_hook",
    "write_hook_call",
]


# ------------------------------------------------------------------------ trainer checkpoints


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """The complete trainer checkpoints ``out/step_N``, oldest first."""
    found = []
    for p in Path(out).glob("step_*"):
        tail = p.name.split("_", 1)[1]
        if p.is_dir() and tail.isdigit():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every save/load without a process group; one process is a normal case."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def _rng_state() -> dict:
    import random

    import numpy as np

    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.tensor(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_train_checkpoint(
    out: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    *,
    keep: int,
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Write ``out/step_N`` (collective: every rank calls it). Model and optimizer go through
    DCP (each rank its shard); ``train_state`` (JSON) and the tokenizer are written by rank 0,
    each rank's RNG by that rank. Renamed into place when all are done; keep-last-``keep``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, _ = _dist()
    out = Path(out)
    final = out / f"step_{step:08d}"
    tmp = out / f".tmp_step_{step:08d}"

    def prepare() -> None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a torn write of ours from a killed run
            tmp.mkdir(parents=True)

    def rank_files() -> None:
        with _io.atomic_open(tmp / f"rng_rank{rank}.pt", "wb") as f:
            torch.save(_rng_state(), f)
        write_hook_call(tmp)

    def finish() -> None:
        if rank == 0:
            if tokenizer is not None:
                _io.atomic_write_bytes(tmp / TOKENIZER_FILE, Path(tokenizer).read_bytes())
            body = {"format": "jpeglm-train-checkpoint", "version": 1, "step": step,
                    **train_state}  # fmt: skip
            _io.atomic_write_text(tmp / CHECKPOINT_STATE, json.dumps(body, indent=1) + "\n")
            fsync_dir(tmp)
            swap_into_place(tmp, final)

    try:
        on_every_rank(prepare)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _quiet_single_process():  # collective: DCP raises a rank's failure on every rank
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        on_every_rank(rank_files)
        on_every_rank(finish)
    except BaseException as e:  # DCP wraps errors in CheckpointException, a BaseException
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # never a torn .tmp_step_N left behind
        if _disk_full(e, out, model):
            before = [p.name for p in list_checkpoints(out) if p != final]
            kept = f"; {before[-1]} is intact" if before else ""
            raise ValueError(
                f"no space left in {_io.show(out)} for the checkpoint {final.name} (it needs "
                f"about {_mb(checkpoint_bytes(model))}, {_mb(_free(out))} free): free some space "
                f"(or lower keep), then resume=true; its temporary folder was removed{kept}"
            ) from None
        raise
    if rank == 0:
        _prune(out, final, keep, train_state.get("run_id"))
    _barrier()
    return final


class RankFailed(RuntimeError):
    """Another rank's part of a collective write failed (its error, as text): every rank stops
    with it instead of waiting at the next barrier for the rank that left."""


def on_every_rank(part: Callable[[], None]) -> None:
    """Run this rank's ``part`` of a checkpoint write, then learn whether every rank's part
    succeeded (a collective, which also serves as the barrier): a failure on any rank is raised
    on all of them, so no rank waits forever for one that left (a full disk on one node)."""
    error: Exception | None = None
    try:
        part()
    except Exception as e:  # noqa: BLE001 - handed to the other ranks, then raised here
        error = e
    rank, world = _dist()
    if world > 1:
        import torch.distributed as dist

        said: list[str | None] = [None] * world
        dist.all_gather_object(said, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, x) for r, x in enumerate(said) if x is not None]
        if error is None and failed:
            r, text = failed[0]
            error = RankFailed(f"rank {r} could not write its part of the checkpoint: {text}")
    if error is not None:
        raise error


#: a test-only hook, called as ``write_hook(tmp)`` inside every checkpoint write (after the DCP
#: shards and the RNG files, before ``train_state.json``): tests pause the write or make it
#: fail there. In a subprocess, the environment variable ``JPEGLM_TEST_CHECKPOINT_HOOK`` does
#: the same: ``pause:SECONDS:MARKER`` (create the file MARKER, then wait SECONDS) or
#: ``enospc[:STEP[:RANK]]`` (raise ``OSError(ENOSPC)``, in the write of step STEP only and on
#: rank RANK only if given; STEP ``final``: in the trainer's final export instead).
write_hook: Callable[[Path], None] | None = None


def write_hook_call(tmp: Path) -> None:
    if write_hook is not None:
        write_hook(tmp)
        return
    spec = os.environ.get("JPEGLM_TEST_CHECKPOINT_HOOK", "")
    kind, _, arg = spec.partition(":")
    if kind == "pause":
        import time

        seconds, _, marker = arg.partition(":")
        if marker:
            Path(marker).write_text(tmp.name)
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:  # signals are handled between the sleeps
            time.sleep(0.02)
    elif kind == "enospc":
        step, _, rank = arg.partition(":")
        if step == "final":  # the trainer's final export
            if tmp.name != ".tmp_final":
                return
        elif step and tmp.name != f".tmp_step_{int(step):08d}" or tmp.name == ".tmp_final":
            return
        if rank and int(rank) != _dist()[0]:
            return
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "__0_0.distcp"))


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About how many bytes a trainer checkpoint of ``model`` takes: the weights and AdamW's
    two moments (each of the weights' size; every rank's shard together)."""
    return _weight_bytes(model) * 3


def _free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def weights_size(model: torch.nn.Module) -> str:
    """The model's weights in MiB / GiB, for messages."""
    return _mb(_weight_bytes(model))


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` says a write failed for want of space: ``ENOSPC`` / ``EDQUOT`` anywhere in
    its chain (DCP's ``CheckpointException`` holds each rank's error, :class:`RankFailed`
    another rank's as text; torch's own writer says ``file write failed``)."""
    if isinstance(e, (KeyboardInterrupt, SystemExit)):
        return False
    seen: set[int] = set()
    stack: list[object] = [e]
    while stack:
        x = stack.pop()
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(x) or "file write failed" in str(x):
            return True
        stack += [x.__cause__, x.__context__]
        failures = getattr(x, "failures", None)  # DCP: rank -> (exception, traceback)
        if isinstance(failures, dict):
            stack += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    return False


def _disk_full(e: BaseException, out: Path, model: torch.nn.Module) -> bool:
    """Whether a checkpoint write failed for want of space: :func:`disk_full`, or less space
    free than the checkpoint needs (a Ctrl-C never counts: it is neither)."""
    if disk_full(e):
        return True
    return isinstance(e, (OSError, RuntimeError)) and _free(out) < checkpoint_bytes(model)


def _prune(out: Path, newest: Path, keep: int, run_id: str | None) -> None:
    """Keep the newest ``keep`` checkpoints of this run (same ``run_id``); never the one just
    written, never a folder that is not one of this run's checkpoints."""
    mine = []
    for p in list_checkpoints(out):
        try:
            if read_json(p / CHECKPOINT_STATE).get("run_id") == run_id:
                mine.append(p)
        except (OSError, ValueError):
            continue  # not ours, or unreadable: leave it
    for old in mine[:-keep]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """``train_state.json`` of a trainer checkpoint; a clear error for anything else."""
    path = Path(path)
    state_file = path / CHECKPOINT_STATE
    if not state_file.is_file():
        if (path / "state.pt").is_file() and (path / "model.safetensors").is_file():
            raise ValueError(
                f"{path} is a checkpoint of an older jpeglm (safetensors + state.pt) that cannot "
                f"be resumed; start a new run from its weights with init_from={str(path)!r}"
            )
        raise ValueError(f"corrupt checkpoint {path}: no {CHECKPOINT_STATE}")
    try:
        state = read_json(state_file)
    except ValueError as e:
        raise ValueError(f"corrupt checkpoint {path}: {e}") from e
    if state.get("format") != "jpeglm-train-checkpoint" or not isinstance(state.get("step"), int):
        raise ValueError(f"corrupt checkpoint {path}: {CHECKPOINT_STATE} is not a trainer state")
    if not (path / ".metadata").is_file():
        raise ValueError(f"corrupt checkpoint {path}: no DCP .metadata")
    return state


def load_train_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """Restore model and optimizer (resharded to this world by DCP) and this rank's RNG from
    ``path``; returns its ``train_state``. Collective. ``optimizer=None`` loads weights only."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    from jpeglm.checkpoint.dcp_reader import SafeFileSystemReader, SafeLoadPlanner, read_metadata

    path = Path(path)
    state = read_train_state(path)
    read_metadata(path / ".metadata")  # a pickled payload: refused in one line, never run

    def load(
        sd: dict,
    ) -> None:  # no code in the checkpoint's pickles runs (jpeglm.checkpoint.dcp_reader)
        with _quiet_single_process():
            dcp.load(sd, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner())

    try:
        if optimizer is None:
            model_sd = get_model_state_dict(model)
            load({"model": model_sd})
            set_model_state_dict(model, model_sd)
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            sd = {"model": model_sd, "optim": optim_sd}
            load(sd)
            set_state_dict(model, optimizer, model_state_dict=sd["model"],
                           optim_state_dict=sd["optim"])  # fmt: skip
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP's errors: one line
        lines = [x for x in str(e).strip().splitlines() if x.strip()]
        why = lines[-1].strip() if lines else type(e).__name__
        raise ValueError(f"corrupt checkpoint {path}: cannot read its DCP shards ({why})") from e
    rank, _ = _dist()
    rng = path / f"rng_rank{rank}.pt"
    if optimizer is not None and rng.is_file():
        try:  # weights only: a pickled payload is refused, never run
            _set_rng_state(torch.load(rng, weights_only=True))
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"corrupt checkpoint {path}: refusing {rng.name}: it holds more "
                "than tensors (a pickle can run code; not loaded)"
            ) from e
        except Exception as e:  # noqa: BLE001
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"corrupt checkpoint {path}: {rng.name}: {first}") from e
    return state


# ------------------------------------------------------------------------------------- export


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU, on rank 0 (other ranks: ``{}``).
    Collective under FSDP; parameters are gathered one at a time with CPU offload."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    rank, world = _dist()
    options = StateDictOptions(full_state_dict=True, cpu_offload=world > 1)
    sd = get_model_state_dict(model, options=options)
    if rank != 0:
        return {}
    return {k: v.detach().cpu() for k, v in sd.items() if not k.startswith("rope.")}


def model_args_from_state(state: dict[str, Any]) -> ModelArgs:
    """The :class:`ModelArgs` a trainer checkpoint was made with."""
    try:
        return ModelArgs(**state["model_args"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"train state has no usable model_args: {e}") from e


def export(
    checkpoint: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = DEFAULT_SHARD_SIZE,
    replace: bool = False,
) -> Path:
    """Make an HF folder (weights, config, tokenizer, metadata) from a trainer checkpoint
    ``step_N`` -- or from a run folder, whose newest checkpoint is taken. One process, on CPU;
    the DCP shards of any number of ranks are read and joined."""
    src = Path(checkpoint)
    if not src.is_dir():
        raise FileNotFoundError(f"no such checkpoint folder: {src}")
    if (src / "config.json").is_file() and not (src / CHECKPOINT_STATE).is_file():
        raise ValueError(
            f"{src} is already an HF folder (config.json + safetensors), not a trainer "
            f"checkpoint: use it as it is (jpeglm sample --model {src}); export converts a "
            "step_N folder or a run folder"
        )
    if not (src / CHECKPOINT_STATE).is_file() and list_checkpoints(src):
        src = list_checkpoints(src)[-1]
    state = read_train_state(src)
    args = model_args_from_state(state)
    with torch.device("meta"):
        model = Transformer(args, backend="torch")
    model.to_empty(device="cpu")
    load_train_checkpoint(src, model, None)
    full = {k: v for k, v in model.state_dict().items() if not k.startswith("rope.")}
    tok = src / TOKENIZER_FILE
    return save_hf(
        dest, args, full, dtype=dtype, max_shard_size=max_shard_size,
        tokenizer=tok if tok.is_file() else None, metadata=state.get("metadata"), replace=replace,
    )  # fmt: skip


def copy_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (our names) into ``model``'s parameters -- each rank its own slice of
    a sharded one. Every parameter must be present with its shape."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        raise ValueError(f"missing tensors: {first_names(missing)}")
    for name, p in params.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise ValueError(
                f"{name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}"
            )
        copy_full_(p, state[name])
