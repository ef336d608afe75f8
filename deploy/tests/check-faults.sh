#!/usr/bin/env bash
# The deploy checks fail when they should: a copy of deploy/kubernetes with one fault of each
# kind they look for must make validate-schemas.mjs and check-config.mjs fail, each naming every
# fault. (A check that passed whatever it was given would otherwise look the same as one that
# found nothing wrong.)
#   check-faults.sh BUILD_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$1"
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
cp -r "$here/../kubernetes/." "$copy/"

# Schema faults: a misspelt field, a wrong type, an unknown kind, a selector and a port name that
# match nothing.
sed -i 's/^      terminationGracePeriodSeconds: 60/      terminationGracePeriodSecond: 60/' "$copy/base/kvtierd.yaml"
sed -i '0,/periodSeconds: 5$/s//periodSeconds: "5"/' "$copy/base/kvtierd.yaml"
printf 'apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: widget\n' >"$copy/base/widget.yaml"
sed -i 's/^  - kvtier-worker.yaml$/  - kvtier-worker.yaml\n  - widget.yaml/' "$copy/base/kustomization.yaml"
sed -i 's/targetPort: grpc$/targetPort: grpcc/' "$copy/base/kvtier-router.yaml"
sed -i '0,/app.kubernetes.io\/name: kvtier-router$/s//app.kubernetes.io\/name: kvtier-routr/' \
  "$copy/components/network-policy/network-policy.yaml"
# Configuration faults: a value kvtierd refuses, a router flag the router refuses, a membership
# name that is no Service, a /dev/shm smaller than the host tier.
sed -i 's/^  host_mib: 256$/  host_mib: 256\n  max_block_mib: 0/' "$copy/overlays/dev/kvtierd.site.yaml"
sed -i 's/^            - kvtierd:7700$/            - kvtierd-nodes:7700/' "$copy/base/kvtier-router.yaml"
sed -i 's/^            - 0.0.0.0:9790$/            - 0.0.0.0:9790\n            - --pool-mib\n            - lots/' \
  "$copy/overlays/dev/kvtier-worker.yaml"
sed -i 's/sizeLimit: 65Gi/sizeLimit: 64Gi/' "$copy/overlays/production/kvtierd.yaml"

expect() {  # expect NAME OUTPUT PATTERN...
  local name="$1" output="$2" missing=0
  shift 2
  for pattern in "$@"; do
    if ! grep -qF -- "$pattern" <<<"$output"; then
      echo "$name did not report: $pattern"
      missing=1
    fi
  done
  return $missing
}

status=0
if schemas="$(KVTIER_KUBERNETES_DIR="$copy" node "$here/validate-schemas.mjs" 2>&1)"; then
  echo "validate-schemas.mjs passed a broken tree"
  status=1
fi
expect validate-schemas.mjs "$schemas" \
  "terminationGracePeriodSecond: not a field of PodSpec" \
  "startupProbe/periodSeconds must be integer" \
  "example.com/v1 Widget is in neither schema package" \
  "targetPort grpcc is not a port of Deployment/kvtier-router" \
  "NetworkPolicy/kvtierd (ingress from): its selector matches no pod" || status=1
if config="$(KVTIER_KUBERNETES_DIR="$copy" node "$here/check-config.mjs" "$build" 2>&1)"; then
  echo "check-config.mjs passed a broken tree"
  status=1
fi
expect check-config.mjs "$config" \
  "store.max_block_mib" \
  "--nodes-dns kvtierd-nodes:7700 names no Service" \
  "kvtier-worker: --pool-mib" \
  "/dev/shm 64Gi is less than the host tier" || status=1
if [ $status -ne 0 ]; then
  echo "--- validate-schemas.mjs:"; echo "$schemas"
  echo "--- check-config.mjs:"; echo "$config"
  exit 1
fi
echo "validate-schemas.mjs and check-config.mjs found every fault put in a copy of deploy/kubernetes"
