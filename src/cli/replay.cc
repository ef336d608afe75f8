#include "cli/replay.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/numbers.h"
#include "cli/cluster_replay.h"
#include "router/simulator.h"

namespace kvtier::cli {
namespace {

constexpr char kUsage[] = R"(usage: kvtier replay [options]

Replays a Mooncake-format trace through N simulated nodes, each with a prefix cache of C blocks
(LRU; a block hits only with its whole prefix) and a prefill queue working at a fixed rate, under
each routing policy: round robin, random, a hash of the first block (hash_depth1) or of the
fourth (hash_depth4), kvtier's router (adaptive depth, consistent hashing with bounded loads,
remembered placements), and cache-aware mode (the router also knows which node holds which
blocks). Time is the trace's.

Per policy: block hit rate; max/mean prefill load (missed blocks per node); modeled
time-to-first-token p50 and p90 (queueing plus prefill). Also the hit rate of one global LRU of
N x C blocks (what a perfect distributed pool would reach), and for kvtier's router the fraction
of its routing keys whose node changes when a node joins or leaves (plain consistent hashing
moves about 1/N; remembered placements stay put unless their node leaves).

options:
  --trace FILE         Mooncake trace (default: ../shared/data/mooncake/synthetic_trace.jsonl
                       next to the source tree)
  --nodes N            simulated nodes (default: 8)
  --capacity C         blocks per node (default: 2000)
  --prefill-rate R     blocks per second a node prefills (default: 40)
  --load-factor F      bounded loads' 1 + epsilon (default: 1.25)
  --requests N         replay only the first N requests (default: all)
  --routers R          also replay kvtier and cache_aware through R router replicas (requests
                       round robin over them; each its own sketch, placements and load view;
                       cache-aware replicas share one index); default 1: no extra replay
  --sync-lag S         replicas learn each other's decisions (prefill work, placements) S
                       seconds late, as kvtier-router --peers does (default 0.05); -1: they
                       do not share
  --json               end with one line: RESULT {json}
  --help               this text

Against a real cluster (scripts/local-cluster.sh):
  --router HOST:PORT   replay through kvtier-router and its kvtierd nodes instead: per request,
                       Route, then Lookup on the chosen node, then Put the blocks it missed
                       (--block-bytes each, default 4096). Prints hit rates per node and tier,
                       the router's balance, and the simulation of the same cluster beside it
                       (capacity per node: --capacity, which should match the daemons' host
                       tier divided by the block size).
  --tenant NAME        tenant for the cluster replay (default: replay)
  --worker HOST:PORT   then ask kvtier-worker for decode attention over a few of the replayed
                       prefixes (dense and head-sparse, each twice): latency, bytes fetched,
                       bytes served from its pool, bytes head-sparse did not need
)";

int Usage(const std::string& error) {
  std::fprintf(stderr, "kvtier replay: %s\n\n%s", error.c_str(), kUsage);
  return 2;
}

}  // namespace

