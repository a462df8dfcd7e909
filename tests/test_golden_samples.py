"""Old checkpoints sample exactly as before (issue 33): the shipped unconditional demo model's
samples -- unconditional (constrained and not, fp32 and int8, other temperature / top-k) and
completions -- equal, token for token, those recorded in ``tests/golden/mnist32_samples.json``
before class conditioning was added. Sampling is deterministic per seed, but its floats depend
on the CPU kernels' instruction set (recorded in the file): on another ISA the check is
skipped with that reason rather than failing on a rounding difference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from jpeglm import _core  # noqa: E402
from jpeglm.checkpoint.load import load_model  # noqa: E402
from jpeglm.data import bundled  # noqa: E402
from jpeglm.inference.sample import complete, generate  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "golden" / "mnist32_samples.json").read_text())


@pytest.fixture(scope="module")
def demo():
    if _core.linear_isa() != GOLDEN["isa"]:
        pytest.skip(f"recorded with {GOLDEN['isa']} CPU kernels, this machine uses "
                    f"{_core.linear_isa()}")  # fmt: skip
    return load_model(bundled.DEMO_CHECKPOINT)


@pytest.mark.parametrize("case", range(len(GOLDEN["cases"])))
def test_demo_model_samples_as_recorded(demo, case):
    from PIL import Image

    c = GOLDEN["cases"][case]
    if c["call"] == "generate":
        got = generate(demo.model, demo.tokenizer, size=32, **c["kwargs"])
    else:
        digits, _ = bundled.mnist()
        ims = [Image.fromarray(digits[i]).convert("RGB") for i in c["images"]]
        got = complete(demo.model, demo.tokenizer, ims, size=32, **c["kwargs"])
    assert [s.tokens for s in got] == c["tokens"]
    assert [hashlib.sha256(s.data).hexdigest() for s in got] == c["data_sha256"]
