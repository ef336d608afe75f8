#include "cli/cluster_replay.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "client/cache_client.h"
#include "kvtier/v1/router.grpc.pb.h"

namespace kvtier::cli {
namespace {

struct NodeTally {
  uint64_t requests = 0, blocks = 0, hits = 0, prefilled = 0;
  std::map<std::string, uint64_t> hits_by_tier;
};

// Deterministic bytes for a block: what a prefill would have produced.
void Payload(const BlockKey& key, std::vector<uint8_t>* out) {
  uint64_t x = key.lo * 0x9E3779B97F4A7C15ULL + key.hi + 1;
  for (uint8_t& b : *out) {
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    b = static_cast<uint8_t>(x >> 56);
  }
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvtier replay: %s\n", what.c_str());
  return 1;
}

}  // namespace

int RunClusterReplay(const std::vector<router::TraceRequest>& trace,
                     const ClusterReplayOptions& options, const router::SimOptions& sim_options,
                     bool json) {
  auto route = v1::RouteService::NewStub(
      grpc::CreateChannel(options.router, grpc::InsecureChannelCredentials()));
  v1::MembersResponse members;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st = route->Members(&ctx, v1::MembersRequest(), &members);
    if (!st.ok()) return Fail("kvtier-router at " + options.router + ": " + st.error_message());
  }
  std::map<std::string, std::unique_ptr<CacheClient>> clients;
  std::map<std::string, NodeTally> tally;
  for (const auto& m : members.members()) {
    auto c = CacheClient::Create(
        {.address = m.address(), .tenant = options.tenant, .use_ucx = false});
    if (!c.ok()) return Fail(std::string(c.status().message()));
    clients[m.address()] = std::move(*c);
    tally[m.address()];
  }
  std::vector<uint8_t> payload(options.block_bytes);
  uint64_t all_blocks = 0, all_hits = 0;
  const auto start = std::chrono::steady_clock::now();
  for (size_t r = 0; r < trace.size(); ++r) {
    const std::vector<BlockKey>& chain = trace[r].chain;
    if (chain.empty()) continue;
    v1::RouteRequest req;
    req.set_tenant(options.tenant);
    req.set_packed_keys(PackKeys(chain));
    v1::RouteResponse res;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st = route->Route(&ctx, req, &res);
    if (!st.ok()) return Fail("route: " + st.error_message());
    const std::string& node = res.nodes(0);
    auto it = clients.find(node);
    if (it == clients.end()) return Fail("route: unknown node " + node);
    CacheClient& c = *it->second;
    auto found = c.Lookup(chain);
    if (!found.ok()) return Fail("lookup on " + node + ": " + found.status().ToString());
    NodeTally& t = tally[node];
    ++t.requests;
    t.blocks += chain.size();
    t.hits += found->matched;
    for (const std::string& tier : found->tiers) ++t.hits_by_tier[tier];
    t.prefilled += chain.size() - found->matched;
    all_blocks += chain.size();
    all_hits += found->matched;
    // "Prefill" what missed and store it, parents first.
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<BlockToPut> puts;
    bytes.reserve(chain.size() - found->matched);
    for (size_t b = found->matched; b < chain.size(); ++b) {
      Payload(chain[b], &payload);
      bytes.push_back(payload);
      puts.push_back({chain[b], b == 0 ? BlockKey{} : chain[b - 1], bytes.back()});
    }
    if (!puts.empty()) {
      auto put = c.Put(puts);
      if (!put.ok()) return Fail("put on " + node + ": " + put.status().ToString());
    }
    // Tell the router what the request cost its node (its load signal).
    v1::ReportRequest report;
    report.set_node(node);
    report.set_prefilled_blocks(chain.size() - found->matched);
    v1::ReportResponse unused;
    grpc::ClientContext rctx;
    rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    st = route->Report(&rctx, report, &unused);
    if (!st.ok()) return Fail("report: " + st.error_message());
    if ((r + 1) % 1000 == 0 && !json) {
      std::printf("  %zu requests, hit rate so far %.3f\n", r + 1,
                  static_cast<double>(all_hits) / all_blocks);
      std::fflush(stdout);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  router::SimOptions so = sim_options;
  so.nodes = tally.size();
  const router::PolicyResult simulated = router::Simulate(trace, router::Policy::kKvtier, so);
  const router::PolicyResult simulated_aware =
      router::Simulate(trace, router::Policy::kCacheAware, so);
  const double global = router::GlobalLruHitRate(trace, so.nodes * so.capacity);

  const double hit_rate = all_blocks ? static_cast<double>(all_hits) / all_blocks : 0;
  uint64_t max_prefill = 0, sum_prefill = 0;
  std::printf("\n%zu requests through kvtier-router %s in %.1f s\n\n", trace.size(),
              options.router.c_str(), seconds);
  std::printf("%-22s %9s %10s %9s %10s %10s\n", "node", "requests", "blocks", "hit rate",
              "host hits", "prefilled");
  for (const auto& [node, t] : tally) {
    std::printf("%-22s %9lu %10lu %9.3f %10lu %10lu\n", node.c_str(),
                static_cast<unsigned long>(t.requests), static_cast<unsigned long>(t.blocks),
                t.blocks ? static_cast<double>(t.hits) / t.blocks : 0.0,
                static_cast<unsigned long>(t.hits_by_tier.count("host")
                                               ? t.hits_by_tier.at("host")
                                               : 0),
                static_cast<unsigned long>(t.prefilled));
    max_prefill = std::max(max_prefill, t.prefilled);
    sum_prefill += t.prefilled;
  }
  const double balance =
      sum_prefill ? static_cast<double>(max_prefill) * tally.size() / sum_prefill : 0;
  std::printf("\ncluster: hit rate %.3f, prefill max/mean %.2f\n", hit_rate, balance);
  std::printf("simulated, %zu x %zu blocks: kvtier policy hit rate %.3f (max/mean %.2f), "
              "cache-aware %.3f (%.2f); global LRU %.3f\n",
              so.nodes, so.capacity, simulated.hit_rate, simulated.max_mean_load,
              simulated_aware.hit_rate, simulated_aware.max_mean_load, global);
  if (json) {
    nlohmann::json out = {{"cluster_hit_rate", hit_rate},
                          {"cluster_max_mean_load", balance},
                          {"simulated_hit_rate", simulated.hit_rate},
                          {"simulated_cache_aware_hit_rate", simulated_aware.hit_rate},
                          {"global_lru_hit_rate", global},
                          {"nodes", tally.size()}};
    std::printf("RESULT %s\n", out.dump().c_str());
  }
  return 0;
}

}  // namespace kvtier::cli
