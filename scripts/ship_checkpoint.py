"""Store a training run's HF export as a shipped demo checkpoint (the demo scripts' last step).

    python scripts/ship_checkpoint.py RUN/final DEST TEMPERATURE TOP_K TOP_P

The weights in bf16, the run's tokenizer and its jpeglm.json with the sampling settings chosen
on held-out data recorded in it; DEST (a folder under python/jpeglm/data/assets/checkpoints)
replaced.
"""

import json
import sys
from pathlib import Path

import torch

from jpeglm.checkpoint.hf import load_hf_state, save_hf

if len(sys.argv) != 6 or not (Path(sys.argv[1]) / "jpeglm.json").is_file():
    sys.exit("usage: " + __doc__.strip().splitlines()[2].strip() + " (RUN/final has jpeglm.json)")
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
temperature, top_k, top_p = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
args, state = load_hf_state(src)
meta = json.loads((src / "jpeglm.json").read_text())
meta["sampling"] = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
save_hf(dst, args, state, dtype=torch.bfloat16, tokenizer=src / "tokenizer.jpeglm",
        metadata=meta, replace=True)  # fmt: skip
print("wrote", dst, "from", src)
