"""The model under data parallelism: one process, DDP or FSDP2 -- the process group, the model
built, sharded (:func:`shard`, under :func:`mixed_precision`) and initialised
(:func:`build_model`), its optimizer, gradient clipping over sharded gradients, and the
up-front check that the training state fits the device (:func:`check_memory`), and how the
ranks meet and leave together (:func:`on_rank0`, :func:`leave_process_group`,
:func:`leave_after_error`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from jpeglm.checkpoint.hf import load_hf_into
from jpeglm.model import ModelArgs, Transformer
from jpeglm.train.memory import param_counts

if TYPE_CHECKING:
    from jpeglm.train.config import TrainConfig

__all__ = [
    "build_model",
    "build_optimizer",
    "check_memory",
    "clip_grad_norm_",
    "leave_after_error",
    "leave_process_group",
    "mixed_precision",
    "on_rank0",
    "setup_distributed",
    "shard",
]


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world, device) -- from torchrun's environment, else one process. Multi-node
    launches are plain torchrun (``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``):
    only the environment it sets is read here."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"local rank {local} but only {torch.cuda.device_count()} GPU(s) visible: "
                    "start fewer processes per node (or CUDA_VISIBLE_DEVICES='' for CPU)"
                )
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(
    args: ModelArgs, cfg: TrainConfig, device: torch.device, world: int
) -> tuple[Transformer, torch.nn.Module]:
    """The model, ready to train: built on the meta device (no memory), activation
    checkpointing set, each block compiled (before sharding, as torchtitan does), sharded with
    FSDP2 per block then the root (``fsdp=true``, bf16 compute / fp32 gradient reduction on
    CUDA), materialised on ``device`` and initialised -- each rank drawing every full parameter
    and keeping its slice, so the weights equal the unsharded model's for the same seed --
    then wrapped in DDP where that is the strategy. Returns ``(model, forward_module)``."""
    with torch.device("meta"):
        model = Transformer(args, backend=cfg.backend)
    model.set_activation_checkpointing(cfg.activation_checkpoint)
    if cfg.compile:
        for layer in model.layers:
            layer.compile()
    sharded = cfg.fsdp and world > 1
    if sharded:
        shard(model, torch.bfloat16 if device.type == "cuda" else None)
    model.to_empty(device=device)
    torch.manual_seed(cfg.seed)
    model.reset_parameters()
    if cfg.init_from:  # (a grown vocabulary was checked by train.conditioning.init_args)
        load_hf_into(cfg.init_from, model, grow_vocab=True)
    fwd = model
    if world > 1 and not sharded:
        fwd = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # no second fp32 copy of every gradient in buckets
        )
    return model, fwd


def mixed_precision(param_dtype: torch.dtype | None):
    """FSDP2's ``MixedPrecisionPolicy``: parameters gathered in ``param_dtype`` (``None``: as
    stored) and gradients reduced in float32 -- and forward inputs *not* cast
    (``cast_forward_inputs=False``, as torchtitan does). A block's inputs include the RoPE
    tables, which are float32 on purpose (:class:`jpeglm.model.model.RotaryEmbedding`); cast to bf16
    each cos / sin carries up to 2e-3 of rounding. The activations reach the blocks in
    ``param_dtype`` regardless: they come from the embedding the root gathers in it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(
        param_dtype=param_dtype,
        reduce_dtype=torch.float32 if param_dtype is not None else None,
        cast_forward_inputs=False,
    )


def shard(model: Transformer, param_dtype: torch.dtype | None) -> None:
    """Shard ``model`` with FSDP2 the trainer's way: each block, then the root, under
    :func:`mixed_precision` (bf16 on CUDA: ``build_model``)."""
    from torch.distributed.fsdp import fully_shard

    mp = mixed_precision(param_dtype)
    for layer in model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over the model's (possibly sharded) parameters -- created after sharding, so it
    holds the DTensors FSDP trains; weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]  # matrices; not norms
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda",
    )  # fmt: skip


def clip_grad_norm_(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm (sharded DTensor gradients included); returns it."""
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if hasattr(total, "full_tensor"):  # a DTensor: the norm of every rank's shard together
        total = total.full_tensor()
    if max_norm > 0:  # 0: clipping off (the norm is still reported)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def _available_memory(device: torch.device) -> tuple[float, str]:
    """(bytes this process may use, what they are) on ``device``."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return float(total), f"{torch.cuda.get_device_name(device)} memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return math.inf, "RAM"


def check_memory(args: ModelArgs, cfg: TrainConfig, device: torch.device, world: int) -> None:
    """Refuse up front a model whose fp32 weights, gradients and AdamW state alone (16 bytes
    per parameter, divided over the ranks under FSDP) cannot fit this device's memory -- a
    lower bound: activations come on top (``jpeglm plan`` gives the full picture)."""
    total = param_counts(args)[0]
    shards = world if cfg.fsdp and world > 1 else 1
    need = 16.0 * total / shards
    procs = 1
    if device.type == "cpu":  # the processes of this node share its RAM
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    have, what = _available_memory(device)
    if need * procs > have:
        gib = 2.0**30
        raise ValueError(
            f"model {cfg.model} ({total / 1e9:.2f}B parameters) needs at least "
            f"{need * procs / gib:.1f} GiB for weights, gradients and AdamW state "
            f"({procs} process(es) here) but {what} is {have / gib:.1f} GiB: use fsdp=true over "
            "more GPUs or a smaller model (`jpeglm plan` shows what fits)"
        )


# ------------------------------------------------------------------ ranks meeting and leaving


def leave_process_group() -> None:
    """End a torchrun run on every rank together: a barrier (rank 0 has written the plot),
    then the group is destroyed. gloo's worker threads release a finished collective's work
    a moment after it completes, and releasing Python-owned tensors (``all_gather_object``'s)
    needs the GIL; during interpreter finalisation that aborts the process, so
    ``python -m jpeglm.train`` under torchrun leaves with ``os._exit`` (``train/__main__``)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave_after_error() -> None:
    """The same after a one-line error: the errors ``main`` reports are raised on every rank
    together (the checks run on all ranks, rank 0's through :func:`on_rank0`, checkpoint writes
    through ``on_every_rank``), so the ranks meet -- but a bounded meeting (gloo's monitored
    barrier, 10 s), never a hang where one rank failed alone."""
    if not dist.is_initialized():
        return
    from datetime import timedelta

    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=10))
    except RuntimeError:  # a rank that failed alone has left: nothing to wait for
        pass
    dist.destroy_process_group()


def on_rank0(fn: Callable[[], object]) -> None:
    """``fn()`` on rank 0 (a check of the run folder, which only rank 0 writes); its ValueError
    is raised on every rank, so that all stop together."""
    error = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            fn()
        except ValueError as e:
            error = [str(e)]
    if dist.is_initialized():
        dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise ValueError(error[0])
