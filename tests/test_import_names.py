"""No import name of ours shadows another distribution (issue 25).

From the repository root (``python -m pytest``, ``python -c``, a notebook) the current directory
comes first on ``sys.path``; running ``python benchmarks/bench_x.py`` puts ``benchmarks/`` first;
pytest puts ``tests/`` first. A regular package or module in one of those folders named like an
installed distribution's import name wins over that distribution. transformers 5 imports Hugging
Face's ``kernels`` distribution, which our top-level ``kernels/`` package used to shadow, and
``LlamaForCausalLM.from_pretrained`` failed from the root. These tests start subprocesses in the
root as a user would. Hugging Face's ``kernels`` is in requirements-dev.txt, so they always run.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Folders that go first on sys.path in a normal workflow: the root (python -c / -m, notebooks),
# benchmarks/ (running one of its scripts), tests/ (pytest's rootdir-relative imports), scripts/.
PATH_FOLDERS = ["", "benchmarks", "tests", "scripts"]

# Import names that must never be ours, installed here or not: the dependencies and peers users
# run beside jpeglm (the installed distributions are checked in addition).
KNOWN_FOREIGN = {
    "kernels",
    "transformers",
    "tokenizers",
    "tiktoken",
    "sentencepiece",
    "safetensors",
    "triton",
    "torch",
    "torchvision",
    "torchmetrics",
    "liger_kernel",
    "flash_attn",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "numpy",
    "PIL",
    "av",
    "cv2",
    "turbojpeg",
    "skimage",
    "tensorboard",
    "matplotlib",
    "pyarrow",
    "webdataset",
    "vllm",
    "model",
    "data",
    "codec",
    "tokenizer",
    "benchmarks",
    "tests",
    "scripts",
    "video",
    "grammar",
    "generate",
    "sample",
    # PyPI distributions not installed here whose import names test helpers once had
    "trainutil",
    "test_model",
}


def _hf_kernels_installed() -> str:
    """The installed Hugging Face ``kernels`` distribution's version; a missing one is a failure
    of the set-up, not a reason to skip (requirements-dev.txt installs it)."""
    try:
        return importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "Hugging Face's `kernels` is not installed: pip install -r requirements-dev.txt"
        )


def _run_in_root(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -c CODE`` started in the repository root, as a user would (cwd first on path)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _importable_names(folder: Path) -> set[str]:
    """Names a folder on sys.path makes importable as regular modules/packages (a folder without
    ``__init__.py`` is only a namespace portion, which any installed package beats)."""
    names = set()
    for entry in folder.iterdir():
        if entry.suffix == ".py" or entry.suffix == ".so":
            names.add(entry.name.split(".")[0])
        elif entry.is_dir() and (entry / "__init__.py").exists():
            names.add(entry.name)
    return names


def test_import_kernels_from_root_is_hugging_faces():
    """`import kernels` in the repository root gives the installed distribution's file (in
    site-packages, wherever the environment lives), not a folder of ours; `jpeglm.kernels` is
    still our Triton folder."""
    _hf_kernels_installed()
    r = _run_in_root(
        "import kernels, jpeglm.kernels as ours;"
        "print(kernels.__file__); print(list(ours.__path__)[0]);"
        "from kernels import CUDAProperties"  # what transformers 5 imports from it
    )
    assert r.returncode == 0, r.stderr[-3000:]
    theirs, ours = r.stdout.split()
    installed = importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")
    assert Path(theirs).resolve() == Path(installed).resolve(), theirs
    assert not Path(theirs).resolve().is_relative_to(ROOT / "kernels"), theirs
    assert Path(ours).resolve() == ROOT / "kernels"


def test_transformers_loads_our_export_from_root(tmp_path):
    """The user's first step after training: our HF export loads in
    ``transformers.LlamaForCausalLM.from_pretrained`` from a shell in the repository root, with
    Hugging Face's ``kernels`` installed, and gives our logits."""
    _hf_kernels_installed()
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from jpeglm.checkpoint.hf import save_pretrained
    from jpeglm.model import ModelArgs, Transformer

    torch.manual_seed(0)
    ours = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=67, max_seq_len=64),
                       backend="torch").eval()  # fmt: skip
    save_pretrained(ours, tmp_path / "export")
    idx = torch.randint(0, 67, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours(idx)
    r = _run_in_root(
        "import json, sys, torch, transformers;"
        f"m = transformers.LlamaForCausalLM.from_pretrained({str(tmp_path / 'export')!r}).eval();"
        f"idx = torch.tensor({idx.tolist()});"
        "print(json.dumps(m(idx).logits.detach().tolist()))"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.tensor(json.loads(r.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_no_folder_of_ours_shadows_a_distribution():
    """No module or regular package in a folder that goes first on sys.path is named like an
    installed distribution's import name (or a well-known one that may not be installed)."""
    foreign = set(KNOWN_FOREIGN)
    for name, dists in importlib.metadata.packages_distributions().items():
        if "jpeglm" not in dists:
            foreign.add(name)
    clashes = []
    for rel in PATH_FOLDERS:
        folder = ROOT / rel
        clashes += [f"{rel or '.'}/{n}" for n in sorted(_importable_names(folder) & foreign)]
    assert not clashes, f"these shadow another distribution's import name: {clashes}"


def test_the_clash_check_sees_a_shadowing_package(tmp_path):
    """The check above would notice a top-level ``kernels`` package put back."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "model.py").write_text("")
    (tmp_path / "notes").mkdir()  # no __init__.py: a namespace portion, harmless
    assert _importable_names(tmp_path) == {"kernels", "model"}
