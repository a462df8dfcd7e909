"""The Llama model (layers, KV cache, backends, activation checkpointing): JPEG-LM's decoder.

``from jpeglm.model import ModelArgs, Transformer, CONFIGS`` is the public face; the code lives in
the submodules (:mod:`jpeglm.model.model` and the ones beside it)."""

from jpeglm.model.model import CONFIGS, ModelArgs, Transformer

__all__ = ["CONFIGS", "ModelArgs", "Transformer"]
