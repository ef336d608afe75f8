#!/usr/bin/env bash
# The runtime image installs exactly the packages the built binaries need: the list between the
# `# runtime-packages: begin` and `end` lines of deploy/image/Dockerfile must equal what
# deploy/image/runtime-packages.sh derives from BUILD_DIR's binaries.
#   check-image-packages.sh BUILD_DIR
set -euo pipefail
image="$(cd "$(dirname "${BASH_SOURCE[0]}")/../image" && pwd)"
derived="$(bash "$image/runtime-packages.sh" "$1")"
listed="$(sed -n '/^# runtime-packages: begin$/,/^# runtime-packages: end$/p' "$image/Dockerfile" |
          sed -n 's/^[[:space:]]*\([a-z0-9][a-z0-9.+-]*\)[[:space:]]*\\$/\1/p' | sort)"
if [ -z "$listed" ]; then
  echo "deploy/image/Dockerfile: no package between '# runtime-packages: begin' and '# runtime-packages: end'"
  exit 1
fi
missing="$(comm -23 <(echo "$derived") <(echo "$listed"))"
extra="$(comm -13 <(echo "$derived") <(echo "$listed"))"
for p in $missing; do echo "deploy/image/Dockerfile misses $p (the binaries in $1 link a library of it)"; done
for p in $extra; do echo "deploy/image/Dockerfile installs $p, which no binary in $1 needs"; done
[ -z "$missing$extra" ] || exit 1
echo "deploy/image/Dockerfile installs the $(echo "$listed" | wc -l) packages the binaries need"
