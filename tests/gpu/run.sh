#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and driver (and no build tools): run from the
# repository root after building here (scripts/build.sh --target gpu_attention_check
# --target bench_attention) and copying build/tests/gpu_attention_check and
# build/bench/bench_attention there (both link the CUDA runtime statically).
#
#   tests/gpu/run.sh [BUILD_DIR]      default BUILD_DIR: build
#
# Runs the CUDA kernels against the reference on the awkward shapes, then bench_attention
# --device cuda --quick; prints a summary. Under 8 minutes on an H100 or H200. Logs go to $OUT
# (the device tool's output folder) when it is set, else the current directory.
set -uo pipefail
build="${1:-build}"
logs="${OUT:-.}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout 300 "$build/tests/gpu_attention_check" > "$logs/gpu_check.log" 2>&1
check=$?
grep -E "^(FAIL|gpu_attention_check)" "$logs/gpu_check.log" | tail -40
timeout 150 "$build/bench/bench_attention" --device cuda --quick > "$logs/gpu_bench.log" 2>&1
bench=$?
cat "$logs/gpu_bench.log"
echo
failures=$(grep -c '^FAIL' "$logs/gpu_check.log")
echo "summary: check exit $check ($failures failures), bench exit $bench," \
  "$(( $(date +%s) - start )) s"
[ "$check" = 0 ] && [ "$bench" = 0 ]
