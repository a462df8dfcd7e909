"""jpeglm: JPEG-LM (arXiv 2408.08459) — images as canonical JPEG bytes for a plain Llama.

The codec and tokenizer need only numpy and Pillow; the model, kernels and trainer need torch
(``pip install jpeglm[train]``) and are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "codec"]


def _source_checkout_kernels() -> None:
    """Make the repository's top-level ``kernels/`` folder importable as ``jpeglm.kernels``
    when running from a plain source checkout (``PYTHONPATH=python``, nothing installed).

    Wheels and editable installs map ``kernels/`` to ``jpeglm/kernels`` themselves (the
    ``[tool.scikit-build.wheel.packages]`` table of ``pyproject.toml``); then this finds the
    subpackage already and does nothing.

    ``kernels/`` has no ``__init__.py`` on purpose: from the repository root (``python -m
    pytest``, ``python -c``, a notebook) the current directory comes first on ``sys.path``, and a
    regular package there named ``kernels`` would shadow Hugging Face's ``kernels``
    distribution, which transformers imports. A folder without ``__init__.py`` is only a
    namespace portion, and any installed regular package of that name wins over it. Here the
    folder becomes the package ``jpeglm.kernels`` (no code runs: the ops are its submodules).
    """
    import importlib.machinery
    import importlib.util
    import os
    import sys

    if "jpeglm.kernels" in sys.modules or importlib.util.find_spec("jpeglm.kernels"):
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "kernels")
    if not os.path.isfile(os.path.join(folder, "rms_norm.py")):  # not a checkout: leave the
        return  # ImportError to the caller
    spec = importlib.machinery.ModuleSpec("jpeglm.kernels", None, is_package=True)
    spec.submodule_search_locations = [folder]
    module = importlib.util.module_from_spec(spec)
    module.__doc__ = "Triton kernels for the Llama model (the repository's kernels/ folder)."
    sys.modules["jpeglm.kernels"] = module
    globals()["kernels"] = module  # what the import system does for a found submodule


_source_checkout_kernels()


#: loaded on first attribute access (``jpeglm.codec`` without importing torch)
_SUBPACKAGES = frozenset({
    "codec", "tokenizer", "grammar", "conditioning", "reference", "data", "model", "checkpoint",
    "inference", "train", "eval", "video", "cli",
})  # fmt: skip


#: classes loaded on first attribute access, with the module that holds them
_LAZY_NAMES = {"JpegLogitsProcessor": "jpeglm.inference.processors"}


def __getattr__(name: str):  # lazy submodules: `jpeglm.codec` without importing torch
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"jpeglm.{name}")
    if name in _LAZY_NAMES:  # `jpeglm.JpegLogitsProcessor`: torch only when asked for
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'jpeglm' has no attribute {name!r}")
