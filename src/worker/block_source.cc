#include "worker/block_source.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvtier::worker {
namespace {

using Clock = std::chrono::steady_clock;

// How often the router's membership is fetched again for local routing.
constexpr auto kMembersMaxAge = std::chrono::seconds(1);
// Daemon clients kept (one per node, tenant and token).
constexpr size_t kMaxClients = 1024;

}  // namespace

DaemonBlockSource::DaemonBlockSource(const DaemonSourceOptions& options)
    : options_(options), fetchers_(std::max(0, options.fetch_threads)) {}

absl::StatusOr<std::unique_ptr<DaemonBlockSource>> DaemonBlockSource::Create(
    const DaemonSourceOptions& options) {
  if (options.router.empty() == options.nodes.empty()) {
    return absl::InvalidArgumentError(
        "worker: give a router address or a list of nodes (one of the two)");
  }
  std::unique_ptr<DaemonBlockSource> s(new DaemonBlockSource(options));
  if (!options.router.empty()) {
    auto r = RouterClient::Create(options.router, options.fetch_deadline_ms);
    if (!r.ok()) return r.status();
    s->router_ = std::move(*r);
  }
  return s;
}

absl::StatusOr<std::vector<std::string>> DaemonBlockSource::NodesFor(
    std::span<const BlockKey> keys) {
  if (router_ == nullptr) return options_.nodes;
  bool refresh = false;
  {
    MutexLock lock(&mu_);
    const auto now = Clock::now();
    if (now - members_at_ > kMembersMaxAge) {
      members_at_ = now;
      refresh = true;
    }
  }
  if (refresh) {
    absl::Status st = router_->RefreshMembers();
    if (!st.ok()) {
      spdlog::warn("worker: router membership not refreshed: {}", st.ToString());
    }
  }
  auto route = router_->RouteLocally(keys);
  if (!route.ok()) {
    return absl::UnavailableError(
        absl::StrCat("worker: no kvtierd node to read from: ", route.status().message()));
  }
  return route->nodes;
}

std::shared_ptr<CacheClient> DaemonBlockSource::ClientFor(const std::string& node,
                                                          const std::string& tenant,
                                                          const std::string& token) {
  const std::string id = absl::StrCat(node, "\n", tenant, "\n", token);
  MutexLock lock(&mu_);
  auto it = clients_.find(id);
  if (it != clients_.end()) return it->second;
  // One client (and connection) per node, tenant and token: bounded, so that callers sending
  // many different tokens cannot pile up connections. A client dropped here lives on in the
  // requests using it.
  if (clients_.size() >= kMaxClients) clients_.erase(clients_.begin());
  ClientOptions o;
  o.address = node;
  o.tenant = tenant;
  o.bearer_token = token;
  o.deadline_ms = options_.fetch_deadline_ms;
  o.max_attempts = 2;  // a node that is gone costs one retry, then the next node is asked
  o.use_ucx = options_.use_ucx;
  auto made = CacheClient::Create(o);
  if (!made.ok()) return nullptr;  // an empty address or tenant, which callers rule out
  std::shared_ptr<CacheClient> c = std::move(*made);
  clients_.emplace(id, c);
  return c;
}

absl::StatusOr<std::vector<DaemonBlockSource::Segment>> DaemonBlockSource::Locate(
    const std::string& tenant, const std::string& token, size_t sequence, const Plan& plan,
    absl::FunctionRef<bool(size_t)> needs_fetch) {
  const size_t n = plan.keys.size();
  std::vector<Segment> segments;
  std::vector<std::string> order;
  for (size_t p = 0; p < n;) {
    if (!needs_fetch(p)) {
      ++p;
      continue;
    }
    size_t run_end = p;
    while (run_end < n && needs_fetch(run_end)) ++run_end;
    if (order.empty()) {
      auto nodes = NodesFor(plan.keys);
      if (!nodes.ok()) return nodes.status();
      order = std::move(*nodes);
    }
    while (p < run_end) {
      size_t best = 0;
      std::string holder;
      for (const std::string& node : order) {
        std::shared_ptr<CacheClient> c = ClientFor(node, tenant, token);
        if (c == nullptr) return absl::InvalidArgumentError("worker: empty node address");
        auto found = c->Lookup(std::span(plan.keys).subspan(p, run_end - p));
        if (!found.ok()) {
          if (found.status().code() == absl::StatusCode::kUnavailable ||
              found.status().code() == absl::StatusCode::kDeadlineExceeded) {
            spdlog::warn("worker: node {} did not answer a lookup: {}", node,
                         found.status().ToString());
            continue;
          }
          return found.status();  // bad token, unknown tenant: the caller's to fix
        }
        if (found->matched > best) {
          best = found->matched;
          holder = node;
        }
        if (best == run_end - p) break;
      }
      if (best == 0) {
        return absl::NotFoundError(absl::StrCat(
            "sequence ", sequence, ": block ", p, " (key ", plan.keys[p].Hex(),
            ") is not cached on any of ", order.size(), " nodes; first missing block position ", p,
            ", recompute from token ", p * plan.block_tokens));
      }
      segments.push_back({holder, p, p + best});
      p += best;
    }
  }
  return segments;
}

