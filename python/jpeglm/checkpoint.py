"""Checkpoints: the one home for reading and writing model weights and trainer state.

Two kinds of folder, and nothing else:

* **HF folder** -- what ``transformers.LlamaForCausalLM.from_pretrained``,
  :meth:`Transformer.from_pretrained <jpeglm.model.Transformer.from_pretrained>` and
  ``jpeglm sample`` load: ``config.json`` + ``model.safetensors`` (or shards of at most
  ``max_shard_size`` bytes listed in ``model.safetensors.index.json``), and, when written by
  jpeglm, the tokenizer (``tokenizer.jpeglm``) and ``jpeglm.json`` (image size, quality,
  sequence length, BOS/EOS ids, tokenizer fingerprint, recommended sampling settings). Every
  layout is read, sharded ones included; pickle files never are. The trainer writes one into
  ``OUT/final`` at the end of every run, and ``jpeglm export CKPT DEST`` makes one from any
  trainer checkpoint. An HF folder can also start a new run as its initial weights
  (``init_from``; no optimizer state).

* **Trainer checkpoint** ``OUT/step_N`` -- a ``torch.distributed.checkpoint`` (DCP) folder, as
  in torchtitan: every rank writes its own shard of the model and optimizer state
  (``__R_0.distcp``; rank 0 adds ``.metadata``), plus ``train_state.json`` (step, data
  position, world size, the config), ``rng_rank{R}.pt`` per rank and a copy of the tokenizer.
  DCP reshards on load, so a checkpoint written by 8 ranks loads on 4 or on 1. The folder is
  written as ``OUT/.tmp_step_N`` by all ranks and renamed into place by rank 0 after every
  rank has finished (folder-level atomicity: a ``step_N`` folder is always complete); only the
  newest ``keep`` are kept. All ranks must see one shared file system (as on every cluster
  that trains at this scale).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jpeglm import _io
from jpeglm.model import ModelArgs, Transformer

__all__ = [
    "CHECKPOINT_STATE",
    "HF_METADATA",
    "export",
    "hf_names",
    "list_checkpoints",
    "load_hf_state",
    "load_train_checkpoint",
    "read_json",
    "save_hf",
    "save_hf_files",
    "save_train_checkpoint",
]

CHECKPOINT_STATE = "train_state.json"  #: the trainer state file of a step_N folder
HF_METADATA = "jpeglm.json"  #: jpeglm's metadata file in an HF folder
TOKENIZER_FILE = "tokenizer.jpeglm"
_DEFAULT_SHARD = 5 * 2**30


# ------------------------------------------------------------------------------- small helpers


def read_json(path: str | os.PathLike, limit: int = 16 << 20) -> dict:
    """A checkpoint's JSON file, refused when oversized or not a JSON object (hostile files)."""
    path = Path(path)
    if path.stat().st_size > limit:
        raise ValueError(f"{path} is larger than {limit} bytes: not a checkpoint file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return obj


def _first(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- HF folders


def hf_names(args: ModelArgs) -> dict[str, str]:
    """Our parameter name -> HF ``LlamaForCausalLM`` name (tied output left out)."""
    names = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    per_layer = {
        "attention_norm.weight": "input_layernorm.weight",
        "attention.wq.weight": "self_attn.q_proj.weight",
        "attention.wk.weight": "self_attn.k_proj.weight",
        "attention.wv.weight": "self_attn.v_proj.weight",
        "attention.wo.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
    }
    for i in range(args.n_layers):
        for ours, theirs in per_layer.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    if args.tie_embeddings:
        del names["output.weight"]
    return names


def _param_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(args, backend="torch")
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder: the single file, or the shards its index lists.

    The index is untrusted: its ``weight_map`` must be a non-empty object of tensor name ->
    file name strings, and every file name a plain ``*.safetensors`` name inside the folder (no
    directories, ``..`` or absolute paths); anything else is refused before any file is
    opened."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map (an object of tensor name -> file name)")
        odd = [repr(k) for k, v in weight_map.items() if not isinstance(v, str)]
        if odd:
            raise ValueError(f"{index}: weight_map file names must be strings (see {_first(odd)})")
        names = sorted(set(weight_map.values()))
        bad = [
            repr(n)[:80]
            for n in names
            if Path(n).name != n or n.startswith(".") or not n.endswith(".safetensors")
        ]
        if bad:
            raise ValueError(
                f"{index} lists shard files that are not plain *.safetensors names in the "
                f"folder: {_first(bad)}"
            )
        files = [folder / n for n in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {_first(absent)}")
        return files
    pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    if pickles:
        raise ValueError(
            f"{folder} has only pickle weights ({_first(pickles)}); they are not loaded (a pickle "
            "can run code). Convert the checkpoint to safetensors first."
        )
    if (folder / ".metadata").is_file():
        raise ValueError(
            f"{folder} is a trainer checkpoint, not an HF folder: make one with "
            f"`jpeglm export {folder} DEST` (each run also writes one into its final/ folder)"
        )
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")


_WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")  #: safetensors dtypes accepted for weights


def _hf_index(
    folder: Path, vocab_size: int | None
) -> tuple[ModelArgs, dict[str, tuple[Path, str]]]:
    """Check an HF folder without reading its weights: its :class:`ModelArgs`, and for each of
    our parameter names the (file, key) that holds it, with names, shapes and dtypes validated.

    Everything in the folder is untrusted: ``config.json`` is bounded by
    :meth:`ModelArgs.from_hf_config` before any shape is built from it, the index by
    :func:`safetensors_files`, and a truncated, garbage or inconsistent safetensors file (or
    one whose header claims more data than the file holds) is one ``ValueError`` naming it."""
    from safetensors import safe_open

    config_path = folder / "config.json"
    if not config_path.is_file():
        if (folder / CHECKPOINT_STATE).is_file():
            safetensors_files(folder)  # raises the "trainer checkpoint: export it" message
        raise FileNotFoundError(f"no config.json in {folder}")
    args = ModelArgs.from_hf_config(read_json(config_path))
    if vocab_size is not None and vocab_size != args.vocab_size:
        raise ValueError(
            f"vocab mismatch: the tokenizer has {vocab_size} tokens but the checkpoint in "
            f"{folder} has vocab_size {args.vocab_size}"
        )
    expected = {theirs: ours for ours, theirs in hf_names(args).items()}
    shapes = _param_shapes(args)
    where: dict[str, tuple[Path, str]] = {}
    unexpected: list[str] = []
    for file in safetensors_files(folder):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key not in expected:
                        if key.endswith("rotary_emb.inv_freq") or (
                            key == "lm_head.weight" and args.tie_embeddings
                        ):
                            continue  # recomputed / tied: HF ignores these too
                        unexpected.append(key)
                        continue
                    ours = expected[key]
                    tensor = f.get_slice(key)
                    if tensor.get_dtype() not in _WEIGHT_DTYPES:
                        raise ValueError(
                            f"{file.name}: tensor {key} has dtype {tensor.get_dtype()}; weights "
                            f"must be floating point ({', '.join(_WEIGHT_DTYPES)})"
                        )
                    shape = tuple(tensor.get_shape())
                    if shape != shapes[ours]:
                        hint = ""
                        if key in ("model.embed_tokens.weight", "lm_head.weight"):
                            hint = f" (vocab mismatch: config.json vocab_size={args.vocab_size})"
                        raise ValueError(
                            f"{file.name}: tensor {key} has shape {shape}, expected "
                            f"{shapes[ours]} from config.json{hint}"
                        )
                    where[ours] = (file, key)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' own errors: one clear message
            raise ValueError(f"{file} is not a readable safetensors file: {e}") from e
    if unexpected:
        raise ValueError(
            f"checkpoint {folder} has tensors this Llama does not: {_first(unexpected)}"
        )
    missing = [theirs for theirs, ours in expected.items() if ours not in where]
    if missing:
        raise ValueError(f"checkpoint {folder} is missing tensors: {_first(missing)}")
    return args, where


def _read_tensors(where: dict[str, tuple[Path, str]], device: str = "cpu"):
    """Yield (our name, tensor) one at a time, each file opened once."""
    from safetensors import safe_open

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for ours, (file, key) in where.items():
        by_file.setdefault(file, []).append((ours, key))
    for file, items in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device=device) as f:
                for ours, key in items:
                    yield ours, f.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - a torn or hostile file: one clear message
            raise ValueError(f"{file} is not a readable safetensors file: {e}") from e


def load_hf_state(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", vocab_size: int | None = None
) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read an HF Llama folder: its :class:`ModelArgs` and every tensor under our names, in the
    stored dtype. Missing, unexpected or wrongly shaped tensors raise ``ValueError`` naming
    them; ``vocab_size`` (the tokenizer's), when given, must equal the checkpoint's."""
    args, where = _hf_index(Path(path), vocab_size)
    return args, dict(_read_tensors(where, str(device)))


def hf_model_args(path: str | os.PathLike, vocab_size: int | None = None) -> ModelArgs:
    """The :class:`ModelArgs` of an HF folder, every tensor's name and shape checked."""
    return _hf_index(Path(path), vocab_size)[0]


def load_hf_into(path: str | os.PathLike, model: Transformer) -> None:
    """Copy an HF folder's weights into ``model`` (sharded or not), one tensor at a time: each
    rank holds at most one full tensor besides its shards. The architectures must agree."""
    from jpeglm.model import copy_full_

    args, where = _hf_index(Path(path), model.args.vocab_size)
    params = dict(model.named_parameters())
    for ours, tensor in _read_tensors(where):
        if ours in params:  # a tied output weight is the embedding
            copy_full_(params[ours], tensor)


def save_hf_files(
    folder: str | os.PathLike,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = _DEFAULT_SHARD,
    extra_config: dict[str, Any] | None = None,
) -> None:
    """Write ``config.json`` and the safetensors weights of ``state`` (our names, full tensors)
    into ``folder``, each file atomically; shards of an earlier save with another layout are
    removed afterwards. See :func:`save_hf` for a whole folder written atomically."""
    from safetensors.torch import save as safetensors_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    dtype = dtype or state["tok_embeddings.weight"].dtype
    tensors = [(theirs, state[ours]) for ours, theirs in hf_names(args).items()]
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, p in tensors:
        nbytes = p.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((name, p))
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        n = len(shards)
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    weight_map: dict[str, str] = {}
    total = 0
    for file_name, shard in zip(names, shards):
        data = {n: p.detach().to(device="cpu", dtype=dtype).contiguous() for n, p in shard}
        total += sum(t.numel() * t.element_size() for t in data.values())
        _io.atomic_write_bytes(folder / file_name, safetensors_save(data, {"format": "pt"}))
        weight_map.update(dict.fromkeys(data, file_name))
        del data
    index = folder / "model.safetensors.index.json"
    if len(shards) > 1:
        weight_map = dict(sorted(weight_map.items()))
        body = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _io.atomic_write_text(index, json.dumps(body, indent=2) + "\n")
    config = {**args.to_hf_config(dtype), **(extra_config or {})}
    _io.atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")

    keep = set(names)  # stale files of an earlier save would confuse loaders
    for stale in [*folder.glob("model-*-of-*.safetensors"), folder / "model.safetensors"]:
        if stale.name not in keep and stale.is_file():
            stale.unlink()
    if len(shards) == 1 and index.exists():
        index.unlink()


def save_hf(
    folder: str | os.PathLike,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = _DEFAULT_SHARD,
    tokenizer: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Write a whole HF folder atomically: built as a hidden sibling, then renamed into place.

    ``tokenizer`` (a tokenizer file) is copied in as ``tokenizer.jpeglm``; ``metadata`` is
    written as ``jpeglm.json`` and its ``bos_id`` / ``eos_id`` go into ``config.json``. An
    existing ``folder`` is refused unless ``replace`` (then it must be an HF folder itself).
    """
    folder = Path(folder)
    if folder.exists():
        if not replace:
            raise FileExistsError(f"{folder} exists; choose a new folder")
        if not (folder / "config.json").is_file():
            raise FileExistsError(f"{folder} exists and is not an HF folder; not replacing it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp_{folder.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extra = {}
        if metadata:
            extra = {k: metadata[k] for k in ("bos_token_id", "eos_token_id") if k in metadata}
        save_hf_files(tmp, args, state, dtype=dtype, max_shard_size=max_shard_size,
                      extra_config=extra)  # fmt: skip
        if tokenizer is not None:
            _io.atomic_write_bytes(tmp / TOKENIZER_FILE, Path(tokenizer).read_bytes())
        if metadata is not None:
            _io.atomic_write_text(tmp / HF_METADATA, json.dumps(metadata, indent=1) + "\n")
        _fsync_dir(tmp)
        _swap_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` folder to ``final``; an older ``final`` is moved aside first
    and removed after (a crash in between leaves one of the two, never a torn folder)."""
    old = final.parent / f".old_{final.name}.{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


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
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a torn write of ours from a killed run
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    with _io.atomic_open(tmp / f"rng_rank{rank}.pt", "wb") as f:
        torch.save(_rng_state(), f)
    _barrier()
    if rank == 0:
        if tokenizer is not None:
            _io.atomic_write_bytes(tmp / TOKENIZER_FILE, Path(tokenizer).read_bytes())
        body = {"format": "jpeglm-train-checkpoint", "version": 1, "step": step, **train_state}
        _io.atomic_write_text(tmp / CHECKPOINT_STATE, json.dumps(body, indent=1) + "\n")
        _fsync_dir(tmp)
        _swap_into_place(tmp, final)
        _prune(out, final, keep, train_state.get("run_id"))
    _barrier()
    return final


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

    path = Path(path)
    state = read_train_state(path)
    try:
        if optimizer is None:
            model_sd = get_model_state_dict(model)
            with _quiet_single_process():
                dcp.load({"model": model_sd}, checkpoint_id=str(path))
            set_model_state_dict(model, model_sd)
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            sd = {"model": model_sd, "optim": optim_sd}
            with _quiet_single_process():
                dcp.load(sd, checkpoint_id=str(path))
            set_state_dict(model, optimizer, model_state_dict=sd["model"],
                           optim_state_dict=sd["optim"])  # fmt: skip
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP's errors: one line
        lines = [x for x in str(e).strip().splitlines() if x.strip()]
        why = lines[-1].strip() if lines else type(e).__name__
        raise ValueError(f"corrupt checkpoint {path}: cannot read its DCP shards ({why})") from e
    rank, _ = _dist()
    rng = path / f"rng_rank{rank}.pt"
    if optimizer is not None and rng.is_file():
        try:
            _set_rng_state(torch.load(rng, weights_only=True))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"corrupt checkpoint {path}: {rng.name}: {e}") from e
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
    max_shard_size: int = _DEFAULT_SHARD,
    replace: bool = False,
) -> Path:
    """Make an HF folder (weights, config, tokenizer, metadata) from a trainer checkpoint
    ``step_N`` -- or from a run folder, whose newest checkpoint is taken. One process, on CPU;
    the DCP shards of any number of ranks are read and joined."""
    src = Path(checkpoint)
    if not src.is_dir():
        raise FileNotFoundError(f"no such checkpoint folder: {src}")
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
    from jpeglm.model import copy_full_

    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        raise ValueError(f"missing tensors: {_first(missing)}")
    for name, p in params.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise ValueError(
                f"{name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}"
            )
        copy_full_(p, state[name])


# ------------------------------------------------------------------ models with what they make

#: what a model folder without ``jpeglm.json`` is taken to make: the paper's format
DEFAULT_INFO: dict[str, Any] = {
    "format": "jpeglm-model", "version": 1, "image_size": 256, "quality": 25,
    "sampling": {"temperature": 1.0, "top_k": 50, "top_p": 0.9},
}  # fmt: skip


@dataclass
class LoadedModel:
    """A model with its tokenizer and what its images are: the ``jpeglm.json`` record (image
    size, quality, sequence length, special ids, recommended sampling settings)."""

    model: Transformer
    tokenizer: Any
    info: dict[str, Any]
    folder: Path

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def quality(self) -> int:
        return int(self.info["quality"])


def resolve_model(path: str | os.PathLike) -> tuple[str, Path]:
    """What ``path`` names: ``("hf", folder)`` for an HF folder or a run folder with an
    export (``final/``), ``("dcp", step_N)`` for a trainer checkpoint or a run folder without
    one (its newest checkpoint)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"no such model folder: {p}")
    if (p / "config.json").is_file():
        return "hf", p
    if (p / CHECKPOINT_STATE).is_file():
        return "dcp", p
    if (p / "final" / "config.json").is_file():
        return "hf", p / "final"
    cks = list_checkpoints(p)
    if cks:
        return "dcp", cks[-1]
    raise FileNotFoundError(
        f"{p} is not a model: no config.json (HF folder), {CHECKPOINT_STATE} (trainer "
        "checkpoint), final/ or step_N/ (run folder)"
    )


def read_info(folder: Path, state: dict | None = None) -> dict[str, Any]:
    """The model's ``jpeglm.json`` (or a trainer checkpoint's metadata), over the defaults."""
    info = {**DEFAULT_INFO, "sampling": dict(DEFAULT_INFO["sampling"])}
    found = None
    if state is not None:
        found = state.get("metadata")
    elif (folder / HF_METADATA).is_file():
        found = read_json(folder / HF_METADATA, limit=1 << 20)
    if isinstance(found, dict):
        for k, v in found.items():
            if k == "sampling" and isinstance(v, dict):
                info["sampling"].update(v)
            elif k != "sampling":
                info[k] = v
        info["source"] = HF_METADATA
    else:
        info["source"] = "defaults"
    for k in ("image_size", "quality") if info.get("kind", "image") == "image" else ():
        v = info.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65500:
            raise ValueError(f"{folder}: metadata {k} must be a positive integer, got {v!r}")
    return info


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer file: jpeglm's own, or the official sentencepiece ``.model``."""
    from jpeglm.tokenizer import load_file

    return load_file(path)


