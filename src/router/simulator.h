#pragma once
// Trace replay through simulated nodes, with the router's real code: what `kvtier replay` runs.
//
// Each node has a prefix cache of `capacity` blocks (LRU; a block hits only when it and every
// earlier block of its request are cached, as a KV cache reuses only whole prefixes) and
// prefills missed blocks at `prefill_rate` blocks per second from a FIFO queue, so in-flight
// work (the router's load signal) and a time-to-first-token exist. Time is the trace's.
//
// With several router replicas (SimOptions::routers), requests go to them round robin; each has
// its own popularity sketch, placements and load view (the prefill work of the requests it
// routed), and learns the others' decisions (work and placements) SimOptions::sync_lag_s late,
// as kvtier-router's replicas do through their peers' Sync streams. In cache-aware mode all of
// them read one index of which node holds which block, exact but late: a block enters it when
// the prefill that computed it has finished.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/block_key.h"
#include "router/router.h"

namespace kvtier::router {

struct TraceRequest {
  double arrival_s = 0;
  std::vector<BlockKey> chain;  // the prompt's block keys, block 0 first
};

// A Mooncake-format trace (one JSON object a line: timestamp in ms, hash_ids). Trace block ids
// become keys {0, id + 1}. `max_requests` 0: all. INVALID_ARGUMENT names the bad line.
absl::StatusOr<std::vector<TraceRequest>> LoadMooncakeTrace(const std::string& path,
                                                            size_t max_requests = 0);

enum class Policy { kRoundRobin, kRandom, kHashDepth1, kHashDepth4, kKvtier, kCacheAware };
const char* PolicyName(Policy p);  // round_robin, random, hash_depth1, ...
inline constexpr Policy kAllPolicies[] = {Policy::kRoundRobin, Policy::kRandom,
                                          Policy::kHashDepth1, Policy::kHashDepth4,
                                          Policy::kKvtier,     Policy::kCacheAware};

struct SimOptions {
  size_t nodes = 8;
  size_t capacity = 2000;     // blocks per node
  double prefill_rate = 40;   // blocks per second per node
  RouterOptions router;
  uint64_t seed = 1;          // for the random policy
  size_t routers = 1;         // router replicas; requests spread over them round robin
  // Replicas share each decision's prefill work and placement (kvtier-router --peers) this
  // long after it was made; < 0: they do not share.
  double sync_lag_s = 0.05;
};

// Fraction of routing keys whose preferred node (Router::Preferred: remembered, else the ring
// home) changes when a node joins or the last one leaves.
struct KeysMoved {
  double join = 0, leave = 0;
};

struct PolicyResult {
  double hit_rate = 0;        // hit blocks / all blocks
  double max_mean_load = 0;   // max over nodes of missed (prefilled) blocks / their mean
  double ttft_p50_s = 0, ttft_p90_s = 0;
  std::vector<uint64_t> prefilled;  // missed blocks per node
  std::vector<uint64_t> hits;       // hit blocks per node
  KeysMoved keys_moved;  // kvtier policy: over the routing keys it used, after the replay
};

PolicyResult Simulate(const std::vector<TraceRequest>& trace, Policy policy,
                      const SimOptions& options);

// The hit rate of one LRU of `capacity` blocks that sees every request (a perfect pool).
double GlobalLruHitRate(const std::vector<TraceRequest>& trace, size_t capacity);

// Over `keys`, with `router`'s ring and placements.
KeysMoved MeasureKeysMoved(const Router& router, const std::vector<BlockKey>& keys);

// Node names used by the simulation ("node-0", ...).
std::vector<RingNode> SimNodes(size_t n);

}  // namespace kvtier::router
