"""Run by tests/test_fsdp_block.py under torchrun: 2 CPU ranks over gloo, the Triton kernels
in Triton's interpreter. Rank 0 writes one JSON file (the path is the only argument):

* ``tables``: the dtypes the model's one block hands its attention (the activations and the
  RoPE tables), sharded per block then root as the trainer does with bf16 parameters, under
  :func:`jpeglm.train.parallel.mixed_precision` and under FSDP2's default policy (which casts every
  floating-point forward input to the parameter dtype);
* ``grads``: for activation checkpointing none / selective / full, eager and with each block
  compiled (keys ``"<mode> compiled"``), the relative error
  ||g - g_ref|| / ||g_ref|| of every parameter's gradient, the model sharded and on the Triton
  backend, against the PyTorch backend unsharded without checkpointing on the union of the
  ranks' batches (fp32 throughout).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from jpeglm.model import ModelArgs, Transformer  # noqa: E402
from jpeglm.train.parallel import shard  # noqa: E402

MODES = ("none", "selective", "full")
ROWS, SEQ = 2, 12  # per rank


def build(args: ModelArgs, backend: str, param_dtype=None, policy=None, sharded=True,
          ac: str = "none", compiled: bool = False):  # fmt: skip
    """The model as ``build_model`` makes it: on meta, activation checkpointing set, each block
    compiled (``compiled``: fullgraph, AOT autograd without Inductor -- quick on CPU), sharded
    (block, then root), then materialised and initialised (the same weights on any sharding
    for the same seed)."""
    with torch.device("meta"):
        model = Transformer(args, backend=backend)
    model.set_activation_checkpointing(ac)
    if compiled:
        for layer in model.layers:
            layer.compile(backend="aot_eager", fullgraph=True)
    if sharded and policy is None:
        shard(model, param_dtype)
    elif sharded:  # another policy, the trainer's order
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.reset_parameters()
    return model


def received(model: Transformer, idx: torch.Tensor) -> dict[str, str]:
    seen: dict[str, str] = {}

    def hook(module, args):  # Attention.forward(x, cos, sin, ...)
        seen.update(x=str(args[0].dtype), cos=str(args[1].dtype), sin=str(args[2].dtype))

    model.layers[0].attention.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(idx)
    return seen


def full_grads(model: Transformer) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():  # full_tensor: a collective, every rank calls it
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        out[name] = g.detach().clone()
    return out


def main(path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    args = ModelArgs.from_name("tiny", n_layers=1, max_seq_len=32)
    gen = torch.Generator().manual_seed(1)
    idx_all = torch.randint(0, args.vocab_size, (ROWS * world, SEQ), generator=gen)
    targets_all = idx_all.roll(-1, dims=1)
    targets_all[:, -1] = -100  # as many counted targets on every rank: the means average
    idx, targets = idx_all[rank * ROWS : (rank + 1) * ROWS], targets_all[rank * ROWS :][:ROWS]

    from torch.distributed.fsdp import MixedPrecisionPolicy

    default = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    result = {
        "world": world,
        "tables": {
            "ours": received(build(args, "torch", torch.bfloat16), idx),
            "default": received(build(args, "torch", policy=default), idx),
        },
        "grads": {},
    }

    ref = build(args, "torch", sharded=False)
    ref(idx_all, targets=targets_all).backward()
    g_ref = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
    for compiled in (False, True):
        for mode in MODES:
            model = build(args, "triton", ac=mode, compiled=compiled)
            model(idx, targets=targets).backward()
            got = full_grads(model)
            result["grads"][f"{mode} compiled" if compiled else mode] = {
                n: ((got[n].double() - g.double()).norm() / g.double().norm()).item()
                for n, g in g_ref.items()
            }
    if rank == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
