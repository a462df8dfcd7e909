#!/usr/bin/env bash
# One command settles the GPU claims (issues 17, 26): offline, on one CUDA GPU, in 9 minutes.
#
#   bash scripts/gpu_vendor.sh        # once, on a machine with registries: fills vendor/
#   bash scripts/gpu_check.sh         # on the GPU machine (the checkout + vendor/)
#   bash scripts/gpu_check.sh --dry   # anywhere without CUDA (CI): tiny shapes, TRITON_INTERPRET=1
#   bash scripts/gpu_check.sh --list  # the stages, their time caps and the budget; runs nothing
#
# Stages, in this order (the logic lives in benchmarks/gpu_check.py, one process per stage):
# env, kernels, model, train, memory, decode, graph_breaks, core (the background build of
# jpeglm._core, joined here), pytest (tests/test_kernels.py and the sampler tests). Each stage
# runs under its own time cap and watches it (what does not fit is a row saying so); the caps
# add up to less than the budget (JPEGLM_GPU_BUDGET, default 540 s, counted from the start;
# pytest, the last, gets what is left), so every stage runs. Each prints exactly one line
# `STAGE <n> <name> PASS|FAIL|SKIP <s>s` -- also when it is killed by its cap or left out for
# want of budget. The output folder (${JPEGLM_GPU_OUT:-gpu_out}) ends with two files:
# summary.md (markdown for benchmarks/RESULTS.md: the card, the date, a row per stage and each
# stage's tables; rewritten after every stage, so it exists even if the script is killed) and
# gpu_check.tar.gz (every stage's .md and .json, stages.tsv, log.txt, core.log). Exit status:
# 1 if any stage FAILed, else 0; 2 when the check cannot start -- among others where
# nvidia-smi sees a GPU but torch has no CUDA (a CPU-only torch wheel): that is not a dry run.
#
# Environment: PYTHON (default: the active venv's python, else .venv/bin/python, else python3),
# JPEGLM_GPU_OUT (output folder), JPEGLM_GPU_BUDGET (seconds for everything; default 540, dry
# 900, each stage 4x its dry cap: JPEGLM_DRY_SLACK), JPEGLM_VENDOR (default vendor).
set -uo pipefail # not -e: one failing stage must not stop the others
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

DRY=0
LIST=0
for arg in "$@"; do
  case $arg in
    --dry) DRY=1 ;;
    --list) LIST=1 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "gpu_check: unknown argument $arg (--dry, --list, --help)" >&2
      exit 2
      ;;
  esac
done

# The stages: n, name, time cap on a GPU (s), time cap in the dry run (s; times
# JPEGLM_DRY_SLACK). Correctness first, then the timings; the compile-heavy checks sit inside
# their stages' caps (each stage watches JPEGLM_STAGE_TIMEOUT). pytest's cap is "what is left".
STAGES=(
  "1 env 20 30"
  "2 kernels 75 40"
  "3 model 90 45"
  "4 train 75 45"
  "5 memory 60 60"
  "6 decode 90 20"
  "7 graph_breaks 40 50"
  "8 core 15 60"
  "9 pytest 0 10"
)
RESERVE=10 # seconds kept at the end: the summary and the archive
DEFAULT_BUDGET=540
if [ "$LIST" = 1 ]; then
  echo "budget $DEFAULT_BUDGET (dry 900) reserve $RESERVE"
  printf '%s\n' "${STAGES[@]}"
  exit 0
fi

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY=$VIRTUAL_ENV/bin/python
elif [ -x .venv/bin/python ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=$(command -v python3)
fi
VENDOR=${JPEGLM_VENDOR:-vendor}
WORK=$ROOT/build/gpu_check
PARTS=$WORK/parts # every stage file; archived into the output folder at the end
OUT=${JPEGLM_GPU_OUT:-gpu_out}
mkdir -p "$OUT" "$WORK" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -rf "$PARTS"
mkdir -p "$PARTS" || exit 2
# what earlier versions of this script left in the output folder, and our own two files
rm -f "$OUT"/[0-9]_*.md "$OUT"/[0-9]_*.json "$OUT"/stages.tsv "$OUT"/log.txt "$OUT"/core.log \
  "$OUT"/summary.md "$OUT"/gpu_check.tar.gz
LOG=$PARTS/log.txt
: >"$LOG"

if ! "$PY" -c "import torch" 2>>"$LOG"; then
  echo "gpu_check: $PY cannot import torch ($(tail -n 1 "$LOG"))" >&2
  exit 2
fi
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi sees a GPU but torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) has no CUDA (a CPU-only wheel, or a driver too old for it): install a CUDA build of torch, or run --dry" >&2
    exit 2
  fi
  echo "gpu_check: no CUDA device: dry run" >&2
  DRY=1
