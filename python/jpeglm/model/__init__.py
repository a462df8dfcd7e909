"""The Llama model (layers, KV cache, backends, activation checkpointing): JPEG-LM's decoder.

``from jpeglm.model import ModelArgs, Transformer, CONFIGS`` is the public face; the code lives in
the submodules (:mod:`jpeglm.model.args` for the hyper-parameters, :mod:`jpeglm.model.model` for
the layers and the ones beside them)."""

from jpeglm.model.args import CONFIGS, ModelArgs
from jpeglm.model.model import Transformer

__all__ = ["CONFIGS", "ModelArgs", "Transformer"]
