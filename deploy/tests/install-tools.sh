#!/usr/bin/env bash
# What deploy/'s ctest checks need beyond Debian's packages (scripts/install-deps.sh runs this):
#   - kubectl with kustomize, where there is none: Debian 12 has no package, so the upstream
#     static binary of a pinned release, checked against its SHA-256, into /usr/local/bin;
#   - the Node.js packages of deploy/tests/package-lock.json (`npm ci`), when node_modules is
#     missing or older than the lock file.
# Neither is fatal when the network is not there: the checks then report themselves skipped and
# say why.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kubectl_version=v1.33.0
kubectl_sha256_amd64=9efe8d3facb23e1618cba36fb1c4e15ac9dc3ed5a2c2e18109e4a66b2bac12dc

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! kubectl kustomize --help >/dev/null 2>&1; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "install-tools: no kubectl here, and only its x86_64 checksum is pinned: install kubectl $kubectl_version by hand" >&2
  else
    tmp="$(mktemp)"
    url="https://dl.k8s.io/release/$kubectl_version/bin/linux/amd64/kubectl"
    echo "install-tools: installing kubectl $kubectl_version from $url"
    if curl -fsSL --retry 3 -o "$tmp" "$url" &&
       echo "$kubectl_sha256_amd64  $tmp" | sha256sum --check --status; then
      $sudo install -m 0755 "$tmp" /usr/local/bin/kubectl
    else
      echo "install-tools: could not fetch kubectl (or its checksum did not match): the deploy checks will be skipped" >&2
    fi
    rm -f "$tmp"
  fi
fi

if command -v npm >/dev/null; then
  lock="$here/package-lock.json"
  installed="$here/node_modules/.package-lock.json"
  if [ ! -f "$installed" ] || [ "$lock" -nt "$installed" ]; then
    echo "install-tools: npm ci in $here"
    if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error); then
      echo "install-tools: npm ci failed: the deploy schema check will be skipped" >&2
    fi
  fi
else
  echo "install-tools: no npm: the deploy schema check will be skipped" >&2
fi
exit 0