fi
DRYFLAG=()
if [ "$DRY" = 1 ]; then
  DRYFLAG=(--dry)
  # tiny shapes gain nothing from threads, and a busy CI machine loses a lot to oversubscription
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
# dry mode checks correctness, not speed: generous caps so that a busy CI machine (2 shared
# cores) cannot turn a slow stage into a FAIL
BUDGET=${JPEGLM_GPU_BUDGET:-$([ "$DRY" = 1 ] && echo 900 || echo "$DEFAULT_BUDGET")}
DRY_SLACK=${JPEGLM_DRY_SLACK:-4}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# -- the package: installed (wheel / editable), else this source checkout (PYTHONPATH=python;
# jpeglm.kernels then resolves to the top-level kernels/ folder)
if ! "$PY" -c "import jpeglm.model.model" 2>/dev/null; then
  export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
fi

# -- Liger-Kernel (GPU only; its wheel is pure Python) into a private folder, never into the env
if [ "$DRY" = 0 ] && ! "$PY" -c "import liger_kernel.transformers" 2>/dev/null; then
  wheels=("$VENDOR"/liger_kernel-*.whl)
  if [ -e "${wheels[0]}" ] &&
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" \
      "${wheels[-1]}" >>"$LOG" 2>&1; then
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$WORK/site"
  else
    echo "[gpu_check] Liger-Kernel not installed (no $VENDOR/liger_kernel-*.whl?)" >>"$LOG"
  fi
fi

# -- jpeglm._core: importable already, or built now from vendor/'s libjpeg-turbo .debs (in the
# background: only the pytest stage needs it; stage core joins the build)
build_core() {
  local prefix=$WORK/jpeg lib inc
  if ! "$PY" -c "import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then
    echo "no Python headers (Python.h) for $PY: install python3-dev (or pythonX.Y-dev)"
    return 1
  fi
  rm -rf "$prefix"
  mkdir -p "$prefix"
  local debs=("$VENDOR"/libjpeg62-turbo*.deb)
  if [ ! -e "${debs[0]}" ]; then
    echo "no $VENDOR/libjpeg62-turbo*.deb: run scripts/gpu_vendor.sh"
    return 1
  fi
  for deb in "${debs[@]}"; do dpkg -x "$deb" "$prefix" || return 1; done
  lib=$prefix/usr/lib/x86_64-linux-gnu
  inc=$prefix/usr/include
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  timeout 120 cmake -S "$ROOT" -B "$WORK/core" -DCMAKE_BUILD_TYPE=Release "${generator[@]}" \
    -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
    -DJPEG_INCLUDE_DIR="$inc" -DJPEG_LIBRARY="$lib/libjpeg.so" \
    -DCMAKE_CXX_FLAGS="-I$inc/x86_64-linux-gnu" -DCMAKE_BUILD_RPATH="$lib" || return 1
  timeout 240 cmake --build "$WORK/core" -j "$(nproc)" || return 1
  cp "$WORK"/core/_core*.so "${JPEGLM_CORE_DEST:-$ROOT/python/jpeglm}/" || return 1
  echo "built $(ls "$WORK"/core/_core*.so) against $lib"
}
CORE_PID=""
CORE_T0=$SECONDS
if [ -n "${JPEGLM_CORE_FORCE:-}" ] || ! "$PY" -c "import jpeglm._core" 2>/dev/null; then
  build_core >"$PARTS/core.log" 2>&1 &
  CORE_PID=$!
else
  echo "jpeglm._core imports already: nothing to build" >"$PARTS/core.log"
fi

