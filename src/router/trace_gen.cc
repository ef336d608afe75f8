#include "router/trace_gen.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"

namespace kvtier::router {
namespace {

// Mooncake ids as the simulator's keys (LoadMooncakeTrace's mapping).
BlockKey KeyOfId(uint64_t id) { return BlockKey{0, id + 1}; }

// std::uniform_*_distribution differ between standard libraries; these do not.
uint64_t Below(std::mt19937_64& rng, uint64_t n) { return rng() % n; }
double Unit(std::mt19937_64& rng) { return (rng() >> 11) * 0x1.0p-53; }

}  // namespace

std::vector<TraceRequest> GenerateSessions(const SessionTraceOptions& o) {
  std::mt19937_64 rng(o.seed);
  uint64_t next_id = 0;
  // System prompts and their Zipf weights, cumulative.
  std::vector<std::vector<BlockKey>> systems(std::max<size_t>(o.system_prompts, 1));
  std::vector<double> cumulative;
  double total = 0;
  for (size_t k = 0; k < systems.size(); ++k) {
    const size_t span = o.max_system_blocks - std::min(o.min_system_blocks, o.max_system_blocks);
    const size_t len = std::min(o.min_system_blocks, o.max_system_blocks) + Below(rng, span + 1);
    for (size_t b = 0; b < len; ++b) systems[k].push_back(KeyOfId(next_id++));
    total += 1.0 / std::pow(static_cast<double>(k + 1), o.zipf_s);
    cumulative.push_back(total);
  }
  std::vector<TraceRequest> out;
  for (size_t s = 0; s < o.sessions; ++s) {
    const double pick = Unit(rng) * total;
    const size_t k = std::min<size_t>(
        std::lower_bound(cumulative.begin(), cumulative.end(), pick) - cumulative.begin(),
        systems.size() - 1);
    std::vector<BlockKey> chain = systems[k];
    double t = Unit(rng) * o.duration_s;
    const size_t turns = 1 + Below(rng, std::max<size_t>(o.max_turns, 1));
    for (size_t turn = 0; turn < turns; ++turn) {
      const size_t added = 1 + Below(rng, std::max<size_t>(o.max_new_blocks, 1));
      if (chain.size() + added > o.max_blocks) break;
      for (size_t b = 0; b < added; ++b) chain.push_back(KeyOfId(next_id++));
      out.push_back(TraceRequest{t, chain});
      t += -std::log(1.0 - Unit(rng)) * o.mean_gap_s;
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const TraceRequest& a, const TraceRequest& b) {
    return a.arrival_s < b.arrival_s;
  });
  return out;
}

void AddSharedFirstBlock(std::vector<TraceRequest>* trace) {
  uint64_t max_id = 0;
  for (const TraceRequest& r : *trace) {
    for (const BlockKey& k : r.chain) max_id = std::max(max_id, k.lo);
  }
  const BlockKey shared = KeyOfId(max_id);  // ids are lo - 1: max_id is an unused id
  for (TraceRequest& r : *trace) r.chain.insert(r.chain.begin(), shared);
}

void AddBurst(std::vector<TraceRequest>* trace, double factor) {
  if (trace->size() < 10 || factor <= 1) return;
  const size_t a = trace->size() * 4 / 10, b = trace->size() / 2;
  const double t0 = (*trace)[a].arrival_s, t1 = (*trace)[b].arrival_s;
  for (size_t i = a; i < trace->size(); ++i) {
    double& t = (*trace)[i].arrival_s;
    t = i < b ? t0 + (t - t0) / factor : t - (t1 - t0) * (1 - 1 / factor);
  }
}

void ScaleTime(std::vector<TraceRequest>* trace, double factor) {
  for (TraceRequest& r : *trace) r.arrival_s *= factor;
}

absl::Status WriteMooncakeTrace(const std::string& path, const std::vector<TraceRequest>& trace) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "w"), &std::fclose);
  if (f == nullptr) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  std::string line;
  for (const TraceRequest& r : trace) {
    line = absl::StrCat("{\"timestamp\": ", std::llround(r.arrival_s * 1000),
                        ", \"input_length\": ", r.chain.size() * 512,
                        ", \"output_length\": 256, \"hash_ids\": [");
    for (size_t i = 0; i < r.chain.size(); ++i) {
      if (r.chain[i].hi != 0 || r.chain[i].lo == 0) {
        return absl::InvalidArgumentError("trace: a key that is not a Mooncake block id");
      }
      absl::StrAppend(&line, i ? ", " : "", r.chain[i].lo - 1);
    }
    line += "]}\n";
    if (std::fputs(line.c_str(), f.get()) < 0) {
      return absl::UnavailableError(absl::StrCat("write ", path, " failed"));
    }
  }
  if (std::fclose(f.release()) != 0) {
    return absl::UnavailableError(absl::StrCat("write ", path, " failed"));
  }
  return absl::OkStatus();
}

}  // namespace kvtier::router
