#!/usr/bin/env bash
# kvtier replay on the shared synthetic trace, for N in {4, 8, 16} and C in {2,000, 6,000}: the
# router's targets hold in every case. Max/mean prefill load <= 1.15 for kvtier and cache-aware;
# hit rate >= 0.95 x (kvtier) and >= 0.98 x (cache-aware) one global LRU of N x C blocks; the best
# modeled TTFT p90 of all policies; routing keys moved on a join or leave <= 1.2 / N.
set -euo pipefail
kvtier="$1"
for n in 4 8 16; do
  for c in 2000 6000; do
    out="$("$kvtier" replay --nodes "$n" --capacity "$c" --json)"
    python3 - "$n" "$c" "$(echo "$out" | sed -n 's/^RESULT //p')" <<'PY'
import json, sys
n, c, r = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
policies = ["round_robin", "random", "hash_depth1", "hash_depth4", "kvtier", "cache_aware"]
g = r["global_lru_hit_rate"]
k, a = r["kvtier"], r["cache_aware"]
best_p90 = min(r[p]["ttft_p90_s"] for p in policies)
print(f"N={n:2} C={c}: kvtier {k['hit_rate'] / g:.3f}x load {k['max_mean_load']:.2f} "
      f"p90 {k['ttft_p90_s']:.2f}s | cache_aware {a['hit_rate'] / g:.3f}x load "
      f"{a['max_mean_load']:.2f} p90 {a['ttft_p90_s']:.2f}s | best p90 {best_p90:.2f}s | "
      f"moved {r['keys_moved_join']:.3f}/{r['keys_moved_leave']:.3f}")
assert r["nodes"] == n, r
assert k["max_mean_load"] <= 1.15 and a["max_mean_load"] <= 1.15, r
assert k["hit_rate"] >= 0.95 * g, r
assert a["hit_rate"] >= 0.98 * g, r
assert min(k["ttft_p90_s"], a["ttft_p90_s"]) <= best_p90, r
assert r["keys_moved_join"] <= 1.2 / n and r["keys_moved_leave"] <= 1.2 / n, r
PY
  done
done
