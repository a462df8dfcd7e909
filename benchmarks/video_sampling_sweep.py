"""Sampling settings of the AVC-LM demo checkpoint, chosen on held-out clips (issue 20).

    python benchmarks/video_sampling_sweep.py

12 Moving-MNIST clips of the held-out digits (seed 7; the demo's own clips use seed 101),
completed after 10 of 15 frames at each setting, 2 seeds: PSNR / SSIM of the 5 generated
frames against the real ones and against repeating the last prompt frame, and the share of
generated frames decoded from complete pictures. One JSON line per run.
"""

import json

import numpy as np
import torch

from jpeglm.checkpoint.load import load_model
from jpeglm.data import bundled as samples
from jpeglm.eval.video import clip_scores
from jpeglm.video import codec as video
from jpeglm.video import sample as video_sample

torch.set_num_threads(1)
lm = load_model("python/jpeglm/data/assets/checkpoints/moving_mnist64", dtype=torch.float32)
held = samples.mnist_split()[1]
clips = samples.moving_mnist(12, frames=15, size=64, seed=7, indices=held)
streams = [video.encode(video.prepare(list(c), width=64, height=64)) for c in clips]
real = [video.decode(s) for s in streams]
for t, k, p in ((0.3, 16, 0.95), (0.5, 16, 0.95), (0.7, 16, 0.95), (1.0, 50, 0.9), (0.1, 4, 0.95)):
    for seed in (0, 1):
        got = video_sample.complete(
            lm.model,
            lm.tokenizer,
            streams,
            frames=10,
            total_frames=15,
            size=(64, 64),
            max_tokens=2048,
            seed=seed,
            temperature=t,
            top_k=k,
            top_p=p,
        )
        sc = clip_scores(real, [g.frames for g in got], 10)
        v = np.mean([max(0, g.valid_frames - 10) / 5 for g in got])
        print(
            json.dumps(
                {
                    "t": t,
                    "k": k,
                    "p": p,
                    "seed": seed,
                    "psnr": round(sc["psnr"], 2),
                    "ssim": round(sc["ssim"], 3),
                    "bpsnr": round(sc["baseline_psnr"], 2),
                    "bssim": round(sc["baseline_ssim"], 3),
                    "valid": v,
                }
            ),
            flush=True,
        )
