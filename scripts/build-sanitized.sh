#!/usr/bin/env bash
# The sanitized tree that the ASan suite (run-asan.sh) and the fuzz targets (run-fuzz.sh) share:
# clang, -fsanitize=address,undefined on everything and libFuzzer's coverage where the fuzzers
# look (KVTIER_FUZZ=ON), -O0 with line tables only (half the build time of -O1, readable stacks),
# no benchmarks, no CUDA. One tree for both keeps CI to one sanitized build; ccache makes repeat
# builds quick.
#   scripts/build-sanitized.sh BUILD_DIR [TARGET...]     (default: every target)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$1"
shift
# One build of the tree at a time (run-tests.sh may have started one in the background).
mkdir -p "$build"
exec 9>"$build/.build-lock"
flock 9
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O0 -gline-tables-only -DNDEBUG" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O0 -gline-tables-only -DNDEBUG" \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVTIER_FUZZ=ON \
    -DKVTIER_WITH_CUDA=OFF -DKVTIER_BENCHMARKS=OFF "${launcher[@]}" >/dev/null
fi
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" -j "$(nproc)" "${targets[@]}"
