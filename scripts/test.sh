#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, plus the lint check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check python tests benchmarks kernels
python -m pytest -q "$@"
