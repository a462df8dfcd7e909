"""jpeglm: JPEG-LM (arXiv 2408.08459) — images as canonical JPEG bytes for a plain Llama.

The codec and tokenizer need only numpy and Pillow; the model, kernels and trainer need torch
(``pip install jpeglm[train]``) and are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "codec"]


def __getattr__(name: str):  # lazy submodules: `jpeglm.codec` without importing torch
    import importlib

    if name in {"codec", "tokenizer", "data", "model", "sample", "train", "eval", "datasets"}:
        return importlib.import_module(f"jpeglm.{name}")
    raise AttributeError(f"module 'jpeglm' has no attribute {name!r}")
