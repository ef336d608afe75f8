#include "router/route_service.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <deque>
#include <tuple>
#include <fstream>
#include <cmath>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/rpc_metrics.h"
#include "spdlog/spdlog.h"

namespace kvtier::router {
namespace {

constexpr double kLoadHalfLifeS = 60;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct RouteServiceImpl::Member {
  int id = -1;  // bit in the cache-aware index (-1: beyond 64 members, not indexed)
  std::atomic<bool> gone{false};  // left the membership: its watcher stops
  std::mutex watch_mu;
  grpc::ClientContext* watch_ctx = nullptr;  // guarded by watch_mu
  std::unique_ptr<v1::CacheService::Stub> cache;
  RingNode node;
  bool healthy = true;
  bool reported = false;  // load comes from Report
  int failures = 0;
  uint64_t decisions = 0;
  double load = 0;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  prometheus::Counter* decisions_metric = nullptr;
  prometheus::Counter* ejections_metric = nullptr;
  prometheus::Gauge* load_metric = nullptr;
  prometheus::Gauge* healthy_metric = nullptr;
  // From the node's CacheService.Stats, asked after each good probe (for the status page).
  bool stats_ok = false;
  TierFill host, nvme;
  // (seconds, Lookup blocks hit, missed since the node started) of the last minute's answers,
  // and the counts at the previous probe round (for the cluster's history).
  std::deque<std::tuple<double, uint64_t, uint64_t>> lookups;
  uint64_t round_hit = 0, round_missed = 0;
};

struct RouteServiceImpl::Metrics {
  prometheus::Family<prometheus::Counter>* decisions = nullptr;
  prometheus::Family<prometheus::Counter>* ejections = nullptr;
  prometheus::Family<prometheus::Gauge>* load = nullptr;
  prometheus::Family<prometheus::Gauge>* healthy = nullptr;
  prometheus::Histogram* latency = nullptr;
  prometheus::Gauge* imbalance = nullptr;
  prometheus::Gauge* popularity_bytes = nullptr;
  prometheus::Gauge* placements = nullptr;
  prometheus::Gauge* index_keys = nullptr;
  prometheus::Counter* index_dropped = nullptr;
  std::unique_ptr<RpcMetrics> rpcs;
};

absl::StatusOr<std::vector<RingNode>> ParseNodeList(const std::string& list) {
  std::vector<RingNode> nodes;
  for (absl::string_view entry : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    std::vector<std::string> parts = absl::StrSplit(entry, '=');
    RingNode n{.name = parts[0], .weight = 1.0};
    if (parts[0].rfind(':') == std::string::npos || parts.size() > 2 ||
        (parts.size() == 2 && (!absl::SimpleAtod(parts[1], &n.weight) || n.weight <= 0))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "nodes: '", std::string(entry), "' is not host:port or host:port=weight (weight > 0)"));
    }
    for (const RingNode& other : nodes) {
      if (other.name == n.name) {
        return absl::InvalidArgumentError(absl::StrCat("nodes: ", n.name, " listed twice"));
      }
    }
    nodes.push_back(n);
  }
  if (nodes.empty()) return absl::InvalidArgumentError("nodes: the list is empty");
  return nodes;
}

absl::StatusOr<std::vector<RingNode>> ReadNodeFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("nodes file: cannot read ", path));
  std::string line, list;
  while (std::getline(in, line)) {
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    line = std::string(absl::StripAsciiWhitespace(line));
    if (line.empty()) continue;
    list += (list.empty() ? "" : ",") + line;
  }
  auto nodes = ParseNodeList(list);
  if (!nodes.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", nodes.status().message()));
  }
  return nodes;
}

absl::StatusOr<std::vector<RingNode>> ResolveNodes(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("nodes-dns: '", host_port, "' is not NAME:PORT"));
  }
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("nodes-dns: ", host, " does not resolve: ", gai_strerror(rc)));
  }
  std::vector<std::string> names;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof(ip));
      names.push_back(absl::StrCat(ip, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip,
                sizeof(ip));
      names.push_back(absl::StrCat("[", ip, "]:", port));
    }
  }
  freeaddrinfo(res);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  std::vector<RingNode> nodes;
  for (const std::string& n : names) nodes.push_back({n, 1.0});
  if (nodes.empty()) return absl::UnavailableError("nodes-dns: " + host + " has no addresses");
  return nodes;
}

