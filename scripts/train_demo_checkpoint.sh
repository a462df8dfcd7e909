#!/usr/bin/env bash
# Re-create the demo checkpoint shipped in python/jpeglm/data/checkpoints/mnist32 with jpeglm's
# own tools: MNIST digits -> tokenizer -> packed shards -> trainer -> bf16 HF checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true
W=demo_work
mkdir -p $W/img_train $W/img_held
python - <<'P'
from PIL import Image
from jpeglm import samples
x, _ = samples.mnist()
for i, im in enumerate(x):
    Image.fromarray(im).save(f"demo_work/{'img_held' if i >= 4500 else 'img_train'}/{i:04d}.png")
P
jpeglm train-tokenizer $W/img_train -o $W/tokenizer.jpeglm --size 32 --vocab-size 320 --quiet
jpeglm prepare $W/img_train $W/train --tokenizer $W/tokenizer.jpeglm --size 32 --seq-len 512 --quiet
jpeglm prepare $W/img_held $W/held --tokenizer $W/tokenizer.jpeglm --size 32 --seq-len 512 --quiet
jpeglm train configs/mnist_demo.toml "$@"
python - <<'P'
import shutil, torch
from pathlib import Path
from jpeglm.model import Transformer
from jpeglm.train import _checkpoints
last = _checkpoints(Path("demo_work/run"))[-1]
dst = Path("python/jpeglm/data/checkpoints/mnist32")
dst.mkdir(parents=True, exist_ok=True)
Transformer.from_pretrained(last).save_pretrained(dst, dtype=torch.bfloat16)
shutil.copy("demo_work/tokenizer.jpeglm", dst / "tokenizer.jpeglm")
print("wrote", dst, "from", last)
P
