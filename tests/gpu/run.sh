#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and driver but no build tools: run from the
# repository root with binaries built here (static cudart, SASS for sm_90):
#
#   scripts/build.sh --target gpu_attention_check --target bench_attention \
#     --target cache_test --target bench_worker      (bench_worker brings kvtierd, kvtier-worker)
#   tests/gpu/run.sh [BUILD_DIR]                      default BUILD_DIR: build
#
# Steps, each under its own timeout, the whole under 4 minutes:
#   device   nvidia-smi: GPU name, driver version, memory
#   check    gpu_attention_check: the CUDA kernels against the reference on the awkward shapes
#   bench    bench_attention --device cuda --quick
#   hbm      cache_test's HBM-tier tests (BlockStoreHbm.*: the real CUDA arena where a GPU is;
#            HbmStore.*: the tier's paths over the host stand-in)
#   worker   bench_worker --quick: kvtierd and kvtier-worker on loopback; the worker picks the
#            GPU by itself (device "auto"; bench_worker has no device option), so the step fails
#            unless its RESULT line names a device other than "cpu"
# A missing binary, or one whose shared libraries the machine lacks, is a failed step. Exits
# non-zero when any step fails; prints a summary either way. Logs go to $OUT (the device tool's
# output folder) when it is set, else the current directory.
#
# bench_worker starts kvtierd and kvtier-worker from the build directory compiled into it. When
# the build directory has moved (copied to the GPU machine), set KVTIER_BUILT_AT to the path it
# was built at (for example /work/wt-gpu/build): a symbolic link is made there if it is free.
set -uo pipefail
build="${1:-build}"
logs="${OUT:-.}"
mkdir -p "$logs"
start=$(date +%s)
summary=()
failed=0

# step NAME TIMEOUT_S BINARY ARGS...: runs BINARY with a timeout, its output to $logs/NAME.log.
step() {
  local name="$1" limit="$2" bin="$3"
  shift 3
  local t0 rc
  t0=$(date +%s)
  if [ ! -x "$bin" ]; then
    echo "$name: FAILED: $bin is missing (build it here and copy it with the build directory)" |
      tee "$logs/$name.log"
    rc=127
  elif command -v ldd >/dev/null && ldd "$bin" 2>/dev/null | grep -q "not found"; then
    { echo "$name: FAILED: $bin lacks shared libraries on this machine:"
      ldd "$bin" | grep "not found"; } | tee "$logs/$name.log"
    rc=127
  else
    timeout --kill-after=5 "$limit" "$bin" "$@" > "$logs/$name.log" 2>&1
    rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "$name: FAILED: over its ${limit} s limit"
  fi
  summary+=("$(printf '%-7s exit %3s  %4s s' "$name" "$rc" "$(( $(date +%s) - t0 ))")")
  [ "$rc" = 0 ] || failed=1
  return "$rc"
}

echo "== device"
if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
  echo "device: FAILED: nvidia-smi found no GPU"
  summary+=("device  exit   1")
  failed=1
fi

echo "== check: gpu_attention_check"
step check 80 "$build/tests/gpu_attention_check"
grep -E "^(FAIL|gpu_attention_check)" "$logs/check.log" | tail -40

echo "== bench: bench_attention --device cuda --quick"
step bench 60 "$build/bench/bench_attention" --device cuda --quick
cat "$logs/bench.log"

echo "== hbm: cache_test --gtest_filter=BlockStoreHbm.*:HbmStore.*"
step hbm 30 "$build/src/cache/cache_test" --gtest_filter='BlockStoreHbm.*:HbmStore.*'
grep -E "^\[ +(OK|FAILED|PASSED) +\]|Failure" "$logs/hbm.log" | tail -20

echo "== worker: bench_worker --quick"
if [ -n "${KVTIER_BUILT_AT:-}" ] && [ ! -e "$KVTIER_BUILT_AT" ]; then
  mkdir -p "$(dirname "$KVTIER_BUILT_AT")" &&
    ln -s "$(cd "$build" && pwd)" "$KVTIER_BUILT_AT" ||
    echo "worker: could not link $KVTIER_BUILT_AT to $build"
fi
if step worker 60 "$build/bench/bench_worker" --quick; then
  device=$(grep -o '"device": *"[^"]*"' "$logs/worker.log" | tail -1)
  echo "worker computed on: ${device:-nothing (no RESULT line)}"
  if [ -z "$device" ] || echo "$device" | grep -q '"cpu"'; then
    echo "worker: FAILED: the worker did not compute on the GPU"
    summary[-1]="${summary[-1]}  (not on the GPU)"
    failed=1
  fi
fi
grep -q "^worker: FAILED" "$logs/worker.log" || tail -5 "$logs/worker.log"

echo
echo "== summary ($(( $(date +%s) - start )) s)"
printf '%s\n' "${summary[@]}"
failures=$(grep -c '^FAIL' "$logs/check.log" 2>/dev/null)
echo "gpu_attention_check failures: ${failures:-0}"
if [ "$failed" = 0 ]; then echo "all steps passed"; else echo "FAILED"; fi
exit "$failed"
