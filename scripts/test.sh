#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, plus the lint check.
#   bash scripts/test.sh [PYTEST ARGS]           dependencies at constraints.txt (reproducible; CI)
#   bash scripts/test.sh --latest [PYTEST ARGS]  the newest release of every dependency, in its own
#                                                virtualenv .venv-latest (catches drift early)
# Run both before committing to main.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ "${1:-}" = "--latest" ]; then
  shift
  venv=.venv-latest
  export JPEGLM_LATEST=1
fi
JPEGLM_VENV=$venv bash scripts/setup.sh
# shellcheck disable=SC1091
. "$venv/bin/activate"
python - <<'PY'
from importlib.metadata import PackageNotFoundError, version

names = ["numpy", "pillow", "torch", "triton", "transformers", "kernels", "tokenizers",
         "safetensors", "tiktoken", "sentencepiece", "av"]
found = []
for name in names:
    try:
        found.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        found.append(f"{name} -")
print("[test] " + ", ".join(found))
PY
ruff check python tests benchmarks kernels
python -m pytest -q "$@"