RouteServiceImpl::RouteServiceImpl(std::vector<RingNode> nodes, RouterOptions options,
                                   HealthOptions health, prometheus::Registry* registry,
                                   CacheAwareOptions cache_aware)
    : health_(health),
      cache_aware_(cache_aware),
      router_({}, options),
      metrics_(std::make_unique<Metrics>()) {
  if (registry != nullptr) {
    metrics_->decisions = &prometheus::BuildCounter()
                               .Name("kvtier_router_decisions_total")
                               .Help("Requests routed, by first-choice node.")
                               .Register(*registry);
    metrics_->ejections = &prometheus::BuildCounter()
                               .Name("kvtier_router_ejections_total")
                               .Help("Times a node was ejected for failing health probes.")
                               .Register(*registry);
    metrics_->load = &prometheus::BuildGauge()
                          .Name("kvtier_router_load_blocks")
                          .Help("Prefill work of each node (blocks, one-minute half-life).")
                          .Register(*registry);
    metrics_->healthy = &prometheus::BuildGauge()
                             .Name("kvtier_router_node_healthy")
                             .Help("1 while the node is a member and passes its health probes.")
                             .Register(*registry);
    metrics_->latency = &prometheus::BuildHistogram()
                             .Name("kvtier_router_decision_seconds")
                             .Help("Time to route one request, key hashing included.")
                             .Register(*registry)
                             .Add({}, prometheus::Histogram::BucketBoundaries{
                                          1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
                                          1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1});
    metrics_->imbalance = &prometheus::BuildGauge()
                               .Name("kvtier_router_imbalance")
                               .Help("Max over healthy nodes of load / mean load.")
                               .Register(*registry)
                               .Add({});
    metrics_->popularity_bytes = &prometheus::BuildGauge()
                                      .Name("kvtier_router_index_bytes")
                                      .Help("Memory of the prefix popularity sketch and the "
                                            "placement memory.")
                                      .Register(*registry)
                                      .Add({});
    metrics_->popularity_bytes->Set(
        static_cast<double>(router_.popularity_bytes() + router_.placement_bytes()));
    metrics_->placements = &prometheus::BuildGauge()
                                .Name("kvtier_router_placements")
                                .Help("Routing keys whose node is remembered.")
                                .Register(*registry)
                                .Add({});
    metrics_->index_keys = &prometheus::BuildGauge()
                                .Name("kvtier_router_index_keys")
                                .Help("Blocks in the cache-aware index (which node holds what).")
                                .Register(*registry)
                                .Add({});
    metrics_->rpcs = std::make_unique<RpcMetrics>(*registry, "kvtier_router", "RouteService",
                                                  std::vector<std::string>{"Route", "Members",
                                                                           "Report"});
    prometheus::BuildGauge()
        .Name("kvtier_router_load_bound")
        .Help("The bound on kvtier_router_imbalance: no healthy node takes more than this times "
              "the mean load (--load-factor), one mean request aside.")
        .Register(*registry)
        .Add({})
        .Set(options.load_factor);
    metrics_->index_dropped = &prometheus::BuildCounter()
                                   .Name("kvtier_router_index_dropped_total")
                                   .Help("Stored-block events not indexed: the index was full.")
                                   .Register(*registry)
                                   .Add({});
  }
  SetMembers(std::move(nodes));
  {
    MutexLock lock(&mu_);
    last_decay_s_ = Now();
  }
  prober_ = std::thread([this] { ProbeLoop(); });
}

