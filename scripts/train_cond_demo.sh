#!/usr/bin/env bash
# Re-create the conditional demo checkpoint shipped in
# python/jpeglm/data/assets/checkpoints/mnist32-cond (issue 34) with jpeglm's own tools: the
# bundled MNIST digits with their labels -> prepare --labels -> the shipped unconditional
# mnist32 model fine-tuned as a class-conditional one -> guidance scale and sampling settings
# chosen on held-out seeds -> bf16 HF checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true
W=cond_work
BASE=python/jpeglm/data/assets/checkpoints/mnist32
mkdir -p $W
# The unconditional demo's images, the same seeded augmentation (scripts/train_demo_checkpoint.sh):
# 4,500 training digits x 8 (as is + 7 rotated by up to 12 degrees and shifted by up to 2 px),
# written as an ImageFolder tree (cond_work/img_train/<digit>/...); the last 50 of each digit
# held out untouched (bundled.mnist_split).
python -c "from jpeglm.data import bundled as b
b.mnist_folder('$W/img_train', 'train', copies=8)
b.mnist_folder('$W/img_held', 'held')"
jpeglm prepare $W/img_train $W/train --tokenizer $BASE/tokenizer.jpeglm --size 32 --seq-len 512 \
  --labels --quiet
jpeglm prepare $W/img_held $W/held --tokenizer $BASE/tokenizer.jpeglm --size 32 --seq-len 512 \
  --labels --quiet
jpeglm train configs/mnist_cond_demo.toml "$@"
# a second stage from the first: 2,000 steps at lr 2e-3 (21% -> 43% of samples judged the digit
# asked for), then a third from the second: 4,000 steps at lr 2e-3 (-> 51%; benchmarks/RESULTS.md
# "Conditional demo model")
jpeglm train configs/mnist_cond_demo.toml "init_from=\"$W/run/final\"" max_steps=2000 lr=2e-3 \
  min_lr=2e-4 "out=\"$W/run2\""
jpeglm train configs/mnist_cond_demo.toml "init_from=\"$W/run2/final\"" max_steps=4000 lr=2e-3 \
  min_lr=2e-4 "out=\"$W/run3\""
# the guidance scale and the sampling settings, chosen by the digit judge on seeds 100-101
# (the figures reported in benchmarks/RESULTS.md use seeds 0-2), then shipped in bf16 and
# measured again as shipped
python benchmarks/cond_demo_quality.py $W/run3/final --sweep --scales 1.5 2 2.5 \
  --settings 0.4,4,0.9 0.3,4,0.9 0.3,2,0.9 0.2,4,0.9 \
  --ship python/jpeglm/data/assets/checkpoints/mnist32-cond
