#!/usr/bin/env bash
# Re-create the demo checkpoint shipped in python/jpeglm/data/assets/checkpoints/mnist32 with jpeglm's
# own tools: MNIST digits -> tokenizer -> packed shards -> trainer -> bf16 HF checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true
W=demo_work
mkdir -p $W
# 4,500 training digits (450 of each), each kept as is and 7 times rotated by up to 12 degrees
# and shifted by up to 2 pixels (36,000 images, all in one folder); the last 50 digits of each
# label are held out, untouched (bundled.mnist_split: the bundled digits are sorted by label, so
# a split by position would hold out 9s only).
python -c "from jpeglm.data import bundled as b
b.mnist_folder('$W/img_train', 'train', copies=8, folders=False)
b.mnist_folder('$W/img_held', 'held', folders=False)"
jpeglm train-tokenizer $W/img_train -o $W/tokenizer.jpeglm --size 32 --vocab-size 320 --quiet
jpeglm prepare $W/img_train $W/train --tokenizer $W/tokenizer.jpeglm --size 32 --seq-len 512 --quiet
jpeglm prepare $W/img_held $W/held --tokenizer $W/tokenizer.jpeglm --size 32 --seq-len 512 --quiet
jpeglm train configs/mnist_demo.toml "$@"
# the run's HF export, stored in bf16 with the sampling settings chosen on held-out data by
# `python benchmarks/demo_quality.py CKPT --sweep` (benchmarks/RESULTS.md, "Demo model")
python scripts/ship_checkpoint.py demo_work/run/final python/jpeglm/data/assets/checkpoints/mnist32 \
  0.4 4 0.9