# -- stages
FAILED=0
summarize() {
  "$PY" "$ROOT/benchmarks/gpu_check.py" summary --out "$PARTS" --to "$OUT/summary.md" \
    "${DRYFLAG[@]}" >/dev/null 2>>"$LOG" ||
    {
      echo "## GPU check (summary writer failed: stage lines only)"
      echo
      awk -F'\t' '{print "- STAGE " $1 " " $2 " " $3 " " $4 "s " $5}' "$PARTS/stages.tsv"
    } >"$OUT/summary.md"
}
# shellcheck disable=SC2329 # invoked by the EXIT trap
finish() {
  local rc=$?
  [ -n "$CORE_PID" ] && kill "$CORE_PID" 2>/dev/null
  summarize
  tar -czf "$OUT/.gpu_check.tar.gz.tmp" -C "$PARTS" . 2>>"$LOG" &&
    mv "$OUT/.gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"
  echo "summary: $OUT/summary.md (every stage file: $OUT/gpu_check.tar.gz)"
  if [ "$FAILED" = 1 ]; then exit 1; fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record() { # n name status seconds note
  printf 'STAGE %s %s %s %ss\n' "$1" "$2" "$3" "$4"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$PARTS/stages.tsv"
  [ "$3" = FAIL ] && FAILED=1
  summarize
}

stage_cap() { # n name GPU-cap dry-cap -> the seconds this stage may take now (0: none left)
  local cap=$3 left
  [ "$DRY" = 1 ] && cap=$(($4 * DRY_SLACK))
  left=$((BUDGET - RESERVE - SECONDS))
  [ "$cap" = 0 ] && cap=$left # the last stage: what is left
  [ "$left" -lt 10 ] && left=0
  echo $((cap < left ? cap : left))
}

run_stage() { # n name GPU-cap dry-cap
  local n=$1 name=$2 t start rc status note=""
  t=$(stage_cap "$@")
  if [ "$t" -lt 10 ]; then
    record "$n" "$name" SKIP 0 "not run: the ${BUDGET}s budget was spent"
    return
  fi
  echo "=== STAGE $n $name (cap ${t}s) ===" >>"$LOG"
  start=$SECONDS
  JPEGLM_STAGE_TIMEOUT=$t timeout -k 5 "$t" "$PY" "$ROOT/benchmarks/gpu_check.py" stage "$name" \
    --n "$n" --out "$PARTS" "${DRYFLAG[@]}" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=PASS ;;
    3) status=SKIP ;;
    124 | 137)
      status=FAIL
      note="killed at its ${t}s cap (what it had measured is kept)"
      ;;
    *) status=FAIL ;;
  esac
  record "$n" "$name" "$status" "$((SECONDS - start))" "$note"
}

join_core() { # n name GPU-cap dry-cap: wait for the background build of jpeglm._core
  local n=$1 t start status note
  t=$(stage_cap "$@")
  start=$SECONDS
  if [ -n "$CORE_PID" ]; then
    while kill -0 "$CORE_PID" 2>/dev/null && [ $((SECONDS - start)) -lt "$t" ]; do sleep 1; done
    if kill -0 "$CORE_PID" 2>/dev/null; then
      status=SKIP note="still building after $((SECONDS - CORE_T0))s (see core.log): the sampler tests are left out"
    else
      wait "$CORE_PID"
      core_rc=$?
      CORE_PID=""
      if [ "$core_rc" = 0 ] && "$PY" -c "import jpeglm._core" 2>>"$PARTS/core.log"; then
        status=PASS note="built from $VENDOR in $((SECONDS - CORE_T0))s (in the background)"
      else
        status=SKIP note="not built: $(grep -m1 -E '^no |rror' "$PARTS/core.log" | cut -c1-150)"
        note="${note%: } (core.log); the sampler tests are left out"
      fi
    fi
  else
    status=PASS note="already importable"
  fi
  {
    echo "### $n core"
    echo
    echo "jpeglm._core: $note."
    echo
    echo '```'
    tail -n 5 "$PARTS/core.log"
    echo '```'
  } >"$PARTS/${n}_core.md"
  record "$n" core "$status" "$((SECONDS - start))" "$note"
}

for spec in "${STAGES[@]}"; do
  # shellcheck disable=SC2086 # one spec: four words
  set -- $spec
  if [ "$2" = core ]; then join_core "$@"; else run_stage "$@"; fi
done
exit 0
