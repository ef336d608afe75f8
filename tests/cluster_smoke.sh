#!/usr/bin/env bash
# A local cluster (scripts/local-cluster.sh) with a trace replayed through it: the router, three
# daemons, the worker and `kvtier replay --router --worker` working together, and the cluster
# stopped cleanly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
trap '"$root/scripts/local-cluster.sh" stop' EXIT
"$root/scripts/local-cluster.sh" start 3 4 > /dev/null
source "$root/build/cluster/cluster.env"
out="$("$root/build/kvtier" replay --router "$KVTIER_ROUTER" --capacity 1024 --requests 600 \
  --worker "$KVTIER_WORKER" --json)"
echo "$out"
result="$(echo "$out" | sed -n 's/^RESULT //p')"
python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["nodes"] == 3, r
assert 0.02 < r["cluster_hit_rate"] <= 1, r
# The real cluster and the simulation of it agree closely.
assert abs(r["cluster_hit_rate"] - r["simulated_hit_rate"]) < 0.05, r
# Attention over replayed prefixes: dense and head-sparse, each twice, for up to 3 prefixes.
assert r["attention_requests"] >= 4, r
assert 0.3 < r["attention_sparse_bytes_saved"] < 1, r
PY
"$root/scripts/local-cluster.sh" stop
! "$root/scripts/local-cluster.sh" status > /dev/null
