#!/usr/bin/env bash
# The main job: install what is missing, build, start a local kvtier cluster (4 kvtierd, a
# kvtier-router and a kvtier-worker on loopback), replay the shared Mooncake trace through it,
# print hit rates per node and tier and the router's balance, ask the worker for decode attention
# over a few replayed prefixes (latency, bytes fetched and saved), print every /metrics endpoint,
# then stop the cluster.
#
#   scripts/run-demo.sh [NODES] [CAPACITY_BLOCKS] [ROUTER_FLAG...]
#       defaults: 4 nodes of 2,048 blocks (4 KiB); e.g. `scripts/run-demo.sh 8 2048 --cache-aware`
#
# `build/kvtier demo` (one tiered store with real KV bytes, restarted and verified) and
# `build/kvtier replay` (the routing policies simulated) are the other demos.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nodes="${1:-4}"
capacity="${2:-2048}"
shift $(( $# < 2 ? $# : 2 ))
block_bytes=4096
bash "$root/scripts/build.sh" --target kvtier --target kvtierd --target kvtier-router \
  --target kvtier-worker
host_mib=$(( (capacity * block_bytes + (1 << 20) - 1) >> 20 ))
trap '"$root/scripts/local-cluster.sh" stop' EXIT
"$root/scripts/local-cluster.sh" start "$nodes" "$host_mib" "$@" > /dev/null
# shellcheck disable=SC1091
source "$root/build/cluster/cluster.env"
echo "local cluster: $nodes kvtierd nodes ($host_mib MiB host tier each), kvtier-router at" \
  "$KVTIER_ROUTER, kvtier-worker at $KVTIER_WORKER"
echo "status page: $KVTIER_STATUS_PAGE"
"$root/build/kvtier" replay --router "$KVTIER_ROUTER" --capacity "$capacity" \
  --block-bytes "$block_bytes" --worker "$KVTIER_WORKER"
echo
echo "/metrics endpoints:"
echo "  kvtier-router  http://$KVTIER_ROUTER_METRICS/metrics"
echo "  kvtier-worker  http://$KVTIER_WORKER_METRICS/metrics"
IFS=, read -ra node_addrs <<< "$KVTIER_NODES"
IFS=, read -ra node_metrics <<< "$KVTIER_NODE_METRICS"
for i in "${!node_addrs[@]}"; do
  echo "  kvtierd ${node_addrs[$i]}  http://${node_metrics[$i]}/metrics"
done
echo "(the cluster stops when this script ends; scripts/local-cluster.sh starts one that stays)"
