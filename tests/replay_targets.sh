#!/usr/bin/env bash
# kvtier replay on the shared synthetic trace (N in {4, 8, 16}, C in {2,000, 6,000}) and on
# variants of traffic the router was not tuned on (`kvtier gen-trace`: a block shared by every
# request, timestamps x0.5 and x2, a burst, multi-turn sessions under Zipf-popular system prompts
# with and without a shared first block; N in {8, 16}). In every case, for kvtier and
# cache-aware: max/mean prefill load <= 1.15, hit rate >= 0.98 x one global LRU of N x C blocks,
# the best modeled TTFT p90 of all policies; with three router replicas that sync (--peers, 50 ms
# late), both modes keep >= 0.97 x one router's hit rate at max/mean <= 1.15. On the shared
# trace, routing keys moved on a join or leave <= 1.2 / N.
set -euo pipefail
kvtier="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$kvtier" gen-trace --shared-first --out "$dir/shared-first.jsonl" >/dev/null
"$kvtier" gen-trace --time-scale 0.5 --out "$dir/faster.jsonl" >/dev/null
"$kvtier" gen-trace --time-scale 2 --out "$dir/slower.jsonl" >/dev/null
"$kvtier" gen-trace --burst 8 --out "$dir/burst.jsonl" >/dev/null
"$kvtier" gen-trace --kind sessions --seed 1 --out "$dir/sessions.jsonl" >/dev/null
"$kvtier" gen-trace --kind sessions --seed 2 --shared-first --out "$dir/sessions-shared-first.jsonl" >/dev/null

check() {  # trace-name N C replay-arguments...
  local name="$1" n="$2" c="$3"
  shift 3
  local out
  out="$("$kvtier" replay --nodes "$n" --capacity "$c" --routers 3 --json "$@")"
  python3 - "$name" "$n" "$c" "$(echo "$out" | sed -n 's/^RESULT //p')" <<'PY'
import json, sys
name, n, c, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
policies = ["round_robin", "random", "hash_depth1", "hash_depth4", "kvtier", "cache_aware"]
g = r["global_lru_hit_rate"]
k, a = r["kvtier"], r["cache_aware"]
best_p90 = min(r[p]["ttft_p90_s"] for p in policies)
print(f"{name:22} N={n:2} C={c}: kvtier {k['hit_rate'] / g:.3f}x load {k['max_mean_load']:.2f} "
      f"p90 {k['ttft_p90_s']:.2f}s | cache_aware {a['hit_rate'] / g:.3f}x load "
      f"{a['max_mean_load']:.2f} p90 {a['ttft_p90_s']:.2f}s | best p90 {best_p90:.2f}s | "
      f"x3 routers: kvtier {k['hit_rate_r3'] / k['hit_rate']:.3f} load {k['max_mean_load_r3']:.2f}, "
      f"cache_aware {a['hit_rate_r3'] / a['hit_rate']:.3f} load {a['max_mean_load_r3']:.2f} | "
      f"moved {r['keys_moved_join']:.3f}/{r['keys_moved_leave']:.3f}")
assert r["nodes"] == n and r["routers"] == 3, r
max_load = 1.15
for p in (k, a):
    assert p["max_mean_load"] <= max_load, r
    assert p["hit_rate"] >= 0.98 * g, r
assert min(k["ttft_p90_s"], a["ttft_p90_s"]) <= best_p90, r
for p in (k, a):
    assert p["hit_rate_r3"] >= 0.97 * p["hit_rate"] and p["max_mean_load_r3"] <= max_load, r
if name == "shared trace":
    assert r["keys_moved_join"] <= 1.2 / n and r["keys_moved_leave"] <= 1.2 / n, r
PY
}

for n in 4 8 16; do
  for c in 2000 6000; do check "shared trace" "$n" "$c"; done
done
for v in shared-first faster slower burst sessions sessions-shared-first; do
  for n in 8 16; do
    for c in 2000 6000; do check "$v" "$n" "$c" --trace "$dir/$v.jsonl"; done
  done
done
