#!/usr/bin/env bash
# The demo's scaling study (issue 18): three model sizes trained on the same data
# (scripts/train_demo_checkpoint.sh prepares demo_work/ first), held-out bits/byte against
# training tokens, written to demo_work/scaling/table.md. Never run by CI (about an hour on
# 2 idle CPU cores).
#   scripts/scaling_study.sh [xs s m]
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true
[ -f demo_work/train/index.json ] || { echo "run scripts/train_demo_checkpoint.sh first (it prepares demo_work/)"; exit 1; }
sizes=${*:-xs s m}
for s in $sizes; do
  if [ -f demo_work/scaling/$s/final/config.json ]; then echo "[scaling] $s done"; continue; fi
  echo "[scaling] $s: $(date)"
  jpeglm train configs/scaling_$s.toml
done
python - <<'P'
import json
from pathlib import Path
rows = ["| model | params | tokens | held-out bits/byte | train tok/s |", "|---|---:|---:|---:|---:|"]
for s in ("xs", "s", "m"):
    run = Path("demo_work/scaling") / s
    if not (run / "metrics.jsonl").exists():
        continue
    cfg = json.loads((run / "final/config.json").read_text()) if (run / "final/config.json").exists() else None
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    from jpeglm.model import ModelArgs, Transformer
    import tomllib
    margs = tomllib.loads(Path(f"configs/scaling_{s}.toml").read_text())["model_args"]
    import torch
    with torch.device("meta"):
        n = Transformer(ModelArgs(vocab_size=320, **margs)).num_params()
    speed = sorted(x["tokens_per_s"] for x in lines)[len(lines) // 2]
    for x in lines:
        if "eval_bits_per_byte" in x:
            rows.append(f"| {s} | {n / 1e6:.2f}M | {x['step'] * 8192 / 1e6:.1f}M | "
                        f"{x['eval_bits_per_byte']:.3f} | {speed:,.0f} |")
out = Path("demo_work/scaling/table.md")
out.write_text("\n".join(rows) + "\n")
print(out.read_text())
P
