"""The README is pinned to the code: every ``from jpeglm... import ...`` of its code blocks and
every dotted ``jpeglm.x.y`` name it shows resolves (the public API stays where it says), and
every test it cites (``test_x.py::test_y``) exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _resolve(dotted: str) -> object:
    """The module or attribute a dotted name names (the longest importable module prefix,
    then attributes)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def _imports() -> list[tuple[str, str]]:
    out = []
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        for line in block.splitlines():
            m = re.match(r"\s*from (jpeglm[\w.]*) import (.+)", line)
            if m:
                for name in m.group(2).split("#")[0].split(","):
                    out.append((m.group(1), name.strip().split(" as ")[0]))
    return out


def _dotted() -> list[str]:
    names = set(re.findall(r"`(jpeglm(?:\.[A-Za-z_]\w*)+)", README))
    return sorted(n for n in names if not n.endswith((".json", ".jlm", ".pt")))


@pytest.mark.parametrize("module,name", _imports())
def test_readme_imports_resolve(module, name):
    pytest.importorskip("torch")
    assert getattr(importlib.import_module(module), name) is not None


@pytest.mark.parametrize("dotted", _dotted())
def test_readme_dotted_names_resolve(dotted):
    pytest.importorskip("torch")
    if dotted.startswith("jpeglm.kernels."):
        pytest.importorskip("triton")
    if dotted.startswith("jpeglm.inference.vllm_processor"):  # imports vLLM (not here)
        pytest.importorskip("vllm")
    _resolve(dotted)


def test_readme_cites_tests_that_exist():
    cited = set(re.findall(r"(test_\w+\.py)::(test_\w+)", README))
    assert cited
    missing = []
    for file, test in sorted(cited):
        path = ROOT / "tests" / file
        names = (
            {
                n.name
                for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.FunctionDef)
            }
            if path.is_file()
            else set()
        )
        if not (test in names or (test.endswith("_") and any(n.startswith(test) for n in names))):
            missing.append(f"{file}::{test}")
    assert not missing, missing
    for file in set(re.findall(r"`(test_\w+\.py)`", README)):
        assert (ROOT / "tests" / file).is_file(), file


def _tool_imports() -> list[tuple[str, str, str]]:
    """``(file, module, name)`` of every ``from jpeglm... import ...`` / ``import jpeglm...`` in
    the scripts and benchmarks (Python files, and the Python inside the shell scripts)."""
    out = []
    files = sorted([*(ROOT / "scripts").glob("*.sh"), *(ROOT / "scripts").glob("*.py"),
                    *(ROOT / "benchmarks").glob("*.py")])  # fmt: skip
    for f in files:
        for line in f.read_text().splitlines():
            m = re.match(r"\s*from (jpeglm[\w.]*) import ([\w, ]+)", line)
            if m:
                out += [(f.name, m.group(1), n.strip().split(" as ")[0])
                        for n in m.group(2).split(",") if n.strip()]  # fmt: skip
            m = re.match(r"\s*import (jpeglm[\w.]*)", line)
            if m:
                out.append((f.name, m.group(1), ""))
    return out


@pytest.mark.parametrize("file,module,name", _tool_imports())
def test_scripts_and_benchmarks_import_what_exists(file, module, name):
    """A script's import of a moved module fails here, not in a user's hands (the demo
    training scripts imported ``jpeglm.samples`` after it became ``jpeglm.data.bundled``)."""
    pytest.importorskip("torch")
    obj = importlib.import_module(module)
    if name:
        assert getattr(obj, name) is not None, f"{file}: {module}.{name}"
