#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every ctest test.
# Fast set only: scripts/run-tests.sh -LE slow   (arguments go to ctest)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure --timeout 600 -j 2 "$@"
