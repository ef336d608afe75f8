// bench_router: routing decisions per second on one core, key hashing included, for prompts of
// 1K, 8K and 128K tokens, and the p99 latency of one decision.
//
//   kvtier      Router::RouteTokens: hashes only the blocks the adaptive depth needs
//   baseline    hashing the whole prompt's chain first (ChainHasher::Keys), then Router::Route,
//               as a router that always computed every key would
//
//   cache_aware (8K only)  the cache-aware decision on keys a frontend sent (packed_keys), as
//               kvtier-router makes it: Router::Route, CacheIndex::Prefixes (galloping: a lookup
//               a doubling), Router::PreferCached. The index holds the system prompts on three
//               nodes each and the first half of every prompt on one node. Baseline: the same
//               with a lookup per block of the longest held prefix (HeldPrefixes over an
//               absl::flat_hash_map<BlockKey, node bitmask>, the simulator's index).
//
//   events      engines' KV events indexed per second (events_per_s): BlockStored events of 16
//               blocks of 16 tokens, decoded from msgpack, mapped to kvtier's chain keys
//               (EngineBlockMapper) and stored in a CacheIndex, as kvtier-router's EngineWatch
//               does; 2,000 prompts of 8 events each, cleared (AllBlocksCleared) after each
//               round of them. Baseline: decoding the same batches only.
//
// Prompts: 8 nodes; 16-token blocks; 2,000 prompts per length, where 60% start with one of
// four shared system prompts (1,024 tokens) and the rest with their own tokens, each continuing
// with tokens of its own. Loads change every decision.
//
// Usage: bench_router [--quick]     Ends with one line: RESULT {json}.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "bench/bench_util.h"
#include "common/block_key.h"
#include "kvevents/engine_index.h"
#include "kvevents/kv_events.h"
#include "router/cache_index.h"
#include "router/router.h"
#include "router/simulator.h"

namespace kvtier::bench {
namespace {

struct Figures {
  double per_s = 0, p99_us = 0;
};

template <typename Decide>
Figures Measure(const std::vector<std::vector<uint32_t>>& prompts, double seconds,
                Decide decide) {
  std::vector<double> lat;
  std::vector<double> loads(8, 0);
  size_t decisions = 0;
  const double start = NowSeconds();
  for (size_t i = 0; NowSeconds() - start < seconds && i < 50'000'000; ++i) {
    const double t0 = NowSeconds();
    const int node = decide(prompts[i % prompts.size()], loads);
    lat.push_back((NowSeconds() - t0) * 1e6);
    loads[node] += 1;
    loads[i % 8] *= 0.9;
    ++decisions;
  }
  Figures f;
  f.per_s = decisions / (NowSeconds() - start);
  std::sort(lat.begin(), lat.end());
  f.p99_us = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  return f;
}

// The events phase (see the header).
class IndexSink final : public kvevents::BlockKeySink {
 public:
  explicit IndexSink(router::CacheIndex* index) : index_(index), id_(index->AddNode()) {}
  void OnStored(std::span<const BlockKey> keys) override { index_->Stored(id_, keys); }
  void OnRemoved(std::span<const BlockKey> keys) override { index_->Removed(id_, keys); }
  void OnCleared() override { index_->Forget(id_); }

