#!/usr/bin/env bash
# The AVC-LM demo (issue 20): Moving-MNIST clips made here from the bundled digits -> canonical
# H.264 streams (the paper's codec settings, 64x64 frames instead of 256x144) -> BPE -> packed
# shards -> trainer -> the bf16 HF checkpoint shipped in python/jpeglm/data/assets/checkpoints/.
# Run from a fresh video_work/ (no command here writes over an earlier run's files).
# Stages: `data` (clips, tokenizer, shards), `train`, `export`; default all three.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true
W=video_work
STAGES=${*:-data train export}
if [[ " $STAGES " == *" data "* ]]; then
  mkdir -p $W/clips_train $W/clips_held
  python - <<'P'
# 4,000 training clips from the 4,500 training digits, 100 held-out clips from the 500 held-out
# digits (samples.mnist_split): two digits bouncing in 64x64, 15 frames (5 s at 3 fps).
import numpy as np
from jpeglm.data import bundled as samples
train_idx, held_idx = samples.mnist_split(held_per_digit=50)
for name, idx, n, seed in (("train", train_idx, 4000, 0), ("held", held_idx, 100, 1)):
    clips = samples.moving_mnist(n, frames=15, size=64, seed=seed, indices=idx)
    for i, c in enumerate(clips):
        np.save(f"video_work/clips_{name}/{i:04d}.npy", c)
P
  V="--video --frame-size 64x64 --fps 3 --seconds 5"
  jpeglm train-tokenizer $W/clips_train -o $W/tokenizer.jpeglm $V --vocab-size 1024 --quiet
  jpeglm prepare $W/clips_train $W/train --tokenizer $W/tokenizer.jpeglm $V --seq-len 2048 --quiet
  jpeglm prepare $W/clips_held $W/held --tokenizer $W/tokenizer.jpeglm $V --seq-len 2048 --quiet
fi
if [[ " $STAGES " == *" train "* ]]; then
  jpeglm train configs/video_demo.toml
fi
if [[ " $STAGES " == *" export "* ]]; then
  # the run's HF export (jpeglm.json with kind "video"), stored in bf16 with the sampling
  # settings chosen on 12 held-out clips x 2 seeds (benchmarks/video_sampling_sweep.py)
  python scripts/ship_checkpoint.py video_work/run/final \
    python/jpeglm/data/assets/checkpoints/moving_mnist64 0.3 16 0.95
fi
