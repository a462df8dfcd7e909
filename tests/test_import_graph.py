"""The package's structure (issue 29): no import cycle in python/jpeglm -- every import counts,
at module level, inside functions and under ``if TYPE_CHECKING`` --, no shim module (only
imports) and no module-level ``__getattr__`` outside ``jpeglm/__init__.py``, no module over
500 lines. The graph is built with ``ast`` from the source files; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "python" / "jpeglm"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = ("jpeglm", *f.relative_to(PKG).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imported(name: str, path: Path, mods: dict[str, Path]) -> dict[str, int]:
    """The jpeglm modules each import in ``name`` runs (-> the line of the first such import):
    the named module, and the packages above it that are not above ``name`` too."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                pkg = name.split(".")[: None if path.name == "__init__.py" else -1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                m = ".".join(parts[:i])
                if m in mods and m != name and (m == t or m not in own):
                    out.setdefault(m, node.lineno)
    return out


def _cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, {})):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _imported(m, f, mods) for m, f in mods.items()}
    cycle = _cycle(graph)
    where = [f"{mods[a].relative_to(ROOT)}:{graph[a][b]} imports {b}"
             for a, b in zip(cycle, cycle[1:])] if cycle else []  # fmt: skip
    assert cycle is None, "import cycle:\n  " + "\n  ".join(where)


def test_no_shims_and_no_module_getattr():
    bad = []
    for f in [*PKG.rglob("*.py"), *(ROOT / "kernels").glob("*.py")]:
        body = ast.parse(f.read_text()).body
        code = [
            n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
        ]
        if (
            code
            and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in code)
            and f.name != "__init__.py"
        ):
            bad.append(f"{f.relative_to(ROOT)}: only imports (a shim)")
        if f != PKG / "__init__.py" and any(
            isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in body
        ):
            bad.append(f"{f.relative_to(ROOT)}: module-level __getattr__")
    assert not bad, "\n".join(sorted(bad))


def test_no_module_over_500_lines():
    long = {str(f.relative_to(ROOT)): n for f in PKG.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, long


def test_sampling_defaults_are_written_once():
    """The sampling defaults (temperature 1.0, top-k 50, top-p 0.9) are written in one place,
    SamplingSettings; everything else takes them from there (issue 29)."""
    import re

    pattern = re.compile(
        r"temperature[^=\n]*=\s*1\.0\b|top_k[^=\n]*=\s*50\b|top_p[^=\n]*=\s*0\.9\b"
        r"|[\"']temperature[\"']:\s*1\.0|[\"']top_k[\"']:\s*50\b|[\"']top_p[\"']:\s*0\.9\b"
    )
    found = {
        f"{f.relative_to(ROOT)}:{i}": line.strip()
        for f in PKG.rglob("*.py")
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if pattern.search(line)
    }
    assert sorted(found.values()) == [
        "temperature: float = 1.0",
        "top_k: int | None = 50",
        "top_p: float | None = 0.9",
    ], found
    assert all("inference/settings.py" in k for k in found), found
