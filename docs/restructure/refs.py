"""Which old module names each file outside python/jpeglm references (imports, `jpeglm.X`
strings, `from jpeglm import X`, `-m jpeglm.X`). Usage: python refs.py [ROOT]"""
import ast, re, subprocess, sys
from collections import defaultdict
from pathlib import Path
ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/main")
mods = sorted(p.stem for p in (ROOT / "python/jpeglm").glob("*.py") if p.stem != "__init__") + ["reference", "kernels"]
files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.split()
files = [f for f in files if not f.startswith(("csrc/", "python/jpeglm/data/")) and f.endswith((".py", ".md", ".sh", ".toml", "Makefile", ".txt"))]
DOT = re.compile(r"jpeglm\.([a-z_]+)\b")
FROM = re.compile(r"from jpeglm import \(?([^)\n]+)")
per_file = defaultdict(lambda: defaultdict(list))
for f in files:
    text = (ROOT / f).read_text(errors="replace")
    for i, line in enumerate(text.splitlines(), 1):
        for m in DOT.finditer(line):
            if m.group(1) in mods: per_file[f][m.group(1)].append(i)
        for m in FROM.finditer(line):
            for name in re.split(r"[,\s]+", m.group(1)):
                name = name.strip()
                if name in mods: per_file[f][name].append(i)
    # multi-line `from jpeglm import (\n a,\n b)`
    if f.endswith(".py"):
        try: t = ast.parse(text)
        except SyntaxError: continue
        for n in ast.walk(t):
            if isinstance(n, ast.ImportFrom) and n.module == "jpeglm":
                for a in n.names:
                    if a.name in mods and n.lineno not in per_file[f][a.name]: per_file[f][a.name].append(n.lineno)
by_mod = defaultdict(set)
for f, d in sorted(per_file.items()):
    print(f"{f}: " + ", ".join(f"{m}({len(set(v))})" for m, v in sorted(d.items())))
    for m in d: by_mod[m].add(f)
print("\n# files referencing each module (outside python/jpeglm counted separately)")
for m in sorted(by_mod):
    fs = by_mod[m]; inside = [x for x in fs if x.startswith("python/jpeglm")]
    print(f"{m}: {len(fs)} files ({len(inside)} inside python/jpeglm)")
