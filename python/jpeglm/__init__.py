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
    subpackage already and does nothing. ``kernels/__init__.py`` imports nothing, so loading
    it here costs nothing.
    """
    import importlib.util
    import os
    import sys

    if "jpeglm.kernels" in sys.modules or importlib.util.find_spec("jpeglm.kernels"):
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "kernels")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):  # not a checkout either: leave the ImportError to the caller
        return
    spec = importlib.util.spec_from_file_location(
        "jpeglm.kernels", init, submodule_search_locations=[folder]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["jpeglm.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module  # what the import system does for a found submodule


_source_checkout_kernels()


def __getattr__(name: str):  # lazy submodules: `jpeglm.codec` without importing torch
    import importlib

    if name in {"codec", "tokenizer", "data", "model", "sample", "train", "eval"}:
        return importlib.import_module(f"jpeglm.{name}")
    raise AttributeError(f"module 'jpeglm' has no attribute {name!r}")