void RouteServiceImpl::SetMembers(std::vector<RingNode> nodes) {
  MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Member>> next;
  bool changed = nodes.size() != members_.size();
  for (const RingNode& n : nodes) {
    std::shared_ptr<Member> m;
    for (const auto& old : members_) {
      if (old->node.name == n.name) m = old;
    }
    if (m != nullptr) {
      changed |= m->node.weight != n.weight;
      m->node.weight = n.weight;
      next.push_back(std::move(m));
      continue;
    }
    changed = true;
    m = std::make_shared<Member>();
    m->node = n;
    // Reconnect attempts no further apart than the probes, so a recovered node is seen soon.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(health_.probe_interval_ms, 1000));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, health_.probe_interval_ms);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    m->health = grpc::health::v1::Health::NewStub(
        grpc::CreateCustomChannel(n.name, grpc::InsecureChannelCredentials(), args));
    if (metrics_->decisions != nullptr) {
      m->decisions_metric = &metrics_->decisions->Add({{"node", n.name}});
      m->ejections_metric = &metrics_->ejections->Add({{"node", n.name}});
      m->load_metric = &metrics_->load->Add({{"node", n.name}});
      m->healthy_metric = &metrics_->healthy->Add({{"node", n.name}});
      m->healthy_metric->Set(1);
    }
    spdlog::info("kvtier-router: {} joined", n.name);
    m->cache = v1::CacheService::NewStub(
        grpc::CreateCustomChannel(n.name, grpc::InsecureChannelCredentials(), args));
    if (cache_aware_.enabled) {
      m->id = next_member_id_ < 64 ? next_member_id_++ : -1;
      watchers_.emplace_back([this, m] { WatchLoop(m); });
    }
    next.push_back(std::move(m));
  }
  for (const auto& old : members_) {
    if (std::find(next.begin(), next.end(), old) != next.end()) continue;
    spdlog::info("kvtier-router: {} left", old->node.name);
    // A departed node's series go with it (a node that is not a member is neither healthy nor
    // unhealthy). Every use of these metrics is under mu_, for members only.
    if (old->healthy_metric != nullptr) {
      metrics_->decisions->Remove(std::exchange(old->decisions_metric, nullptr));
      metrics_->ejections->Remove(std::exchange(old->ejections_metric, nullptr));
      metrics_->load->Remove(std::exchange(old->load_metric, nullptr));
      metrics_->healthy->Remove(std::exchange(old->healthy_metric, nullptr));
    }
    old->gone = true;
    std::lock_guard watch(old->watch_mu);
    if (old->watch_ctx != nullptr) old->watch_ctx->TryCancel();
  }
  // The ring maps its node indexes to positions in members_: rebuild whenever those moved.
  changed |= next.size() != members_.size();
  for (size_t i = 0; !changed && i < next.size(); ++i) changed = next[i] != members_[i];
  members_ = std::move(next);
  if (changed) RebuildLocked();
}

RouteServiceImpl::~RouteServiceImpl() {
  stop_ = true;
  prober_.join();
  std::vector<std::thread> watchers;
  {
    MutexLock lock(&mu_);
    for (auto& m : members_) {
      std::lock_guard watch(m->watch_mu);
      if (m->watch_ctx != nullptr) m->watch_ctx->TryCancel();
    }
    watchers.swap(watchers_);
  }
  for (auto& t : watchers) t.join();
}

