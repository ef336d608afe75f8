#!/usr/bin/env bash
# The block store's concurrency tests under ThreadSanitizer: builds cache_test with
# -fsanitize=thread into BUILD_DIR/tsan (ccache makes repeat builds quick) and runs the tests
# whose names say Concurren or Mover. Clang, not GCC: GCC merges neighbouring bit-field tests into
# one wider load that overlaps an entry's reader count, which TSan then reports as a race.
# Suppressions (tests/tsan.supp) cover only code that is not instrumented, each with its reason.
#   scripts/run-tsan.sh [BUILD_DIR]     (default: build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}/tsan"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVTIER_WITH_CUDA=OFF \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread \
    "${launcher[@]}" >/dev/null
fi
cmake --build "$build" --target cache_test -j "$(nproc)"
export TSAN_OPTIONS="suppressions=$root/tests/tsan.supp halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
exec "$build/src/cache/cache_test" --gtest_filter='*Concurren*:*Mover*' --gtest_brief=1
