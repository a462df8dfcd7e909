"""The Hugging Face folder format: what ``transformers.LlamaForCausalLM.from_pretrained``,
:func:`load_pretrained` and ``jpeglm sample`` load, and what :func:`save_pretrained` writes.
The model never imports this format (as torchtitan's state-dict adapter): a
:class:`~jpeglm.model.model.Transformer` is loaded with ``load_pretrained(path)`` and saved with
``save_pretrained(model, path)``.

An HF folder is ``config.json`` + ``model.safetensors`` (or shards of at most
``max_shard_size`` bytes listed in ``model.safetensors.index.json``), and, when written by
jpeglm, the tokenizer (``tokenizer.jpeglm``) and ``jpeglm.json`` (image size, quality,
sequence length, BOS/EOS ids, tokenizer fingerprint, recommended sampling settings). Every
layout is read, sharded ones included, and the Hub's pickle weights (``pytorch_model.bin`` or
its shards) through torch's restricted unpickler only (:mod:`jpeglm.checkpoint.torch_bin`).
The official JPEG-LM checkpoint is such a folder (a plain ``LlamaForCausalLM``); ``jpeglm
convert`` (:mod:`jpeglm.checkpoint.convert`) makes a safetensors copy of it. The rotary layout
is HF's ``rotate_half`` one, so weights move across without any permutation.

Here: our parameter names <-> HF's, reading (checked before any tensor is read) and writing the
safetensors weights, a model loaded or saved, and a whole folder written atomically
(:func:`save_hf`). ``config.json`` <-> :class:`~jpeglm.model.args.ModelArgs` (the file is
untrusted and bounded) is :mod:`jpeglm.checkpoint.hf_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from jpeglm import _io
from jpeglm.checkpoint.files import (
    CHECKPOINT_STATE,
    DEFAULT_SHARD_SIZE,
    HF_METADATA,
    SP_TOKENIZER,
    TOKENIZER_FILE,
    first_names,
    fsync_dir,
    index_shards,
    read_json,
    swap_into_place,
)
from jpeglm.checkpoint.hf_config import args_from_config, config_from_args
from jpeglm.checkpoint.torch_bin import BIN_INDEX, BIN_SINGLE, bin_files, bin_headers, read_bin
from jpeglm.model import ModelArgs, Transformer
from jpeglm.model.backends import Backend
from jpeglm.model.dtensor import copy_full_

__all__ = [
    "hf_model_args",
    "hf_names",
    "load_hf_into",
    "load_hf_state",
    "load_pretrained",
    "safetensors_files",
    "save_hf",
    "save_hf_files",
    "save_pretrained",
]

# ---------------------------------------------------------------------- names and tensors


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
    """The weight files of an HF folder: the single file, or the shards its index lists; for a
    folder without safetensors, the Hub's pickle weights (:func:`~jpeglm.checkpoint.torch_bin.
    bin_files`: ``pytorch_model.bin`` or its shards, read weights-only).

    The index is untrusted: its ``weight_map`` must be a non-empty object of tensor name ->
    file name strings, and every file name a plain ``*.safetensors`` name inside the folder (no
    directories, ``..`` or absolute paths); anything else is refused before any file is
    opened."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        return index_shards(index, ".safetensors")
    hub = bin_files(folder)  # the Hub's pickle layout: read weights-only (checkpoint.torch_bin)
    if hub:
        return hub
    pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    if pickles:
        raise ValueError(
            f"{folder} has only pickle weights ({first_names(pickles)}) under names that are "
            f"not the Hub's ({BIN_SINGLE}, or shards listed in {BIN_INDEX}); they are not loaded"
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
    :func:`args_from_config` before any shape is built from it, the index by
    :func:`safetensors_files`, and a truncated, garbage or inconsistent safetensors file (or
    one whose header claims more data than the file holds) is one ``ValueError`` naming it."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        if (folder / CHECKPOINT_STATE).is_file():
            safetensors_files(folder)  # raises the "trainer checkpoint: export it" message
        raise FileNotFoundError(f"no config.json in {folder}")
    args = args_from_config(read_json(config_path))
    if vocab_size is not None and vocab_size != args.vocab_size:
        raise ValueError(
            f"vocab mismatch: the tokenizer has {vocab_size} tokens but the checkpoint in "
            f"{folder} has vocab_size {args.vocab_size}"
        )
    expected = {theirs: ours for ours, theirs in hf_names(args).items()}
    shapes = _param_shapes(args)
    where: dict[str, tuple[Path, str]] = {}
    unexpected: list[str] = []
    head: tuple[Path, str] | None = None  # lm_head.weight of a config that ties it
    for file in safetensors_files(folder):
        for key, dtype, shape in _headers(file):
            tied_head = key == "lm_head.weight" and args.tie_embeddings
            if key not in expected and not tied_head:
                if key.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed: HF ignores it too
                unexpected.append(key)
                continue
            ours = "output.weight" if tied_head else expected[key]
            if dtype not in _WEIGHT_DTYPES:
                raise ValueError(
                    f"{file.name}: tensor {key} has dtype {dtype}; weights "
                    f"must be floating point ({', '.join(_WEIGHT_DTYPES)})"
                )
            want = shapes["tok_embeddings.weight" if tied_head else ours]
            if shape != want:
                hint = ""
                if key in ("model.embed_tokens.weight", "lm_head.weight"):
                    hint = f" (vocab mismatch: config.json vocab_size={args.vocab_size})"
                raise ValueError(
                    f"{file.name}: tensor {key} has shape {shape}, expected "
                    f"{want} from config.json{hint}"
                )
            if tied_head:
                head = (file, key)
            else:
                where[ours] = (file, key)
    if unexpected:
        raise ValueError(
            f"checkpoint {folder} has tensors this Llama does not: {first_names(unexpected)}"
        )
    missing = [theirs for theirs, ours in expected.items() if ours not in where]
    if missing:
        raise ValueError(f"checkpoint {folder} is missing tensors: {first_names(missing)}")
    if head is not None:
        # tie_word_embeddings with a stored lm_head.weight: transformers keeps the stored head
        # (it ties only a head that is absent or equal to the embedding), so the head is loaded
        # as a separate output and the logits equal LlamaForCausalLM.from_pretrained's
        args = dataclasses.replace(args, tie_embeddings=False)
        where["output.weight"] = head
    return args, where


def _headers(file: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    """(key, safetensors dtype name, shape) of each tensor in a weights file, none read."""
    if file.suffix == ".bin":
        return list(bin_headers(file))
    from safetensors import safe_open

    out = []
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                tensor = f.get_slice(key)
                out.append((key, tensor.get_dtype(), tuple(tensor.get_shape())))
    except Exception as e:  # noqa: BLE001 - safetensors' own errors: one clear message
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from e
    return out


def _read_tensors(
    where: dict[str, tuple[Path, str]], device: str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (our name, tensor) one at a time, each file opened once."""
    from safetensors import safe_open

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for ours, (file, key) in where.items():
        by_file.setdefault(file, []).append((ours, key))
    for file, items in by_file.items():
        if file.suffix == ".bin":  # weights-only, copied out of the mapped file one at a time
            for ours, tensor in read_bin(file, items):
                yield ours, tensor.to(device)
            continue
        try:
            with safe_open(str(file), framework="pt", device=device) as f:
                for ours, key in items:
                    yield ours, _aligned(f.get_tensor(key))
        except Exception as e:  # noqa: BLE001 - a torn or hostile file: one clear message
            raise ValueError(f"{file} is not a readable safetensors file: {e}") from e


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied to fresh (aligned) memory when its data is not aligned to its element
    size. A valid safetensors file whose header length is not a multiple of 8 puts every tensor
    at an odd offset of the mapped file; torch reads such tensors, but numpy's view of them
    (what the native kernels take) is an unaligned buffer they refuse."""
    if tensor.device.type == "cpu" and tensor.data_ptr() % tensor.element_size():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor


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


def load_hf_into(path: str | os.PathLike, model: Transformer, grow_vocab: bool = False) -> None:
    """Copy an HF folder's weights into ``model`` (sharded or not), one tensor at a time: each
    rank holds at most one full tensor besides its shards. The architectures must agree, but
    for ``grow_vocab``: a model whose vocabulary extends the folder's (a class-conditional
    model initialised from an unconditional one: the tokenizer's ids, then the class ids) gets
    the folder's rows of the embedding and the output, and keeps its own initialisation of the
    new rows."""
    args, where = _hf_index(Path(path), None if grow_vocab else model.args.vocab_size)
    if args.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"{path}: vocab_size {args.vocab_size} is larger than the model's "
            f"{model.args.vocab_size}"
        )
    params = dict(model.named_parameters())
    for ours, tensor in _read_tensors(where):
        if ours not in params:  # a tied output weight is the embedding
            continue
        p = params[ours]
        if grow_vocab and tensor.shape[0] < p.shape[0]:  # the embedding / output: new rows
            full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
            tensor = torch.cat([tensor.to(full.dtype).to(full.device), full[tensor.shape[0] :]])
        copy_full_(p, tensor)


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    backend: str | Backend | None = None,
    vocab_size: int | None = None,
) -> Transformer:
    """Load a HF Llama checkpoint folder (``config.json`` + ``model.safetensors``, or
    shards listed in ``model.safetensors.index.json``) as a :class:`Transformer`.

    ``dtype`` defaults to the stored dtype. ``vocab_size``, when given (the tokenizer's),
    must equal the checkpoint's. Every tensor is checked: missing, unexpected or wrongly
    shaped ones raise ``ValueError`` naming them.
    """
    args, state = load_hf_state(path, device=device, vocab_size=vocab_size)
    with torch.device("meta"):
        model = Transformer(args, backend=backend)
    dtype = dtype or state["tok_embeddings.weight"].dtype
    state = {k: v.to(dtype) for k, v in state.items()}
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rope.reset(device)  # the tables were built on meta
    return model


def save_hf_files(
    folder: str | os.PathLike,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = DEFAULT_SHARD_SIZE,
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
    config = {**config_from_args(args, dtype), **(extra_config or {})}
    _io.atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")

    keep = set(names)  # stale files of an earlier save would confuse loaders
    for stale in [*folder.glob("model-*-of-*.safetensors"), folder / "model.safetensors"]:
        if stale.name not in keep and stale.is_file():
            stale.unlink()
    if len(shards) == 1 and index.exists():
        index.unlink()


def save_pretrained(
    model: Transformer,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = DEFAULT_SHARD_SIZE,
    extra_config: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` as a HF Llama folder: ``config.json`` and ``model.safetensors`` (or shards
    of at most ``max_shard_size`` bytes plus ``model.safetensors.index.json``), each atomically.

    ``extra_config`` adds keys to ``config.json`` (e.g. ``bos_token_id``). Shards of an
    earlier save with a different layout are removed afterwards.
    """
    state = dict(model.named_parameters(remove_duplicate=False))
    save_hf_files(path, model.args, state, dtype=dtype or model.output.weight.dtype,
                  max_shard_size=max_shard_size, extra_config=extra_config)  # fmt: skip


def _hf_file(name: str) -> bool:
    """Whether ``name`` is a file :func:`save_hf` writes (or the output manifest)."""
    return name in ("config.json", "model.safetensors", "model.safetensors.index.json",
                    TOKENIZER_FILE, SP_TOKENIZER, HF_METADATA, _io.OUTPUTS_MANIFEST) or bool(
        re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name))  # fmt: skip


def save_hf(
    folder: str | os.PathLike,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    *,
    tokenizer: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
    replace: bool = False,
    **files: Any,
) -> Path:
    """Write a whole HF folder atomically: built as a hidden sibling, then renamed into place.

    ``tokenizer`` (a tokenizer file) is copied in as ``tokenizer.jpeglm`` (a sentencepiece
    ``.model`` as ``tokenizer.model``, the name it is loaded by); ``metadata`` is
    written as ``jpeglm.json`` and its ``bos_id`` / ``eos_id`` go into ``config.json``. An
    existing ``folder`` is refused unless ``replace`` (then it must be an HF folder holding only
    the files this function writes: a user's file in it is never removed).
    ``files``: :func:`save_hf_files`' options (``dtype``, ``max_shard_size``).
    """
    folder = Path(folder)
    if folder.exists():
        if not replace:
            raise FileExistsError(f"{folder} exists; choose a new folder")
        if not (folder / "config.json").is_file():
            raise FileExistsError(f"{folder} exists and is not an HF folder; not replacing it")
        foreign = sorted(p.name for p in folder.iterdir() if not _hf_file(p.name))
        if foreign:  # a replace removes the old folder: only what save_hf writes may be in it
            raise FileExistsError(
                f"{folder} holds files jpeglm did not write ({first_names(foreign)}); not "
                "replacing it: move them away"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp_{folder.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extra = {}
        if metadata:
            extra = {k: metadata[k] for k in ("bos_token_id", "eos_token_id") if k in metadata}
        save_hf_files(tmp, args, state, extra_config=extra, **files)
        if tokenizer is not None:
            name = SP_TOKENIZER if Path(tokenizer).suffix == ".model" else TOKENIZER_FILE
            _io.atomic_write_bytes(tmp / name, Path(tokenizer).read_bytes())
        if metadata is not None:
            _io.atomic_write_text(tmp / HF_METADATA, json.dumps(metadata, indent=1) + "\n")
        fsync_dir(tmp)
        swap_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