void RouteServiceImpl::WatchLoop(std::shared_ptr<Member> m) {
  const uint64_t bit = m->id >= 0 ? uint64_t{1} << m->id : 0;
  auto forget = [&] {
    MutexLock lock(&index_mu_);
    for (auto it = index_.begin(); it != index_.end();) {
      it->second &= ~bit;
      if (it->second == 0) {
        index_.erase(it++);
      } else {
        ++it;
      }
    }
  };
  while (!stop_ && !m->gone && bit != 0) {
    grpc::ClientContext ctx;
    {
      std::lock_guard watch(m->watch_mu);
      m->watch_ctx = &ctx;
    }
    if (stop_ || m->gone) ctx.TryCancel();
    auto reader = m->cache->WatchBlocks(&ctx, v1::WatchBlocksRequest());
    v1::BlockEventBatch batch;
    while (reader->Read(&batch)) {
      if (batch.reset()) forget();
      const std::string& ev = batch.events();
      MutexLock lock(&index_mu_);
      for (size_t i = 0; i + BlockKey::kBytes + 1 <= ev.size(); i += BlockKey::kBytes + 1) {
        const BlockKey key = BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(ev.data()) + i);
        if (ev[i + BlockKey::kBytes] != 0) {
          auto it = index_.find(key);
          if (it != index_.end()) {
            it->second |= bit;
          } else if (index_.size() < cache_aware_.max_keys) {
            index_.emplace(key, bit);
          } else if (metrics_->index_dropped != nullptr) {
            metrics_->index_dropped->Increment();
          }
        } else if (auto it = index_.find(key); it != index_.end()) {
          it->second &= ~bit;
          if (it->second == 0) index_.erase(it);
        }
      }
      if (metrics_->index_keys != nullptr) metrics_->index_keys->Set(index_.size());
    }
    (void)reader->Finish();
    {
      std::lock_guard watch(m->watch_mu);
      m->watch_ctx = nullptr;
    }
    forget();  // what it held is unknown until the next stream says
    for (int w = 0; w < health_.probe_interval_ms && !stop_ && !m->gone; w += 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

size_t RouteServiceImpl::CachedPrefix(std::span<const BlockKey> store_keys, int id) {
  if (id < 0) return 0;
  const uint64_t bit = uint64_t{1} << id;
  MutexLock lock(&index_mu_);
  size_t n = 0;
  while (n < store_keys.size()) {
    auto it = index_.find(store_keys[n]);
    if (it == index_.end() || (it->second & bit) == 0) break;
    ++n;
  }
  return n;
}

void RouteServiceImpl::RebuildLocked() {
  std::vector<RingNode> healthy;
  ring_members_.clear();
  for (size_t i = 0; i < members_.size(); ++i) {
    if (!members_[i]->healthy) continue;
    healthy.push_back(members_[i]->node);
    ring_members_.push_back(static_cast<int>(i));
  }
  router_.SetNodes(std::move(healthy));
}

void RouteServiceImpl::DecayLocked() {
  const double now = Now();
  const double f = std::exp2(-(now - last_decay_s_) / kLoadHalfLifeS);
  last_decay_s_ = now;
  for (auto& m : members_) m->load *= f;
}

void RouteServiceImpl::SetLoadMetricsLocked() {
  if (metrics_->imbalance == nullptr) return;
  for (int m : ring_members_) members_[m]->load_metric->Set(members_[m]->load);
  metrics_->imbalance->Set(ImbalanceLocked());
}

void RouteServiceImpl::AddHistoryLocked() {
  uint64_t hit = 0, missed = 0;
  for (const auto& m : members_) {
    if (!m->stats_ok || m->lookups.empty()) continue;
    const auto& [t, h, x] = m->lookups.back();
    // A restarted daemon counts from 0 again.
    hit += h >= m->round_hit ? h - m->round_hit : h;
    missed += x >= m->round_missed ? x - m->round_missed : x;
    m->round_hit = h;
    m->round_missed = x;
  }
  if (hit + missed == 0) return;
  const double wall =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  history_.emplace_back(wall, static_cast<double>(hit) / static_cast<double>(hit + missed));
  if (history_.size() > kHistoryPoints) history_.pop_front();
}

RouterStatus RouteServiceImpl::Status() {
  MutexLock lock(&mu_);
  DecayLocked();
  RouterStatus out;
  uint64_t hit = 0, missed = 0;
  for (const auto& m : members_) {
    NodeStatus n{.node = m->node.name,
                 .healthy = m->healthy,
                 .load = m->load,
                 .decisions = m->decisions};
    if (m->stats_ok) {
      n.host = m->host;
      n.nvme = m->nvme;
    }
    if (m->lookups.size() >= 2) {
      const auto& [t0, h0, x0] = m->lookups.front();
      const auto& [t1, h1, x1] = m->lookups.back();
      if (h1 >= h0 && x1 >= x0 && h1 + x1 > h0 + x0) {
        n.hit_ratio = static_cast<double>(h1 - h0) / static_cast<double>(h1 + x1 - h0 - x0);
        hit += h1 - h0;
        missed += x1 - x0;
      }
    }
    out.nodes.push_back(std::move(n));
  }
  if (hit + missed > 0) {
    out.hit_ratio = static_cast<double>(hit) / static_cast<double>(hit + missed);
  }
  out.imbalance = ImbalanceLocked();
  out.load_bound = router_.options().load_factor;
  out.history.assign(history_.begin(), history_.end());
  return out;
}

double RouteServiceImpl::ImbalanceLocked() const {
  double total = 0, max = 0;
  for (int m : ring_members_) {
    total += members_[m]->load;
    max = std::max(max, members_[m]->load);
  }
  return total > 0 ? max * ring_members_.size() / total : 0;
}

void RouteServiceImpl::ProbeLoop() {
  while (!stop_) {
    std::vector<std::shared_ptr<Member>> snapshot;
    {
      MutexLock lock(&mu_);
      snapshot = members_;
    }
    for (const std::shared_ptr<Member>& member : snapshot) {
      if (stop_) break;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(health_.probe_timeout_ms));
      grpc::health::v1::HealthCheckRequest req;
      grpc::health::v1::HealthCheckResponse res;
      const grpc::Status st = member->health->Check(&ctx, req, &res);
      const bool ok = st.ok() && res.status() == grpc::health::v1::HealthCheckResponse::SERVING;
      // Its tiers and Lookup counts, for the status page (UNAUTHENTICATED from a daemon with
      // auth: the page then shows none).
      v1::StatsResponse stats;
      bool stats_ok = false;
      if (ok) {
        grpc::ClientContext sctx;
        sctx.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(health_.probe_timeout_ms));
        stats_ok = member->cache->Stats(&sctx, v1::StatsRequest(), &stats).ok();
      }
      MutexLock lock(&mu_);
      if (std::find(members_.begin(), members_.end(), member) == members_.end()) continue;
      Member& m = *member;
      m.stats_ok = stats_ok;
      if (stats_ok) {
        for (const v1::TierStats& t : stats.tiers()) {
          const TierFill fill{t.used_bytes(), t.capacity_bytes()};
          if (t.tier() == v1::TIER_HOST) m.host = fill;
          if (t.tier() == v1::TIER_NVME) m.nvme = fill;
        }
        const double now = Now();
        m.lookups.emplace_back(now, stats.lookup_blocks_hit(), stats.lookup_blocks_missed());
        // Keep one answer at least a minute old as the window's start.
        while (m.lookups.size() > 2 && std::get<0>(m.lookups[1]) <= now - 60) m.lookups.pop_front();
      }
      if (ok) {
        m.failures = 0;
        if (!m.healthy) {
          m.healthy = true;
          spdlog::info("kvtier-router: {} is healthy again; re-admitted", m.node.name);
          if (m.healthy_metric != nullptr) m.healthy_metric->Set(1);
          RebuildLocked();
        }
      } else if (++m.failures >= health_.failures_to_eject && m.healthy) {
        m.healthy = false;
        spdlog::warn("kvtier-router: {} failed {} health probes ({}); ejected", m.node.name,
                     m.failures, st.ok() ? "not serving" : st.error_message());
        if (m.healthy_metric != nullptr) m.healthy_metric->Set(0);
        if (m.ejections_metric != nullptr) m.ejections_metric->Increment();
        RebuildLocked();
      }
    }
    {
      // Loads decay while no request comes: the gauges follow them between requests too.
      MutexLock lock(&mu_);
      DecayLocked();
      SetLoadMetricsLocked();
      AddHistoryLocked();
    }
    for (int waited = 0; waited < health_.probe_interval_ms && !stop_; waited += 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

template <typename F>
grpc::Status RouteServiceImpl::Observed(const char* rpc, F body) {
  const double start = Now();
  grpc::Status st = body();
  if (metrics_->rpcs != nullptr) metrics_->rpcs->Observe(rpc, st.error_code(), Now() - start);
  return st;
}

grpc::Status RouteServiceImpl::Route(grpc::ServerContext*, const v1::RouteRequest* request,
                                     v1::RouteResponse* response) {
  return Observed("Route", [&] { return RouteImpl(request, response); });
}

grpc::Status RouteServiceImpl::Members(grpc::ServerContext*, const v1::MembersRequest*,
                                       v1::MembersResponse* response) {
  return Observed("Members", [&] { return MembersImpl(response); });
}

grpc::Status RouteServiceImpl::Report(grpc::ServerContext*, const v1::ReportRequest* request,
                                      v1::ReportResponse*) {
  return Observed("Report", [&] { return ReportImpl(request); });
}

grpc::Status RouteServiceImpl::RouteImpl(const v1::RouteRequest* request,
                                         v1::RouteResponse* response) {
  const double start = Now();
  if (request->tenant().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tenant: must be set");
  }
  if (request->tokens().empty() == request->packed_keys().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "give the prompt as tokens or as packed_keys (one of the two)");
  }
  if (request->packed_keys().size() % BlockKey::kBytes != 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "packed_keys: not a multiple of 16 bytes");
  }
  std::vector<BlockKey> keys;
  for (size_t i = 0; i < request->packed_keys().size(); i += BlockKey::kBytes) {
    keys.push_back(BlockKey::FromBytes(
        reinterpret_cast<const uint8_t*>(request->packed_keys().data()) + i));
  }
  std::optional<ChainHasher> hasher;
  if (!request->tokens().empty()) {
    auto h = ChainHasher::Create({.tenant_salt = request->tenant(),
                                  .model_id = request->model(),
                                  .layout_fingerprint = request->layout_fingerprint(),
                                  .adapter_id = request->adapter()},
                                 request->block_tokens() == 0 ? 16 : request->block_tokens());
    if (!h.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(h.status().message()));
    }
    hasher = std::move(*h);
  }
  MutexLock lock(&mu_);
  if (ring_members_.empty()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "no healthy kvtierd node: every member failed its health probes");
  }
  DecayLocked();
  std::vector<double> loads;
  for (int m : ring_members_) loads.push_back(members_[m]->load);
  const RouteChoice c =
      hasher.has_value()
          ? router_.RouteTokens(*hasher,
                                std::span(request->tokens().data(), request->tokens().size()),
                                loads, mean_request_blocks_)
          : router_.Route(keys, loads, mean_request_blocks_);
  std::vector<int> order;
  router_.ring().Candidates(RingHash(c.routing_key), router_.ring().size(), &order);
  int node = c.node;
  if (cache_aware_.enabled) {
    // Among the nodes within the bound, the one holding the longest prefix; ties in ring order.
    if (hasher.has_value()) {
      keys = hasher->Keys(std::span(request->tokens().data(), request->tokens().size()));
    }
    TenantKeyer tenant_key(request->tenant());
    for (BlockKey& k : keys) k = tenant_key(k);
    size_t best = CachedPrefix(keys, members_[ring_members_[node]]->id);
    for (int n : order) {
      if (best == keys.size()) break;
      if (!router_.WithinBound(n, loads, mean_request_blocks_)) continue;
      const size_t cached = CachedPrefix(keys, members_[ring_members_[n]]->id);
      if (cached > best) {
        best = cached;
        node = n;
      }
    }
    response->set_expected_cached_blocks(static_cast<uint32_t>(best));
    if (node != c.node) router_.Remember(c.routing_key, node);  // its turns follow it there
  }
  // The chosen node first, then the rest in ring order (where to go if it fails).
  response->add_nodes(members_[ring_members_[node]]->node.name);
  for (int n : order) {
    if (n != node) response->add_nodes(members_[ring_members_[n]]->node.name);
  }
  response->set_routing_depth(static_cast<uint32_t>(c.depth));
  Member& chosen = *members_[ring_members_[node]];
  const size_t blocks = hasher.has_value()
                            ? request->tokens().size() / hasher->block_tokens()
                            : keys.size();
  const double cost = static_cast<double>(std::max<size_t>(blocks, 1));
  if (!chosen.reported) chosen.load += cost;
  mean_request_blocks_ =
      mean_request_blocks_ == 0 ? cost : mean_request_blocks_ + (cost - mean_request_blocks_) / 32;
  ++chosen.decisions;
  if (chosen.decisions_metric != nullptr) {
    chosen.decisions_metric->Increment();
    SetLoadMetricsLocked();
    metrics_->placements->Set(static_cast<double>(router_.placements()));
    metrics_->latency->Observe(Now() - start);
  }
  return grpc::Status::OK;
}

grpc::Status RouteServiceImpl::ReportImpl(const v1::ReportRequest* request) {
  MutexLock lock(&mu_);
  for (auto& m : members_) {
    if (m->node.name != request->node()) continue;
    DecayLocked();
    if (!m->reported) m->load = 0;  // from now on, reported work only
    m->reported = true;
    m->load += static_cast<double>(request->prefilled_blocks());
    if (m->load_metric != nullptr) m->load_metric->Set(m->load);
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND, "report: " + request->node() +
                                                       " is not a member");
}

grpc::Status RouteServiceImpl::MembersImpl(v1::MembersResponse* response) {
  MutexLock lock(&mu_);
  DecayLocked();
  for (const auto& m : members_) {
    v1::Member* out = response->add_members();
    out->set_address(m->node.name);
    out->set_weight(m->node.weight);
    out->set_healthy(m->healthy);
    out->set_decisions(m->decisions);
    out->set_load(m->load);
  }
  response->set_load_factor(router_.options().load_factor);
  response->set_points_per_weight(static_cast<uint32_t>(router_.options().points_per_weight));
  return grpc::Status::OK;
}

}  // namespace kvtier::router
