#!/usr/bin/env bash
# Fill vendor/ (git-ignored) with what an offline GPU machine lacks for scripts/gpu_check.sh:
#   * libjpeg-turbo headers and shared library (Debian amd64 .debs: libjpeg62-turbo-dev and
#     libjpeg62-turbo), unpacked there with `dpkg -x` to build jpeglm._core;
#   * the Liger-Kernel wheel (pure Python; the kernels benchmark's peer), without dependencies.
# Run it on a machine with package registries (Debian/Ubuntu apt and PyPI), then carry vendor/
# to the GPU machine with the checkout. Fails if vendor/ would exceed 64 MiB.
#   JPEGLM_VENDOR=DIR   another folder (default vendor)
#   LIGER_SPEC=SPEC     the Liger-Kernel requirement (default liger-kernel, the newest)
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=${JPEGLM_VENDOR:-vendor}
LIMIT=$((64 * 1024 * 1024))
LIGER_SPEC=${LIGER_SPEC:-liger-kernel}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}

mkdir -p "$VENDOR"
rm -f "$VENDOR"/*.deb "$VENDOR"/*.whl "$VENDOR"/MANIFEST.txt

echo "[vendor] libjpeg-turbo .debs (amd64)"
debs=(libjpeg62-turbo-dev libjpeg62-turbo)
if ! (cd "$VENDOR" && apt-get download -q "${debs[@]/%/:amd64}" >/dev/null 2>&1); then
  # No (amd64) package lists here: a private list folder, as a non-Debian-amd64 host needs.
  lists=$(mktemp -d)
  trap 'rm -rf "$lists"' EXIT
  mkdir -p "$lists/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
  apt-get "${o[@]}" update -qq
  (cd "$VENDOR" && apt-get "${o[@]}" download -q "${debs[@]/%/:amd64}" >/dev/null)
fi

echo "[vendor] ${LIGER_SPEC} wheel (no dependencies)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d "$VENDOR" "$LIGER_SPEC"

{
  echo "# vendor/ for scripts/gpu_check.sh, made by scripts/gpu_vendor.sh on $(date -u +%F)"
  for f in "$VENDOR"/*.deb "$VENDOR"/*.whl; do
    echo "$(sha256sum "$f" | cut -d' ' -f1)  $(stat -c %s "$f")  $(basename "$f")"
  done
} >"$VENDOR/MANIFEST.txt"

size=$(du -sb "$VENDOR" | cut -f1)
echo "[vendor] $VENDOR: $(find "$VENDOR" -type f | wc -l) files, $((size / 1024)) KiB"
cat "$VENDOR/MANIFEST.txt"
if [ "$size" -gt "$LIMIT" ]; then
  echo "[vendor] $VENDOR is over 64 MiB ($size bytes): it would not travel" >&2
  exit 1
fi
