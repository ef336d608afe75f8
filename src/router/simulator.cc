#include "router/simulator.h"

#include <algorithm>
#include <deque>
#include <fstream>
#include <list>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace kvtier::router {
namespace {

// A prefix cache of `capacity` blocks with LRU replacement. Each block also records when the
// prefill that computed it finished: from then on the node's block events have put it in the
// cache-aware index.
class PrefixLru {
 public:
  explicit PrefixLru(size_t capacity) : capacity_(capacity) {}

  // Leading blocks of `chain` that are cached, without touching them.
  size_t Peek(std::span<const BlockKey> chain) const {
    size_t n = 0;
    while (n < chain.size() && index_.contains(chain[n])) ++n;
    return n;
  }
  // Leading blocks of `chain` that the index shows at time `now` (stored by then).
  size_t Indexed(std::span<const BlockKey> chain, double now) const {
    size_t n = 0;
    for (; n < chain.size(); ++n) {
      auto it = index_.find(chain[n]);
      if (it == index_.end() || it->second->stored_s > now) break;
    }
    return n;
  }
  // Leading hits; then every block of the chain is cached, the first most recent (so that a
  // prefix's tail goes before its head). Blocks added now are stored at `stored_s`.
  size_t Access(std::span<const BlockKey> chain, double stored_s = 0) {
    const size_t hits = Peek(chain);
    for (size_t i = chain.size(); i-- > 0;) {
      auto it = index_.find(chain[i]);
      if (it != index_.end()) {
        order_.splice(order_.begin(), order_, it->second);
      } else {
        order_.push_front(Block{chain[i], stored_s});
        index_[chain[i]] = order_.begin();
        if (order_.size() > capacity_) {
          index_.erase(order_.back().key);
          order_.pop_back();
        }
      }
    }
    return hits;
  }

 private:
  struct Block {
    BlockKey key;
    double stored_s;
  };
  size_t capacity_;
  std::list<Block> order_;
  absl::flat_hash_map<BlockKey, std::list<Block>::iterator> index_;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

}  // namespace

const char* PolicyName(Policy p) {
  switch (p) {
    case Policy::kRoundRobin:
      return "round_robin";
    case Policy::kRandom:
      return "random";
    case Policy::kHashDepth1:
      return "hash_depth1";
    case Policy::kHashDepth4:
      return "hash_depth4";
    case Policy::kKvtier:
      return "kvtier";
    case Policy::kCacheAware:
      return "cache_aware";
  }
  return "?";
}

std::vector<RingNode> SimNodes(size_t n) {
  std::vector<RingNode> nodes;
  for (size_t i = 0; i < n; ++i) nodes.push_back({absl::StrCat("node-", i), 1.0});
  return nodes;
}

absl::StatusOr<std::vector<TraceRequest>> LoadMooncakeTrace(const std::string& path,
                                                            size_t max_requests) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("trace: cannot open ", path));
  std::vector<TraceRequest> out;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("timestamp") || !j.contains("hash_ids") ||
        !j["hash_ids"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trace ", path, " line ", n, ": not {timestamp, hash_ids, ...}"));
    }
    TraceRequest r;
    r.arrival_s = j["timestamp"].get<double>() / 1000.0;
    for (const auto& id : j["hash_ids"]) r.chain.push_back(BlockKey{0, id.get<uint64_t>() + 1});
    out.push_back(std::move(r));
    if (max_requests != 0 && out.size() == max_requests) break;
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("trace ", path, " is empty"));
  return out;
}