def find_tokenizer(folder: Path) -> Path | None:
    for name in (TOKENIZER_FILE, "tokenizer.model"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_model(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | os.PathLike | None = None,
    backend: str | None = None,
) -> LoadedModel:
    """Everything sampling needs from one path: an HF folder, a trainer checkpoint ``step_N``
    or a run folder (its ``final/`` export, else its newest checkpoint). The tokenizer is the
    one inside unless ``tokenizer`` is given; the image format comes from ``jpeglm.json``
    (defaults for folders without one: 256 px, quality 25, the official checkpoint's)."""
    kind, folder = resolve_model(path)
    tok_path = Path(tokenizer) if tokenizer else find_tokenizer(folder)
    if tok_path is None:
        raise ValueError(f"no tokenizer in {folder}: pass one (--tokenizer)")
    tok = load_tokenizer(tok_path)
    if kind == "hf":
        model = Transformer.from_pretrained(folder, dtype=dtype, device=device, backend=backend)
        info = read_info(folder)
    else:
        state = read_train_state(folder)
        args = model_args_from_state(state)
        with torch.device("meta"):
            model = Transformer(args, backend=backend)
        model.to_empty(device="cpu")
        load_train_checkpoint(folder, model, None)
        model = model.to(device=device, dtype=dtype or torch.float32)
        info = read_info(folder, state)
    if model.args.vocab_size < tok.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.args.vocab_size}"
        )
    info.setdefault("seq_len", model.args.max_seq_len)
    return LoadedModel(model.eval(), tok, info, folder)


