#!/usr/bin/env bash
# Set up (if needed) and run the main demo on the bundled images; output in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
jpeglm demo --out demo_out "$@"
