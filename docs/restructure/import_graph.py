"""Import graph of python/jpeglm (+ kernels/ as jpeglm.kernels), built with ast.

Usage: python import_graph.py [REPO_ROOT]   (default /work/main)
Prints: module-level edges, TYPE_CHECKING edges, function-level edges (file:line each),
then the strongly connected components (cycles) for (a) module level, (b) module + function level.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/main")
PKG = "jpeglm"


def collect_modules(root: Path) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for base, prefix in ((root / "python" / PKG, PKG), (root / "kernels", PKG + ".kernels")):
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts]) if parts else prefix] = f
    mods.setdefault(PKG + ".kernels", root / "kernels")  # namespace-ish package made in __init__
    return mods


def is_pkg(mods, name):
    f = mods.get(name)
    return f is not None and (f.name == "__init__.py" or f.is_dir())


def resolve(mods, importer: str, target: str) -> list[str]:
    """Modules executed by importing `target` from `importer`: target plus its package
    __init__s that are not already ancestors of the importer."""
    out = []
    parts = target.split(".")
    imp_anc = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in mods and name not in imp_anc and name != importer:
            out.append(name)
    return out


class Visitor(ast.NodeVisitor):
    def __init__(self, mods, modname, is_package):
        self.mods, self.mod, self.is_package = mods, modname, is_package
        self.depth = 0  # function nesting
        self.tc = 0  # inside `if TYPE_CHECKING:`
        self.edges: list[tuple[str, str, int, str]] = []  # (target, kind, line, text)

    def _kind(self):
        return "function" if self.depth else ("typecheck" if self.tc else "module")

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node):
        t = node.test
        tc = (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
            isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")
        if tc:
            self.tc += 1
            for n in node.body:
                self.visit(n)
            self.tc -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def _add(self, target, node):
        for t in resolve(self.mods, self.mod, target):
            self.edges.append((t, self._kind(), node.lineno, ast.unparse(node).split("\n")[0][:120]))

    def visit_Import(self, node):
        for a in node.names:
            if a.name == PKG or a.name.startswith(PKG + "."):
                self._add(a.name, node)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.mod.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if not (mod == PKG or mod.startswith(PKG + ".")):
            return
        subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in self.mods]
        if len(subs) < len(node.names):  # some names are attributes of `mod` itself
            self._add(mod, node)
        for s in subs:
            self._add(s, node)


def build(root: Path = ROOT):
    mods = collect_modules(root)
    edges = defaultdict(list)  # src -> [(dst, kind, line, text)]
    for name, f in mods.items():
        if f.is_dir():
            continue
        v = Visitor(mods, name, f.name == "__init__.py")
        v.visit(ast.parse(f.read_text(), str(f)))
        edges[name] = v.edges
    return mods, edges


def sccs(nodes, adj):
    """Tarjan, iterative."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(adj.get(start, ())))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(adj.get(w, ()))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in adj.get(v, ()):
                        out.append(sorted(comp))
    return out


def adjacency(edges, kinds):
    adj = defaultdict(set)
    for s, es in edges.items():
        for d, k, _, _ in es:
            if k in kinds:
                adj[s].add(d)
    return adj


def floors(mods, adj):
    """Longest-path layer of each module in the (module-level) DAG; None if cyclic."""
    memo, busy = {}, set()
    def f(m):
        if m in memo:
            return memo[m]
        if m in busy:
            return None
        busy.add(m)
        vals = [f(d) for d in adj.get(m, ())]
        busy.discard(m)
        memo[m] = None if None in vals else 1 + max(vals, default=-1)
        return memo[m]
    return {m: f(m) for m in mods}


def rel(mods, m):
    return str(mods[m].relative_to(ROOT)) if not mods[m].is_dir() else m


def main():
    mods, edges = build()
    for kind in ("module", "typecheck", "function"):
        print(f"## {kind}-level imports")
        for s in sorted(edges):
            ds = sorted({d for d, k, _, _ in edges[s] if k == kind})
            if ds:
                print(f"{s.removeprefix('jpeglm.')}: {', '.join(d.removeprefix('jpeglm.') for d in ds)}")
        print()
    for label, kinds in (("module level", {"module"}),
                         ("module + function level", {"module", "function"}),
                         ("all: module + function + TYPE_CHECKING", {"module", "function", "typecheck"})):
        adj = adjacency(edges, kinds)
        comps = sccs(sorted(mods), adj)
        print(f"## cycles ({label}): {len(comps)}")
        for c in comps:
            print("  SCC:", " ".join(m.removeprefix("jpeglm.") for m in c))
            cs = set(c)
            for s in c:
                for d, k, line, text in edges[s]:
                    if d in cs and k in kinds:
                        print(f"    {rel(mods, s)}:{line} [{k}] -> {d.removeprefix('jpeglm.')}: {text}")
        print()
    fl = floors(mods, adjacency(edges, {"module"}))
    print("## floors (module level):", 1 + max(v for v in fl.values() if v is not None))


if __name__ == "__main__":
    main()