 private:
  router::CacheIndex* index_;
  uint32_t id_;
};

void MeasureEvents(double seconds, Result* result) {
  constexpr uint32_t kBlockTokens = 16, kBlocksPerEvent = 16;
  constexpr int kPrompts = 2000, kEventsPerPrompt = 8;
  std::mt19937_64 rng(3);
  std::vector<std::string> batches;
  uint64_t hash = 1;
  for (int p = 0; p < kPrompts; ++p) {
    std::optional<kvevents::EngineHash> parent;
    for (int e = 0; e < kEventsPerPrompt; ++e) {
      kvevents::BlockStored stored{.parent_block_hash = parent, .block_size = kBlockTokens};
      for (uint32_t b = 0; b < kBlocksPerEvent; ++b) stored.block_hashes.push_back(hash++);
      for (uint32_t t = 0; t < kBlocksPerEvent * kBlockTokens; ++t) {
        stored.token_ids.push_back(static_cast<uint32_t>(rng() % 128256));
      }
      parent = stored.block_hashes.back();
      batches.push_back(kvevents::Encode({.ts = 1.0, .events = {std::move(stored)}}));
    }
  }
  const std::string clear = kvevents::Encode({.ts = 1.0, .events = {kvevents::AllBlocksCleared{}}});
  router::CacheIndex index;
  IndexSink sink(&index);
  auto mapper = kvevents::EngineBlockMapper::Create({.model_id = "m"}, &sink);
  if (!mapper.ok()) return;
  auto run = [&](bool apply) {
    size_t events = 0;
    const double start = NowSeconds();
    while (NowSeconds() - start < seconds) {
      for (size_t i = 0; i < batches.size(); i += 64) {
        for (size_t j = i; j < std::min(i + 64, batches.size()); ++j) {
          auto batch = kvevents::Decode(batches[j]);
          if (apply && batch.ok()) (*mapper)->Apply(*batch);
          ++events;
        }
        if (NowSeconds() - start >= seconds) break;
      }
      auto cleared = kvevents::Decode(clear);
      if (apply && cleared.ok()) (*mapper)->Apply(*cleared);
    }
    return static_cast<double>(events) / (NowSeconds() - start);
  };
  const double indexed = run(true), decoded = run(false);
  std::printf("events | %14.0f BlockStored events of 16 blocks indexed/s | %14.0f decoded only/s "
              "| %.2fx\n",
              indexed, decoded, indexed / decoded);
  result->Add("events_per_s", indexed);
  result->Add("baseline_decoded_events_per_s", decoded);
}

int Main(int argc, char** argv) {
  bool quick = false;
  if (int rc = ParseBenchFlags(argc, argv, "bench_router",
                               "  Routing decisions per second on one core, key hashing included, "
                               "for 1K, 8K and\n  128K-token prompts, against hashing every "
                               "block first. --quick: under a minute.\n",
                               &quick);
      rc >= 0) {
    return rc;
  }
  const double phase_s = quick ? 1.0 : 4.0;
  auto hasher = ChainHasher::Create({.tenant_salt = "bench", .model_id = "m"}, 16);
  if (!hasher.ok()) return 1;
  std::mt19937 rng(1);
  std::vector<std::vector<uint32_t>> systems(4);
  for (auto& s : systems) {
    for (int t = 0; t < 1024; ++t) s.push_back(rng() % 128256);
  }
  Result result;
  double cache_aware_8k = 0;
  std::printf("%-6s | %14s %9s | %14s %9s | %s\n", "tokens", "kvtier dec/s", "p99 us",
              "baseline dec/s", "p99 us", "kvtier/baseline");
  for (size_t tokens : {size_t{1024}, size_t{8192}, size_t{131072}}) {
    std::vector<std::vector<uint32_t>> prompts(quick && tokens > 8192 ? 200 : 2000);
    for (auto& p : prompts) {
      if (rng() % 10 < 6) p = systems[rng() % 4];
      p.resize(std::min(p.size(), tokens / 2));
      while (p.size() < tokens) p.push_back(rng() % 128256);
    }
    router::Router lazy(router::SimNodes(8)), eager(router::SimNodes(8));
    const Figures k = Measure(prompts, phase_s, [&](const auto& p, const auto& loads) {
      return lazy.RouteTokens(*hasher, p, loads).node;
    });
    const Figures b = Measure(prompts, phase_s, [&](const auto& p, const auto& loads) {
      return eager.Route(hasher->Keys(p), loads).node;
    });
    const std::string name = std::to_string(tokens / 1024) + "k";
    std::printf("%-6s | %14.0f %9.2f | %14.0f %9.2f | %.1fx\n", name.c_str(), k.per_s, k.p99_us,
                b.per_s, b.p99_us, k.per_s / b.per_s);
    result.Add("decisions_per_s_" + name, k.per_s);
    result.Add("p99_us_" + name, k.p99_us);
    result.Add("baseline_decisions_per_s_" + name, b.per_s);
    if (tokens == 8192) {
      std::vector<std::vector<BlockKey>> chains;
      absl::flat_hash_map<BlockKey, uint64_t> index;
      for (size_t i = 0; i < prompts.size(); ++i) {
        chains.push_back(hasher->Keys(prompts[i]));
        const std::vector<BlockKey>& chain = chains.back();
        for (size_t d = 0; d < chain.size() / 2; ++d) index[chain[d]] |= uint64_t{1} << (i % 8);
      }
      for (size_t s = 0; s < systems.size(); ++s) {
        const std::vector<BlockKey> keys = hasher->Keys(systems[s]);
        for (const BlockKey& k : keys) index[k] |= uint64_t{0b111} << s;
      }
      const auto mask_of = [&](const BlockKey& k) {
        auto it = index.find(k);
        return it == index.end() ? uint64_t{0} : it->second;
      };
      router::CacheIndex cache_index;
      for (int n = 0; n < 8; ++n) cache_index.AddNode();
      for (size_t i = 0; i < chains.size(); ++i) {
        cache_index.Stored(static_cast<uint32_t>(i % 8),
                           std::span(chains[i]).first(chains[i].size() / 2));
      }
      for (size_t s = 0; s < systems.size(); ++s) {
        const std::vector<BlockKey> keys = hasher->Keys(systems[s]);
        for (uint32_t n = 0; n < 3; ++n) cache_index.Stored(static_cast<uint32_t>(s + n), keys);
      }
      router::Router aware(router::SimNodes(8)), linear(router::SimNodes(8));
      std::vector<size_t> cached;
      std::vector<std::pair<uint32_t, size_t>> prefixes;
      size_t next = 0;
      const Figures a = Measure(prompts, phase_s, [&](const auto&, const auto& loads) {
        const std::vector<BlockKey>& chain = chains[next++ % chains.size()];
        const router::RouteChoice c = aware.Route(chain, loads);
        cache_index.Prefixes(chain.size(), [&](size_t i) { return chain[i]; }, &prefixes);
        cached.assign(8, 0);
        for (const auto& [node, blocks] : prefixes) cached[node] = blocks;
        return aware.PreferCached(c, cached, loads);
      });
      next = 0;
      const Figures l = Measure(prompts, phase_s, [&](const auto&, const auto& loads) {
        const std::vector<BlockKey>& chain = chains[next++ % chains.size()];
        const router::RouteChoice c = linear.Route(chain, loads);
        router::HeldPrefixes(chain, 8, mask_of, &cached);
        return linear.PreferCached(c, cached, loads);
      });
      std::printf("%-6s | %14.0f %9.2f | %14.0f %9.2f | %.1fx  cache-aware on packed keys (index "
                  "of %zu keys; baseline: a lookup a block)\n",
                  "8k", a.per_s, a.p99_us, l.per_s, l.p99_us, a.per_s / l.per_s, index.size());
      result.Add("baseline_decisions_per_s_8k_cache_aware", l.per_s);
      cache_aware_8k = a.per_s;
    }
  }
  result.Add("decisions_per_s_8k_cache_aware", cache_aware_8k);
  MeasureEvents(phase_s, &result);
  result.Print();
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