int RunReplay(int argc, char** argv) {
  std::string trace_path =
      std::string(KVTIER_SOURCE_DIR) + "/../shared/data/mooncake/synthetic_trace.jsonl";
  router::SimOptions o;
  size_t requests = 0, routers = 1;
  bool json = false;
  ClusterReplayOptions cluster;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    auto number = [&](auto* out, bool allow_zero) {
      const char* v = value();
      return v != nullptr && absl::SimpleAtoi(v, out) && (allow_zero || *out > 0);
    };
    auto real = [&](double* out, double min) {
      const char* v = value();
      return v != nullptr && absl::SimpleAtod(v, out) && *out >= min;
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--trace") {
      const char* v = value();
      if (v == nullptr) return Usage("--trace needs a file");
      trace_path = v;
    } else if (a == "--nodes") {
      if (!number(&o.nodes, false) || o.nodes < 2) return Usage("--nodes needs a number >= 2");
    } else if (a == "--capacity") {
      if (!number(&o.capacity, false)) return Usage("--capacity needs a number of blocks > 0");
    } else if (a == "--prefill-rate") {
      if (!real(&o.prefill_rate, 1e-9)) return Usage("--prefill-rate needs blocks/s > 0");
    } else if (a == "--load-factor") {
      if (!real(&o.router.load_factor, 1.0)) return Usage("--load-factor needs a number >= 1");
    } else if (a == "--requests") {
      if (!number(&requests, false)) return Usage("--requests needs a number > 0");
    } else if (a == "--routers") {
      if (!number(&routers, false)) return Usage("--routers needs a number > 0");
    } else if (a == "--sync-lag") {
      const char* v = value();
      if (v == nullptr || !absl::SimpleAtod(v, &o.sync_lag_s) ||
          (o.sync_lag_s < 0 && o.sync_lag_s != -1)) {
        return Usage("--sync-lag needs seconds >= 0, or -1");
      }
    } else if (a == "--json") {
      json = true;
    } else if (a == "--router") {
      const char* v = value();
      if (v == nullptr) return Usage("--router needs HOST:PORT");
      cluster.router = v;
    } else if (a == "--tenant") {
      const char* v = value();
      if (v == nullptr || *v == '\0') return Usage("--tenant needs a name");
      cluster.tenant = v;
    } else if (a == "--worker") {
      const char* v = value();
      if (v == nullptr) return Usage("--worker needs HOST:PORT");
      cluster.worker = v;
    } else if (a == "--block-bytes") {
      if (!number(&cluster.block_bytes, false)) return Usage("--block-bytes needs a number > 0");
    } else {
      return Usage("unknown option '" + a + "'");
    }
  }
  auto trace = router::LoadMooncakeTrace(trace_path, requests);
  if (!trace.ok()) {
    std::fprintf(stderr, "kvtier replay: %s\n", std::string(trace.status().message()).c_str());
    return 1;
  }
  if (!cluster.router.empty()) return RunClusterReplay(*trace, cluster, o, json);
  const double global = router::GlobalLruHitRate(*trace, o.nodes * o.capacity);
  std::printf("%zu requests, %zu nodes x %zu blocks, prefill %.0f blocks/s per node\n",
              trace->size(), o.nodes, o.capacity, o.prefill_rate);
  std::printf("global LRU of %zu blocks: hit rate %.3f\n\n", o.nodes * o.capacity, global);
  std::printf("%-12s %9s %9s %10s %10s %10s\n", "policy", "hit rate", "vs global", "max/mean",
              "TTFT p50", "TTFT p90");
  nlohmann::json result;
  router::KeysMoved moved;
  for (router::Policy p : router::kAllPolicies) {
    const router::PolicyResult r = router::Simulate(*trace, p, o);
    std::printf("%-12s %9.3f %9.3f %10.2f %9.2fs %9.2fs\n", router::PolicyName(p), r.hit_rate,
                global > 0 ? r.hit_rate / global : 0, r.max_mean_load, r.ttft_p50_s,
                r.ttft_p90_s);
    result[router::PolicyName(p)] = {{"hit_rate", r.hit_rate},
                                     {"max_mean_load", r.max_mean_load},
                                     {"ttft_p50_s", r.ttft_p50_s},
                                     {"ttft_p90_s", r.ttft_p90_s}};
    if (p == router::Policy::kKvtier) {
      moved = r.keys_moved;
    }
    if (routers > 1 && (p == router::Policy::kKvtier || p == router::Policy::kCacheAware)) {
      router::SimOptions replicated = o;
      replicated.routers = routers;
      const router::PolicyResult rr = router::Simulate(*trace, p, replicated);
      const std::string name = std::string(router::PolicyName(p)) + " x" + std::to_string(routers);
      std::printf("%-12s %9.3f %9.3f %10.2f %9.2fs %9.2fs\n", name.c_str(), rr.hit_rate,
                  global > 0 ? rr.hit_rate / global : 0, rr.max_mean_load, rr.ttft_p50_s,
                  rr.ttft_p90_s);
      const std::string suffix = "_r" + std::to_string(routers);
      nlohmann::json& j = result[router::PolicyName(p)];
      j["hit_rate" + suffix] = rr.hit_rate;
      j["max_mean_load" + suffix] = rr.max_mean_load;
      j["ttft_p90_s" + suffix] = rr.ttft_p90_s;
    }
  }
  std::printf("\nkvtier's routing keys moved: %.3f on a join, %.3f on a leave (1/N = %.3f; "
              "placed prefixes stay where they are cached, a leaving node's move)\n",
              moved.join, moved.leave, 1.0 / o.nodes);
  result["global_lru_hit_rate"] = global;
  result["keys_moved_join"] = moved.join;
  result["keys_moved_leave"] = moved.leave;
  result["nodes"] = o.nodes;
  result["routers"] = routers;
  if (json) std::printf("RESULT %s\n", result.dump().c_str());
  return 0;
}

}  // namespace kvtier::cli
