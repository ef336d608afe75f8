#!/usr/bin/env bash
# The main job: install what is missing, build, then run kvtier's demo (see README.md).
# Arguments go to `kvtier demo` (try --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/build.sh" --target kvtier
exec "$root/build/kvtier" demo "$@"
