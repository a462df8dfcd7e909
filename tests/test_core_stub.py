"""``python/jpeglm/_core.pyi`` describes the built ``jpeglm._core``: the same module-level
names, the same classes with the same public methods and properties, and for every function
the same parameter names as the binding's signature (pybind11 writes it first in each
docstring)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from jpeglm import _core

STUB = Path(__file__).resolve().parents[1] / "python" / "jpeglm" / "_core.pyi"


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def public(names) -> set[str]:  # noqa: ANN001
    return {n for n in names if not n.startswith("_")}


def stub_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return out


def binding_params(obj: object) -> list[str] | None:
    """Parameter names from pybind11's signature line ``name(a: T, b: T = ...) -> R``."""
    doc = inspect.getdoc(obj) or ""
    m = re.match(r"\w+\((.*?)\)\s*->", doc.splitlines()[0] if doc else "")
    if not m:
        return None  # overloaded or undocumented: not compared
    params = []
    depth, cur = 0, ""
    for ch in m.group(1) + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            name = cur.strip().split(":")[0].strip().lstrip("*")
            if name and name != "self":
                params.append(name)
            cur = ""
        else:
            cur += ch
    return params


def stub_params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg != "self"]


def test_stub_lists_exactly_the_modules_names():
    names = stub_names(stub_tree().body)
    built = public(dir(_core))
    assert public(names) == built, (
        f"in _core, not in the stub: {sorted(built - public(names))}; "
        f"in the stub, not in _core: {sorted(public(names) - built)}"
    )


def test_stub_functions_take_the_bindings_parameters():
    checked = 0
    for name, node in stub_names(stub_tree().body).items():
        if isinstance(node, ast.FunctionDef):
            want = binding_params(getattr(_core, name))
            if want is not None:
                assert stub_params(node) == want, name
                checked += 1
    assert checked >= 10


def test_stub_classes_have_the_bindings_members():
    for name, node in stub_names(stub_tree().body).items():
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(_core, name)
        if issubclass(cls, BaseException):  # the exceptions: their members are Python's
            continue
        members = stub_names(node.body)
        built = public(n for n in dir(cls) if n not in dir(object) and n != "pybind11_conduit_v1_")
        assert public(members) == built, f"{name}: {sorted(public(members) ^ built)}"
        for mname, m in members.items():
            if isinstance(m, ast.FunctionDef) and not any(
                isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list
            ):
                want = binding_params(getattr(cls, mname))
                if want is not None:
                    assert stub_params(m) == want, f"{name}.{mname}"
