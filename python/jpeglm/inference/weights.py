"""A model's sampling weights (:meth:`jpeglm.model.model.Transformer.prepare_inference`): fused
``wqkv`` (q, k, v stacked) and ``w13`` (gate, up stacked) projections and every linear weight
in an inference format (:class:`jpeglm.inference.decode_kernels.InferenceLinear`), norms and
embeddings in the matching activation dtype.

They are copies, kept beside the parameters (``fused`` on each attention, feed-forward and
norm module, ``model.inference`` for the embedding and the output) and used by every forward
run without gradients; :func:`fresh` rebuilds them when the parameters have changed since.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from jpeglm.inference.decode_kernels import InferenceLinear, inference_act_dtype

__all__ = ["clear", "fresh", "linear_bytes", "param_key", "prepare"]


def prepare(model: nn.Module, dtype: str = "fp32") -> None:
    """Build ``model``'s sampling weights in format ``dtype`` (``"fp32"``, ``"bf16"``,
    ``"fp16"``, ``"int8"``)."""
    act = inference_act_dtype(dtype, model.output.weight.dtype)
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        qkv = torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]).detach()
        a.fused = (InferenceLinear(qkv, dtype, act), InferenceLinear(a.wo.weight, dtype, act))
        w13 = torch.cat([f.w1.weight, f.w3.weight]).detach()
        f.fused = (InferenceLinear(w13, dtype, act), InferenceLinear(f.w2.weight, dtype, act))
        layer.attention_norm.fused = layer.attention_norm.weight.detach().to(act)
        layer.ffn_norm.fused = layer.ffn_norm.weight.detach().to(act)
    model.norm.fused = model.norm.weight.detach().to(act)
    model.inference = {
        "dtype": dtype,
        "act_dtype": act,
        "key": param_key(model),
        "embedding": model.tok_embeddings.weight.detach().to(act),
        "output": InferenceLinear(model.output.weight, dtype, act),
    }


def clear(model: nn.Module) -> None:
    """Drop the weights of :func:`prepare`."""
    for layer in model.layers:
        layer.attention.fused = layer.feed_forward.fused = None
        layer.attention_norm.fused = layer.ffn_norm.fused = None
    model.norm.fused = None
    model.inference = None


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the linear-layer weights a decode step reads (prepared or not)."""
    if model.inference is None:
        return sum(
            m.weight.numel() * m.weight.element_size()
            for m in model.modules()
            if isinstance(m, nn.Linear)
        )
    linears = [model.inference["output"]]
    for layer in model.layers:
        linears += [*layer.attention.fused, *layer.feed_forward.fused]
    return sum(lin.nbytes() for lin in linears)


def param_key(model: nn.Module) -> tuple:
    """Identifies the parameters' current values: changes when any is replaced, modified in
    place or cast (what the sampling weights are checked against)."""
    return tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters())


def fresh(model: nn.Module) -> dict | None:
    """The sampling weights if they exist and gradients are off, rebuilt when stale."""
    inf = model.inference
    if inf is None or torch.is_grad_enabled():
        return None
    if inf["key"] != param_key(model):
        model.prepare_inference(inf["dtype"])
    return model.inference
