"""Every use of a jpeglm module's name across the repo (py files), classified:
defined-here vs re-exported (name not defined at module top level in that module).
Usage: python usages.py [ROOT] [--all]  -> prints re-export uses (file:line module.name -> home)."""
from __future__ import annotations
import ast, os, re, sys
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import import_graph as g

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else Path("/work/main")
mods = g.collect_modules(ROOT)

def top_defs(f: Path):
    """names defined at top level (def/class/assign), and names imported -> (module, name)."""
    defined, imported = set(), {}
    if f.is_dir():
        return defined, imported
    t = ast.parse(f.read_text())
    def walk(body):
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(n.name)
            elif isinstance(n, ast.Assign):
                for tg in n.targets:
                    for x in ast.walk(tg):
                        if isinstance(x, ast.Name): defined.add(x.id)
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                defined.add(n.target.id)
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                for a in n.names:
                    imported[a.asname or a.name] = (n.module, a.name)
            elif isinstance(n, ast.Import):
                for a in n.names:
                    imported[a.asname or a.name.split(".")[0]] = (a.name, None)
            elif isinstance(n, (ast.If, ast.Try)):
                walk(n.body); walk(getattr(n, "orelse", [])); 
                for h in getattr(n, "handlers", []): walk(h.body)
    walk(t.body)
    return defined, imported

INFO = {m: top_defs(f) for m, f in mods.items()}

def home(mod, name, depth=0):
    """Where `name` reached via `mod` is really defined."""
    if f"{mod}.{name}" in mods: return f"{mod}.{name}"
    defined, imported = INFO.get(mod, (set(), {}))
    if name in defined: return f"{mod}.{name}"
    if name in imported and depth < 5:
        m2, n2 = imported[name]
        if n2 is None: return m2
        if m2 in mods: return home(m2, n2, depth + 1)
        return f"{m2}.{n2}"
    return None  # __getattr__ or unknown

def files():
    for sub in ("python", "kernels", "tests", "scripts", "benchmarks", "fuzz", "docs"):
        yield from sorted((ROOT / sub).rglob("*.py"))

STR_RE = re.compile(r"jpeglm((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")

def main():
    show_all = "--all" in sys.argv
    for f in files():
        src = f.read_text()
        try: t = ast.parse(src)
        except SyntaxError: continue
        rel = f.relative_to(ROOT)
        aliases = {}  # local alias -> module
        def rep(line, mod, name, how):
            h = home(mod, name)
            own = h == f"{mod}.{name}"
            if show_all or not own:
                print(f"{rel}:{line}\t{how}\t{mod}.{name}\t-> {h or '??(getattr)'}")
        for n in ast.walk(t):
            if isinstance(n, ast.ImportFrom) and n.module and not n.level and (n.module == "jpeglm" or n.module.startswith("jpeglm.")):
                for a in n.names:
                    full = f"{n.module}.{a.name}"
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    elif n.module in mods and n.module != "jpeglm":
                        rep(n.lineno, n.module, a.name, "from")
                    elif n.module == "jpeglm" and a.name not in ("__version__",):
                        rep(n.lineno, n.module, a.name, "from")
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.startswith("jpeglm.") and a.name in mods:
                        if a.asname: aliases[a.asname] = a.name
        for n in ast.walk(t):
            if isinstance(n, ast.Attribute):
                # jpeglm.x.y.attr chains and alias.attr
                parts = []
                x = n
                while isinstance(x, ast.Attribute):
                    parts.append(x.attr); x = x.value
                if not isinstance(x, ast.Name): continue
                parts.append(x.id); parts.reverse()
                if parts[0] == "jpeglm":
                    # longest module prefix
                    for k in range(len(parts) - 1, 0, -1):
                        m = ".".join(parts[:k])
                        if m in mods and m != "jpeglm" and f"{m}.{parts[k]}" not in mods:
                            if len(parts) == k + 1:  # only report terminal chain once
                                rep(n.lineno, m, parts[k], "attr")
                            break
                elif parts[0] in aliases and len(parts) == 2:
                    m = aliases[parts[0]]
                    if f"{m}.{parts[1]}" not in mods:
                        rep(n.lineno, m, parts[1], "attr")
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                for mm in STR_RE.finditer(n.value):
                    parts = ["jpeglm", *mm.group(1)[1:].split(".")]
                    for k in range(len(parts) - 1, 0, -1):
                        m = ".".join(parts[:k])
                        if m in mods and m != "jpeglm":
                            if f"{m}.{parts[k]}" not in mods and parts[k] not in ("py",):
                                # strings: docstrings too; mark
                                rep(getattr(n, "lineno", 0), m, parts[k], "str")
                            break

main()
