"""Full tensors into parameters that may be sharded: a plain tensor is copied whole, an FSDP2
``DTensor`` gets this rank's slice of it, cut locally. What makes initialisation
(:meth:`jpeglm.model.model.Transformer.reset_parameters`) and loading full weights
(:func:`jpeglm.checkpoint.hf.load_hf_into`) give every world size the same model.
"""

from __future__ import annotations

import torch

__all__ = ["copy_full_"]


@torch.no_grad()
def copy_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the full-size tensor ``full`` into ``param``: all of it, or for a sharded DTensor
    (FSDP2) just this rank's slice, cut locally -- no communication."""
    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # torch built without distributed
        DTensor = ()  # noqa: N806
    if isinstance(param, DTensor):
        local = distribute_tensor(
            full.to(param.device, param.dtype), param.device_mesh, param.placements,
            src_data_rank=None,
        )  # fmt: skip
        param.to_local().copy_(local.to_local())
    else:
        param.copy_(full)