absl::Status DaemonBlockSource::Fetch(const std::string& tenant, const std::string& token,
                                      size_t sequence, Plan& plan, DecodeStepStats* stats) {
  const size_t per_block = plan.layers.size();
  auto block_needs_fetch = [&](size_t b) {
    for (size_t i = 0; i < per_block; ++i) {
      if (!plan.claims[plan.Unit(b, i)].fetch.empty()) return true;
    }
    return false;
  };
  auto located = Locate(tenant, token, sequence, plan, block_needs_fetch);
  if (!located.ok()) return located.status();
  const std::vector<Segment>& segments = *located;
  if (segments.empty()) return absl::OkStatus();

  // The reads of each node, in batches of at most read_batch_bytes of whole blocks (a lease
  // pins whole blocks).
  const uint64_t slice_bytes = plan.unit_bytes / plan.slices;
  struct Batch {
    std::string node;
    std::vector<RangeRead> reads;
    size_t blocks = 0;
    uint64_t bytes = 0;
  };
  std::vector<Batch> batches;
  const uint64_t whole_block = plan.BlockBytes();
  const size_t blocks_per_batch =
      std::max<uint64_t>(1, options_.read_batch_bytes / std::max<uint64_t>(whole_block, 1));
  for (const Segment& seg : segments) {
    for (size_t b = seg.begin; b < seg.end; ++b) {
      if (!block_needs_fetch(b)) continue;
      if (batches.empty() || batches.back().node != seg.node ||
          batches.back().blocks == blocks_per_batch) {
        batches.push_back({seg.node, {}, 0, 0});
      }
      Batch& batch = batches.back();
      ++batch.blocks;
      for (size_t i = 0; i < per_block; ++i) {
        const BlockPool::Claim& c = plan.claims[plan.Unit(b, i)];
        // Consecutive slices are one range.
        std::vector<uint32_t> s = c.fetch;
        std::sort(s.begin(), s.end());
        for (size_t k = 0; k < s.size();) {
          size_t e = k + 1;
          while (e < s.size() && s[e] == s[e - 1] + 1) ++e;
          const uint64_t off = uint64_t{s[k]} * slice_bytes;
          const uint64_t len = uint64_t{e - k} * slice_bytes;
          batch.reads.push_back({.key = plan.keys[b],
                                 .offset = plan.layer_offset[plan.layers[i]] + off,
                                 .dst = std::span(c.unit->data.get() + off, len)});
          batch.bytes += len;
          k = e;
        }
      }
    }
  }
  // Each node's batches in order.
  absl::flat_hash_map<std::string, std::vector<Batch*>> by_node;
  for (Batch& b : batches) by_node[b.node].push_back(&b);
  struct Outcome {
    absl::Status status;
    uint64_t ucx = 0, grpc = 0;
  };
  std::vector<const std::vector<Batch*>*> lists;
  for (const auto& [node, list] : by_node) lists.push_back(&list);
  std::vector<Outcome> outcomes(lists.size());
  // Nodes in parallel on the process's fetch threads (the caller reads one of them too).
  fetchers_.ParallelFor(lists.size(), [&](size_t k) {
    Outcome& out = outcomes[k];
    std::shared_ptr<CacheClient> c = ClientFor((*lists[k])[0]->node, tenant, token);
    if (c == nullptr) {
      out.status = absl::InvalidArgumentError("worker: empty node address");
      return;
    }
    for (Batch* b : *lists[k]) {
      bool over_ucx = false;
      out.status = c->ReadRanges(b->reads, &over_ucx);
      if (!out.status.ok()) return;
      // Without UCX the daemon sends whole blocks.
      if (over_ucx) {
        out.ucx += b->bytes;
      } else {
        out.grpc += b->blocks * whole_block;
      }
    }
  });
  for (const Outcome& o : outcomes) {
    stats->bytes_fetched += o.ucx + o.grpc;
    stats->bytes_fetched_ucx += o.ucx;
  }
  stats->nodes_read += static_cast<uint32_t>(lists.size());
  for (const Outcome& o : outcomes) {
    if (!o.status.ok()) {
      return absl::Status(o.status.code(),
                          absl::StrCat("sequence ", sequence, ": ", o.status.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier::worker
