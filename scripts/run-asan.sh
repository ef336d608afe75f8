#!/usr/bin/env bash
# The test suite under AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer:
# builds the tests and every binary they run with clang -fsanitize=address,undefined into
# BUILD_DIR/asan (scripts/build-sanitized.sh; the fuzz targets share that tree) and runs ctest
# there.
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
bash "$root/scripts/build-sanitized.sh" "$build"

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
# cluster_smoke, which runs the binaries in build/ (local-cluster.sh), not these; replay_targets
# and demo_smoke, minutes of trace replay through code that the other tests run under ASan too;
# deploy/'s checks (label deploy), which check deployment files, not memory; the Prometheus
# and browser checks (labels prometheus, browser), which check rules and pages, and run the
# binaries in build/ through local-cluster.sh.
rc=0
(cd "$build" && ctest --output-on-failure --timeout 900 -j 2 \
  -LE 'asan|tsan|lint|fuzz|deploy|prometheus|browser' \
  -E '^(load_test|cluster_smoke|replay_targets|demo_smoke)$' "$@") || rc=$?

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
