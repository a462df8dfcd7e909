#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (run as root, or with sudo available):
# system libjpeg(-turbo) headers and build tools, a virtualenv in .venv with the Python
# dependencies, and jpeglm itself built from csrc/ (editable install). Safe to re-run.
#   JPEGLM_NO_TORCH=1  skips torch/triton (codec and tokenizer only; their tests still run).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libjpeg62-turbo-dev libturbojpeg0 cmake g++ make ffmpeg; do  # ffmpeg: video tests
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "[setup] apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "[setup] installing Python dependencies"
# torch first and pinned (the CPU wheel on this machine kind), so that nothing installed later
# pulls a multi-GB CUDA build; then the packages that need it.
if [ "${JPEGLM_NO_TORCH:-0}" != "1" ]; then
  pip install -q "torch==2.13.0"
  pip install -q -r requirements-train.txt
fi
pip install -q -r requirements-dev.txt

echo "[setup] building jpeglm (csrc/ -> jpeglm._core)"
pip install -q --no-build-isolation -e .
python -c "import jpeglm._core, jpeglm.codec; print('[setup] jpeglm', jpeglm.__version__, 'ready')"
