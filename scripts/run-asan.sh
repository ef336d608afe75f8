#!/usr/bin/env bash
# The test suite under AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer:
# builds the tests and every binary they run with clang -fsanitize=address,undefined into
# BUILD_DIR/asan (no benchmarks, no CUDA; ccache makes repeat builds quick) and runs ctest there.
# Daemons and helpers that tests start are the same sanitized binaries. Every sanitized process
# writes its report to BUILD_DIR/asan/sanitizer-logs/ (log_path), and any report there fails the
# run, whatever the test that started the process made of its exit.
# Suppressions (tests/lsan.supp, tests/ubsan.supp) cover only code that is not ours, each with
# its reason. Arguments after BUILD_DIR go to ctest (e.g. -R DaemonTest).
#   scripts/run-asan.sh [BUILD_DIR [CTEST_ARGS...]]     (default: build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(realpath -m "${1:-$root/build}")/asan"
shift || true
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
if [ ! -f "$build/CMakeCache.txt" ]; then
  # -O1: ASan's own advice, and the quickest to build; still inlines enough to run the tests in
  # their time limits.
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g -DNDEBUG" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g -DNDEBUG" \
    -DKVTIER_WITH_CUDA=OFF -DKVTIER_BENCHMARKS=OFF \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    "${launcher[@]}" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"

logs="$build/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"
supp() { [ -f "$root/tests/$1" ] && echo "suppressions=$root/tests/$1" || true; }
export ASAN_OPTIONS="log_path=$logs/asan detect_leaks=1 halt_on_error=1 print_stacktrace=1 \
detect_stack_use_after_return=1 check_initialization_order=1 ${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="$(supp lsan.supp) print_suppressions=0 ${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="log_path=$logs/ubsan halt_on_error=1 print_stacktrace=1 $(supp ubsan.supp) \
${UBSAN_OPTIONS:-}"

# Left out: the checks that have a build of their own or would recurse (asan, tsan, lint, fuzz);
# load_test, whose bound on the daemon's RSS (host tier + 256 MiB) cannot hold with ASan's shadow
# memory and quarantine (a 15 s run here peaked at 727 MiB against 512, with no sanitizer report);
# cluster_smoke, which runs the binaries in build/ (local-cluster.sh), not these.
rc=0
(cd "$build" && ctest --output-on-failure --timeout 900 -j 2 -LE 'asan|tsan|lint|fuzz' \
  -E '^(load_test|cluster_smoke)$' "$@") || rc=$?

reports=("$logs"/*)
if [ -e "${reports[0]}" ]; then
  echo "run-asan: ${#reports[@]} sanitizer report(s) in $logs:"
  for r in "${reports[@]}"; do
    echo "=== $r"
    cat "$r"
  done
  rc=1
fi
exit "$rc"
