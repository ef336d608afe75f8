#!/usr/bin/env bash
# Runs one of deploy/tests' checks that need Node.js (ctest, label deploy): a .mjs with node, a
# .sh with bash. Exits 77, which ctest reports as skipped, with the reason, when a tool the check
# needs is missing; scripts/install-deps.sh installs them all (deploy/tests/install-tools.sh).
#   run.sh SCRIPT [ARGS...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
script="$1"
shift
if ! command -v node >/dev/null; then
  echo "SKIP: no node: scripts/install-deps.sh installs Node.js"
  exit 77
fi
installed="$here/node_modules/.package-lock.json"
if [ ! -f "$installed" ] || [ "$here/package-lock.json" -nt "$installed" ]; then
  echo "SKIP: deploy/tests/node_modules is missing or older than package-lock.json: scripts/install-deps.sh runs npm ci"
  exit 77
fi
if [ "$script" != check-prometheus.mjs ] && ! "${KUBECTL:-kubectl}" kustomize --help >/dev/null 2>&1; then
  echo "SKIP: no kubectl with kustomize: scripts/install-deps.sh installs it"
  exit 77
fi
case "$script" in
  *.sh) exec bash "$here/$script" "$@" ;;
  *) exec node "$here/$script" "$@" ;;
esac