PolicyResult Simulate(const std::vector<TraceRequest>& trace, Policy policy,
                      const SimOptions& o) {
  const size_t n = o.nodes;
  std::vector<PrefixLru> caches(n, PrefixLru(o.capacity));
  std::vector<double> busy_until(n, 0), loads(n, 0);
  PolicyResult r;
  r.prefilled.assign(n, 0);
  r.hits.assign(n, 0);
  // Router replicas, requests spread round robin; each sees the work it routed itself
  // (frontends report prefill to the replica that routed them) and, when they sync, the
  // others' work and placements, late.
  const size_t replicas = std::max<size_t>(o.routers, 1);
  std::vector<Router> routers(replicas, Router(SimNodes(n), o.router));
  std::vector<std::vector<uint64_t>> seen(replicas, std::vector<uint64_t>(n, 0));
  std::mt19937_64 rng(o.seed);
  absl::flat_hash_set<BlockKey> routing_keys;
  std::vector<double> ttft;
  ttft.reserve(trace.size());
  std::vector<size_t> cached(n);
  uint64_t all_blocks = 0, hit_blocks = 0;
  size_t next_rr = 0, next_replica = 0;
  // Replica sync: a routing decision (its prefill work, the keys it counted in the popularity
  // sketch, and the routing key's placement when it made or moved one) reaches the other
  // replicas sync_lag_s later.
  struct Synced {
    double at;
    size_t from;
    BlockKey key;
    int node;
    bool placed;
    uint64_t missed;
    std::vector<BlockKey> counted;  // popularity sketch
  };
  std::deque<Synced> synced;
  for (const TraceRequest& req : trace) {
    if (req.chain.empty()) continue;
    const double now = req.arrival_s;
    const size_t replica = next_replica++ % replicas;
    Router& router = routers[replica];
    // What the other replicas routed, as far as the sync has brought it by now.
    for (; !synced.empty() && synced.front().at <= now; synced.pop_front()) {
      const Synced& e = synced.front();
      for (size_t i = 0; i < replicas; ++i) {
        if (i == e.from) continue;
        seen[i][e.node] += e.missed;
        if (e.placed) routers[i].Remember(e.key, e.node);
        routers[i].CountPeerRequest(e.counted);
      }
    }
    // The load signal: prefill work (missed blocks) of the requests this router knows of.
    for (size_t i = 0; i < n; ++i) loads[i] = static_cast<double>(seen[replica][i]);
    int node = 0;
    RouteChoice c;
    switch (policy) {
      case Policy::kRoundRobin:
        node = static_cast<int>(next_rr++ % n);
        break;
      case Policy::kRandom:
        node = static_cast<int>(rng() % n);
        break;
      case Policy::kHashDepth1:
      case Policy::kHashDepth4: {
        const size_t depth =
            std::min<size_t>(req.chain.size(), policy == Policy::kHashDepth1 ? 1 : 4);
        node = router.ring().Home(RingHash(req.chain[depth - 1]));
        break;
      }
      case Policy::kKvtier: {
        c = router.Route(req.chain, loads);
        routing_keys.insert(c.routing_key);
        node = c.node;
        break;
      }
      case Policy::kCacheAware: {
        // The index every replica reads (exact here): a block is in it once the prefill that
        // computed it has finished and until it is evicted.
        c = router.Route(req.chain, loads);
        for (size_t i = 0; i < n; ++i) cached[i] = caches[i].Indexed(req.chain, now);
        node = router.PreferCached(c, cached, loads);
        c.placed = c.placed || node != c.node;
        break;
      }
    }
    const size_t missed = req.chain.size() - caches[node].Peek(req.chain);
    const double start = std::max(now, busy_until[node]);
    busy_until[node] = start + static_cast<double>(missed) / o.prefill_rate;
    const size_t hits = caches[node].Access(req.chain, busy_until[node]);
    all_blocks += req.chain.size();
    hit_blocks += hits;
    r.prefilled[node] += missed;
    seen[replica][node] += missed;
    if (replicas > 1 && o.sync_lag_s >= 0) {
      const auto counted = router.last_counted();
      synced.push_back({now + o.sync_lag_s, replica, c.routing_key, node, c.placed, missed,
                        {counted.begin(), counted.end()}});
    }
    r.hits[node] += hits;
    ttft.push_back(busy_until[node] - now);
  }
  r.hit_rate = all_blocks ? static_cast<double>(hit_blocks) / all_blocks : 0;
  uint64_t sum = 0, max = 0;
  for (uint64_t p : r.prefilled) {
    sum += p;
    max = std::max(max, p);
  }
  r.max_mean_load = sum ? static_cast<double>(max) * n / sum : 0;
  r.ttft_p50_s = Percentile(ttft, 0.5);
  r.ttft_p90_s = Percentile(ttft, 0.9);
  if (policy == Policy::kKvtier) {
    r.keys_moved = MeasureKeysMoved(
        routers[0], std::vector<BlockKey>(routing_keys.begin(), routing_keys.end()));
  }
  return r;
}

double GlobalLruHitRate(const std::vector<TraceRequest>& trace, size_t capacity) {
  PrefixLru lru(capacity);
  uint64_t all = 0, hits = 0;
  for (const TraceRequest& req : trace) {
    all += req.chain.size();
    hits += lru.Access(req.chain);
  }
  return all ? static_cast<double>(hits) / all : 0;
}

KeysMoved MeasureKeysMoved(const Router& router, const std::vector<BlockKey>& keys) {
  KeysMoved m;
  const size_t n = router.ring().size();
  if (keys.empty() || n < 2) return m;
  std::vector<RingNode> nodes;
  for (size_t i = 0; i < n; ++i) nodes.push_back(router.ring().node(i));
  Router joined = router, left = router;
  std::vector<RingNode> more = nodes;
  more.push_back({"joining-node", 1.0});
  joined.SetNodes(std::move(more));
  nodes.pop_back();
  left.SetNodes(std::move(nodes));
  size_t moved_join = 0, moved_leave = 0;
  for (const BlockKey& k : keys) {
    // The first n - 1 nodes keep their indexes in all three routers.
    const int home = router.Preferred(k);
    moved_join += joined.Preferred(k) != home;
    moved_leave += left.Preferred(k) != home;
  }
  m.join = static_cast<double>(moved_join) / keys.size();
  m.leave = static_cast<double>(moved_leave) / keys.size();
  return m;
}

}  // namespace kvtier::router
