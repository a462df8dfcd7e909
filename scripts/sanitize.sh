#!/usr/bin/env bash
# Build jpeglm._core with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# JPEGLM_SANITIZE=ON) into build/sanitize/ and run the native-facing tests against it.
# The editable install is not touched: the tests import a staged copy of the package
# (build/sanitize/stage/jpeglm: the Python sources linked, the sanitized _core copied in)
# through `python -S` with PYTHONPATH=<stage>:<site-packages>, so the editable import hook
# (a .pth file) is never loaded. ASan's runtime is LD_PRELOADed (Python itself is not
# instrumented); leak checking is off (CPython keeps memory alive at exit by design).
#   scripts/sanitize.sh [pytest args...]   default: the codec, grammar, tokenizer and reference tests
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
CXX=${CXX:-g++}
build=build/sanitize
stage=$build/stage
t0=$(date +%s)

pybind11_dir=$("$PY" -c "import pybind11; print(pybind11.get_cmake_dir())")
cmake -S . -B "$build" -DJPEGLM_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$CXX" -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$pybind11_dir" >"$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target _core >"$build.build.log" 2>&1 ||
  { tail -50 "$build.build.log"; exit 1; }
t1=$(date +%s)

rm -rf "$stage"
mkdir -p "$stage/jpeglm"
for f in python/jpeglm/*; do
  case $f in *.so | */__pycache__) continue ;; esac
  ln -s "$PWD/$f" "$stage/jpeglm/"
done
ln -s "$PWD/kernels" "$stage/jpeglm/kernels"
cp "$build"/_core*.so "$stage/jpeglm/"

site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
plat=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
libasan=$("$CXX" -print-file-name=libasan.so)
libubsan=$("$CXX" -print-file-name=libubsan.so)
[ -f "$libasan" ] || { echo "libasan not found for $CXX"; exit 1; }

if [ $# -eq 0 ]; then
  set -- tests/test_codec.py tests/test_grammar.py tests/test_tokenizer.py tests/test_reference.py \
    tests/test_bad_input.py tests/test_fuzz_regressions.py tests/test_decode_kernels.py
fi
echo "[sanitize] built in $((t1 - t0)) s; running pytest under ASan+UBSan: $*"
env PYTHONPATH="$PWD/$stage:$site:$plat" \
  LD_PRELOAD="$libasan $libubsan" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0:allocator_may_return_null=1" \
  UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1" \
  JPEGLM_SANITIZED=1 \
  "$PY" -S -c "import jpeglm._core as c; assert '/stage/' in c.__file__, c.__file__" &&
env PYTHONPATH="$PWD/$stage:$site:$plat" \
  LD_PRELOAD="$libasan $libubsan" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0:allocator_may_return_null=1" \
  UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1" \
  JPEGLM_SANITIZED=1 \
  "$PY" -S -m pytest -q -p no:cacheprovider "$@"
echo "[sanitize] total $(($(date +%s) - t0)) s"