def expected_tokens(info: dict[str, Any], tokenizer, size: int, quality: int) -> float:
    """About how many tokens one ``size`` x ``size`` image takes (BOS and EOS included): scaled
    from the trained images' mean when the metadata has it and the quality is the trained
    one, else measured on the bundled photos encoded at that size and quality."""
    per_image = info.get("tokens_per_image")
    if isinstance(per_image, (int, float)) and per_image > 0 and quality == info["quality"]:
        return float(per_image) * (size / info["image_size"]) ** 2
    from jpeglm import codec, samples

    counts = [len(tokenizer.encode(codec.encode(im, quality=quality, size=size))) + 2
              for im in samples.photo_paths()[:3]]  # fmt: skip
    return float(np.mean(counts))


def check_context(loaded: LoadedModel, size: int, quality: int) -> None:
    """Refuse up front an image size whose streams cannot fit the model's context."""
    need = expected_tokens(loaded.info, loaded.tokenizer, size, quality)
    context = loaded.model.args.max_seq_len
    if need > context:
        trained = loaded.info["image_size"]
        raise ValueError(
            f"a {size}x{size} image takes about {need:,.0f} tokens but this model's context is "
            f"{context:,}: use --size {trained} (what it was trained on) or a model with a longer "
            "context"
        )
