#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every ctest test.
# Fast set only: scripts/run-tests.sh -LE slow   (arguments go to ctest)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/build.sh"
# The whole suite includes the ASan suite and the fuzzers, whose clang tree takes minutes of CPU
# to build: build it at low priority while the other tests run (mostly waiting on daemons and
# disks), so that they find it built. Their own build step waits for this one.
if [ $# -eq 0 ]; then
  nice -n 10 bash "$root/scripts/build-sanitized.sh" "$root/build/asan" \
    >"$root/build/asan-prebuild.log" 2>&1 &
  prebuild=$!
  trap 'kill "$prebuild" 2>/dev/null || true' EXIT
fi
cd "$root/build"
ctest --output-on-failure --timeout 600 -j 2 "$@"
