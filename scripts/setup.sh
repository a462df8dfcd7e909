#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (run as root, or with sudo available):
# system libjpeg(-turbo) headers and build tools, a virtualenv in .venv with the Python
# dependencies, and jpeglm itself built from csrc/ (editable install). Safe to re-run.
# Python packages are installed at the versions in constraints.txt (known to pass the suite), so
# a test run is reproducible; `scripts/test.sh --latest` sets the two variables below instead.
#   JPEGLM_NO_TORCH=1    skips torch/triton (codec and tokenizer only; their tests still run).
#   JPEGLM_LATEST=1      no constraints: the newest release of every dependency (upgrading).
#   JPEGLM_VENV=DIR      the virtualenv to create/use (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${JPEGLM_VENV:-.venv}

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
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${JPEGLM_LATEST:-0}" = "1" ]; then
  echo "[setup] installing the newest releases of the Python dependencies into $VENV"
  versions=(--upgrade --upgrade-strategy eager)
  torch_spec=torch  # the newest release too (on this machine kind a multi-GB CUDA build)
  build_dir=build/latest  # its own CMake cache: it names this venv's Python
else
  echo "[setup] installing the Python dependencies at the versions in constraints.txt"
  versions=(-c constraints.txt)
  torch_spec=torch==2.13.0  # the CPU wheel on this machine kind
  build_dir=""
fi
# torch first, so that nothing installed later pulls another build of it (an unpinned torch
# is a multi-GB CUDA build); then the packages that need it.
if [ "${JPEGLM_NO_TORCH:-0}" != "1" ]; then
  pip install -q "${versions[@]}" "$torch_spec"
  pip install -q "${versions[@]}" -r requirements-train.txt
fi
pip install -q "${versions[@]}" -r requirements-dev.txt

echo "[setup] building jpeglm (csrc/ -> jpeglm._core)"
if [ -n "$build_dir" ]; then
  pip install -q --no-build-isolation -C build-dir="$build_dir" -e .
else
  pip install -q --no-build-isolation -e .
fi
python -c "import jpeglm._core, jpeglm.codec; print('[setup] jpeglm', jpeglm.__version__, 'ready')"
