#!/usr/bin/env bash
# Run each libFuzzer target for SECONDS: fuzz/run.sh SECONDS target...
# Working corpora grow in build/fuzz/corpus/<target> (the committed seeds in fuzz/corpus/<target>
# are read, never written); crashes land in build/fuzz/crashes/. Prints one summary line per
# target and exits 1 when any target crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=$1
shift
dir=build/fuzz
mkdir -p "$dir/crashes" "$dir/logs"
status=0
summary=()
for t in "$@"; do
  mkdir -p "$dir/corpus/$t" "fuzz/corpus/$t"
  log="$dir/logs/$t.log"
  case $t in
    scan_grammar|token_grammar) max_len=1024 ;;  # 16x16 / 32x32 streams: ~100-300 bytes
    bpe|bpe_train) max_len=4096 ;;  # work grows with every byte
    *) max_len=65536 ;;
  esac
  before=$(find "$dir/crashes" -name "$t-*" | wc -l)
  # -rss_limit_mb: a decode may legitimately allocate a large image; 2.5 GB caps it.
  "$dir/fuzz_$t" "$dir/corpus/$t" "fuzz/corpus/$t" -max_total_time="$seconds" -timeout=20 \
    -rss_limit_mb=2560 -max_len=$max_len -print_final_stats=1 \
    -artifact_prefix="$dir/crashes/$t-" >"$log" 2>&1
  rc=$?
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  speed=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+')
  after=$(find "$dir/crashes" -name "$t-*" | wc -l)
  crashes=$((after - before))
  line=$(printf '%-16s runs=%-10s exec/s=%-7s cov=%-6s crashes=%s' "$t" "${runs:-?}" \
    "${speed:-?}" "${cov:-?}" "$crashes")
  [ "$rc" -ne 0 ] && { line="$line  (exit $rc, see $log)"; status=1; }
  echo "$line"
  summary+=("$line")
done
echo "---- fuzz summary (${seconds}s per target) ----"
printf '%s\n' "${summary[@]}"
ls "$dir/crashes" 2>/dev/null | sed 's/^/crash: /'
exit $status
