#include "cli/cluster_replay.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "client/cache_client.h"
#include "common/layout_proto.h"
#include "common/tier.h"
#include "kvtier/v1/attention.grpc.pb.h"
#include "kvtier/v1/router.grpc.pb.h"

namespace kvtier::cli {
namespace {

struct NodeTally {
  uint64_t requests = 0, blocks = 0, hits = 0, prefilled = 0;
  std::array<uint64_t, kNumTiers> hits_by_tier{};
};

// Deterministic bytes for a block: what a prefill would have produced. Every 16-bit word is a
// finite fp16 value below 2 in magnitude, so the blocks are valid KV for attention.
void Payload(const BlockKey& key, std::vector<uint8_t>* out) {
  uint64_t x = key.lo * 0x9E3779B97F4A7C15ULL + key.hi + 1;
  for (size_t i = 0; i < out->size(); ++i) {
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    uint8_t b = static_cast<uint8_t>(x >> 56);
    if (i % 2 == 1) b &= 0xBF;  // the high byte: exponent below 15 (little-endian words)
    (*out)[i] = b;
  }
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvtier replay: %s\n", what.c_str());
  return 1;
}

// Decode attention through kvtier-worker over the longest of the last replayed prefixes,
// head-sparse and dense, each asked twice (the second is served from the worker's pool). Prints
// latency and bytes; adds a summary to `result`.
int RunAttention(const std::vector<router::TraceRequest>& trace,
                 const ClusterReplayOptions& options, nlohmann::json* result) {
  const KvLayout layout = KvLayout::SmallGqa();
  if (options.block_bytes != layout.BytesPerBlock()) {
    return Fail("--worker needs --block-bytes " + std::to_string(layout.BytesPerBlock()) +
                " (blocks read as the small GQA layout)");
  }
  auto stub = v1::AttentionService::NewStub(
      grpc::CreateChannel(options.worker, grpc::InsecureChannelCredentials()));
  // The longest chains among the last requests: their blocks were just stored or hit.
  std::vector<const router::TraceRequest*> recent;
  for (size_t r = trace.size() > 40 ? trace.size() - 40 : 0; r < trace.size(); ++r) {
    if (!trace[r].chain.empty()) recent.push_back(&trace[r]);
  }
  std::sort(recent.begin(), recent.end(),
            [](auto* a, auto* b) { return a->chain.size() > b->chain.size(); });
  recent.erase(std::unique(recent.begin(), recent.end(),
                           [](auto* a, auto* b) { return a->chain == b->chain; }),
               recent.end());
  recent.resize(std::min<size_t>(recent.size(), 3));
  const int q_heads = 2 * static_cast<int>(layout.kv_heads);
  std::vector<float> q(size_t(q_heads) * layout.head_dim);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>((i * 37) % 17) / 17.0f - 0.5f;

  std::printf("\ndecode attention through kvtier-worker %s (blocks as %s):\n",
              options.worker.c_str(), layout.DebugString().c_str());
  std::printf("%-8s %-7s %-6s %8s %8s %8s %12s %11s %11s\n", "prefix", "mode", "ask", "ms",
              "fetch ms", "comp ms", "KiB fetched", "KiB pooled", "KiB skipped");
  uint64_t dense_bytes = 0, sparse_bytes = 0, requests = 0;
  for (const router::TraceRequest* req : recent) {
    // Sparse first: its fetch shows what it leaves on the daemons.
    for (v1::AttentionMode mode : {v1::ATTENTION_MODE_HEAD_SPARSE, v1::ATTENTION_MODE_DENSE}) {
      const bool dense = mode == v1::ATTENTION_MODE_DENSE;
      v1::DecodeRequest dr;
      dr.set_tenant(options.tenant);
      LayoutToProto(layout, dr.mutable_layout());
      dr.set_mode(mode);
      if (!dense) {
        // One recall head in four (kv head 0 of layer 0); the rest see sinks and a window.
        dr.mutable_profile()->add_layers()->add_recall_heads(0);
        dr.mutable_profile()->add_layers();
      }
      v1::Sequence* seq = dr.add_sequences();
      seq->set_packed_keys(PackKeys(req->chain));
      for (uint32_t l = 0; l < layout.layers; ++l) {
        v1::LayerQuery* lq = seq->add_queries();
        lq->set_layer(l);
        lq->mutable_q()->Assign(q.begin(), q.end());
      }
      for (int ask = 1; ask <= 2; ++ask) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        v1::DecodeResponse res;
        const auto t0 = std::chrono::steady_clock::now();
        grpc::Status st = stub->Decode(&ctx, dr, &res);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count();
        if (!st.ok()) return Fail("attention: " + st.error_message());
        for (const auto& layer : res.sequences(0).layers()) {
          for (float v : layer.out()) {
            if (!std::isfinite(v)) return Fail("attention: an output is not finite");
          }
        }
        const v1::DecodeStats& rs = res.stats();
        std::printf("%-8s %-7s %-6s %8.2f %8.2f %8.2f %7.1f %-4s %11.1f %11.1f\n",
                    (std::to_string(req->chain.size()) + " blk").c_str(),
                    dense ? "dense" : "sparse", ask == 1 ? "first" : "again", ms,
                    rs.fetch_us() / 1e3, rs.compute_us() / 1e3, rs.bytes_fetched() / 1024.0,
                    rs.bytes_fetched() == 0 ? ""
                    : rs.bytes_fetched_ucx() == rs.bytes_fetched() ? "ucx" : "grpc",
                    rs.bytes_from_pool() / 1024.0, rs.bytes_skipped() / 1024.0);
        ++requests;
        if (ask == 1) {
          const uint64_t used = res.stats().bytes_fetched() + res.stats().bytes_from_pool();
          (dense ? dense_bytes : sparse_bytes) += used;
        }
      }
    }
  }
  const double saved = dense_bytes ? 1.0 - static_cast<double>(sparse_bytes) / dense_bytes : 0;
  std::printf("head-sparse read %.0f%% fewer bytes than dense\n", saved * 100);
  (*result)["attention_requests"] = requests;
  (*result)["attention_sparse_bytes_saved"] = saved;
  return 0;
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
    for (Tier tier : found->tiers) ++t.hits_by_tier[static_cast<int>(tier)];
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
                static_cast<unsigned long>(t.hits_by_tier[static_cast<int>(Tier::kHost)]),
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
  nlohmann::json out = {{"cluster_hit_rate", hit_rate},
                        {"cluster_max_mean_load", balance},
                        {"simulated_hit_rate", simulated.hit_rate},
                        {"simulated_cache_aware_hit_rate", simulated_aware.hit_rate},
                        {"global_lru_hit_rate", global},
                        {"nodes", tally.size()}};
  if (!options.worker.empty()) {
    if (int rc = RunAttention(trace, options, &out); rc != 0) return rc;
  }
  if (json) std::printf("RESULT %s\n", out.dump().c_str());
  return 0;
}

}  // namespace kvtier::cli
