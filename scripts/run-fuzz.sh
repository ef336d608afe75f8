#!/usr/bin/env bash
# The libFuzzer targets of fuzz/ (fuzz/README.md), each for a bounded time on a copy of its seed
# corpus: builds them in the sanitized tree BUILD_DIR/asan (scripts/build-sanitized.sh: clang,
# ASan, UBSan, libFuzzer's coverage), runs each for SECONDS (-max_total_time) and prints, per
# target, the executions, exec/s, coverage (cov: and ft: of libFuzzer's last line) and the
# crashes; as many targets at once as there are cores. Fails on any crash, leak, timeout or
# out-of-memory; the input that did it is kept in BUILD_DIR/asan/artifacts/. The repository's
# corpus is never written to.
#   scripts/run-fuzz.sh [SECONDS] [BUILD_DIR]     (defaults: 30, build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-30}"
build="$(realpath -m "${2:-$root/build}")/asan"
targets=(put_stream_fuzzer key_layout_fuzzer config_fuzzer token_file_fuzzer request_fuzzer
         kv_events_fuzzer)
bash "$root/scripts/build-sanitized.sh" "$build" fuzz_targets

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
artifacts="$build/artifacts"
mkdir -p "$artifacts"
export ASAN_OPTIONS="detect_leaks=1 abort_on_error=0 ${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}"
# One target per core at a time (each fuzzer is one process, one thread).
run() {
  local t="$1"
  mkdir -p "$work/$t/corpus" "$work/$t/found"
  cp -R "$root/fuzz/corpus/$t/." "$work/$t/corpus/"
  # New inputs go to found/ (listed second, so it is the one written); the seeds stay as they are.
  local rc=0
  "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$work/$t/" "$work/$t/found" "$work/$t/corpus" \
    >"$work/$t/log" 2>&1 || rc=$?
  echo "$rc" >"$work/$t/rc"
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n || true; done
  run "$t" &
done
wait
failed=()
printf '%-20s %12s %9s %7s %8s %8s\n' target executions exec/s cov ft crashes
for t in "${targets[@]}"; do
  rc="$(cat "$work/$t/rc")"
  stat() { sed -n "s/^stat::$1: *//p" "$work/$t/log" | tail -1; }
  last="$(grep -E "^#[0-9]+" "$work/$t/log" | tail -1 || true)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  crashes=0
  for f in "$work/$t"/crash-* "$work/$t"/leak-* "$work/$t"/timeout-* "$work/$t"/oom-*; do
    [ -e "$f" ] || continue
    crashes=$((crashes + 1))
    cp "$f" "$artifacts/$t-$(basename "$f")"
  done
  printf '%-20s %12s %9s %7s %8s %8s\n' "$t" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "${cov:-?}" "${ft:-?}" "$crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed+=("$t")
    echo "--- $t: exit status $rc; the end of its log (inputs kept in $artifacts):"
    tail -60 "$work/$t/log"
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "run-fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "run-fuzz: ${#targets[@]} targets, ${seconds} s each, no crash, leak or timeout"
