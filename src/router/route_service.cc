#include "router/route_service.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/rpc_metrics.h"
#include "router/daemon_watch.h"
#include "router/engine_watch.h"
#include "spdlog/spdlog.h"

namespace kvtier::router {
namespace {

double Seconds(const Clock* clock) { return static_cast<double>(clock->NowMicros()) / 1e6; }

// A request's chain of keys, computed as far as it is asked for: from its tokens, block by block
// (kept, for a key asked again), or from the keys it gave; tenant-hashed when a tenant is given
// (store keys, as daemons index them), plain otherwise (as engines' blocks are indexed).
class LazyKeys {
 public:
  LazyKeys(std::span<const uint32_t> tokens, const ChainHasher* hasher,
           std::span<const BlockKey> keys, std::optional<std::string_view> tenant)
      : tokens_(tokens), hasher_(hasher), keys_(keys) {
    if (tenant.has_value()) tenant_key_.emplace(*tenant);
  }
  size_t size() const {
    return hasher_ != nullptr ? tokens_.size() / hasher_->block_tokens() : keys_.size();
  }
  BlockKey operator()(size_t i) {
    if (hasher_ == nullptr) return Keyed(keys_[i]);
    const uint32_t bt = hasher_->block_tokens();
    while (chain_.size() <= i) {
      const size_t at = chain_.size();
      chain_.push_back(
          hasher_->Next(at == 0 ? hasher_->root() : chain_.back(), tokens_.subspan(at * bt, bt)));
    }
    return Keyed(chain_[i]);
  }

 private:
  BlockKey Keyed(const BlockKey& key) { return tenant_key_ ? (*tenant_key_)(key) : key; }

  std::span<const uint32_t> tokens_;
  const ChainHasher* hasher_;
  std::span<const BlockKey> keys_;
  std::optional<TenantKeyer> tenant_key_;
  std::vector<BlockKey> chain_;
};

}  // namespace

struct RouteServiceImpl::Member {
  RingNode node;
  uint32_t index_id = 0;  // in the CacheIndex
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_stub;
  std::unique_ptr<v1::CacheService::Stub> cache;
  std::unique_ptr<DaemonWatch> watch;   // cache-aware mode
  uint32_t engine_index_id = 0;         // its engine's blocks in the CacheIndex
  std::unique_ptr<EngineWatch> engine;  // where the engine's events are configured
  EngineWatch::Counters engine_seen;    // already counted in the metrics
  NodeHealth health;
  uint64_t decisions = 0;
  prometheus::Counter* decisions_metric = nullptr;
  prometheus::Counter* ejections_metric = nullptr;
  prometheus::Gauge* load_metric = nullptr;
  prometheus::Gauge* healthy_metric = nullptr;
  prometheus::Gauge* watching_metric = nullptr;  // cache-aware mode
  // From the node's CacheService.Stats, asked after each good probe (for the status page).
  bool stats_ok = false;
  TierFill host, nvme;
  // (seconds, Lookup blocks hit, missed since the node started) of the last minute's answers,
  // and the counts at the previous probe round (for the cluster's history).
  std::deque<std::tuple<double, uint64_t, uint64_t>> lookups;
  uint64_t round_hit = 0, round_missed = 0;
};

struct RouteServiceImpl::Peer {
  ~Peer() { sync.reset(); }  // its thread applies to the fields below
  std::unique_ptr<PeerSync> sync;
  // Applied under mu_: the sender's replica id and its work totals at its last batch.
  uint64_t replica = 0;
  absl::flat_hash_map<std::string, std::pair<double, double>> work;
  prometheus::Gauge* synced_metric = nullptr;
};

struct RouteServiceImpl::Metrics {
  prometheus::Family<prometheus::Counter>* decisions = nullptr;
  prometheus::Family<prometheus::Counter>* ejections = nullptr;
  prometheus::Family<prometheus::Gauge>* load = nullptr;
  prometheus::Family<prometheus::Gauge>* healthy = nullptr;
  prometheus::Family<prometheus::Gauge>* watching = nullptr;
  prometheus::Histogram* latency = nullptr;
  prometheus::Gauge* imbalance = nullptr;
  prometheus::Gauge* popularity_bytes = nullptr;
  prometheus::Gauge* placements = nullptr;
  prometheus::Gauge* index_keys = nullptr;
  prometheus::Counter* index_dropped = nullptr;
  prometheus::Counter* engine_batches = nullptr;
  prometheus::Counter* engine_lost = nullptr;
  prometheus::Counter* engine_malformed = nullptr;
  prometheus::Family<prometheus::Gauge>* peer_synced = nullptr;
  prometheus::Counter* peer_decisions = nullptr;
  prometheus::Counter* peer_decisions_lost = nullptr;
  uint64_t index_dropped_seen = 0;  // CacheIndex::dropped() already counted
  std::unique_ptr<RpcMetrics> rpcs;
};

RouteServiceImpl::RouteServiceImpl(std::vector<RingNode> nodes, RouterOptions options,
                                   HealthOptions health, prometheus::Registry* registry,
                                   CacheAwareOptions cache_aware, NodeCredentials credentials,
                                   const Clock* clock)
    : health_(health),
      cache_aware_(cache_aware),
      credentials_(std::move(credentials)),
      clock_(clock != nullptr ? clock : SystemClock::Default()),
      prober_(health, credentials_),
      index_(cache_aware.max_keys),
      router_({}, options),
      loads_(clock_),
      metrics_(std::make_unique<Metrics>()),
      replica_id_(std::random_device()() | (uint64_t{std::random_device()()} << 32)) {
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
    metrics_->watching = &prometheus::BuildGauge()
                              .Name("kvtier_router_node_watched")
                              .Help(
                                  "Cache-aware mode: 1 while the node's block event stream is "
                                  "open (0: the index knows nothing of the node; see the log)")
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
                                      .Help(
                                          "Memory of the prefix popularity sketch and the "
                                          "placement memory.")
                                      .Register(*registry)
                                      .Add({});
    {
      MutexLock lock(&mu_);
      metrics_->popularity_bytes->Set(
          static_cast<double>(router_.popularity_bytes() + router_.placement_bytes()));
    }
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
    metrics_->rpcs =
        std::make_unique<RpcMetrics>(*registry, "kvtier_router", "RouteService",
                                     std::vector<std::string>{"Route", "Members", "Report"});
    prometheus::BuildGauge()
        .Name("kvtier_router_load_bound")
        .Help(
            "The bound on kvtier_router_imbalance: no healthy node takes more than this times "
            "the mean load (--load-factor), one mean request aside.")
        .Register(*registry)
        .Add({})
        .Set(options.load_factor);
    auto& engine_events = prometheus::BuildCounter()
                              .Name("kvtier_router_engine_batches_total")
                              .Help(
                                  "Engines' KV-event batches, by outcome: indexed; lost (a gap "
                                  "the engine could not replay, or a restart: that engine's "
                                  "blocks are forgotten); malformed (skipped).")
                              .Register(*registry);
    metrics_->engine_batches = &engine_events.Add({{"outcome", "indexed"}});
    metrics_->engine_lost = &engine_events.Add({{"outcome", "lost"}});
    metrics_->engine_malformed = &engine_events.Add({{"outcome", "malformed"}});
    metrics_->peer_synced = &prometheus::BuildGauge()
                                 .Name("kvtier_router_peer_synced")
                                 .Help(
                                     "Replica sync (--peers): 1 while the peer's Sync stream is "
                                     "open (0: this replica does not know its decisions)")
                                 .Register(*registry);
    auto& peer_decisions = prometheus::BuildCounter()
                               .Name("kvtier_router_peer_decisions_total")
                               .Help(
                                   "Replica sync: peers' routing decisions, by outcome: applied; "
                                   "lost (a stream fell behind its sender's log)")
                               .Register(*registry);
    metrics_->peer_decisions = &peer_decisions.Add({{"outcome", "applied"}});
    metrics_->peer_decisions_lost = &peer_decisions.Add({{"outcome", "lost"}});
    metrics_->index_dropped = &prometheus::BuildCounter()
                                   .Name("kvtier_router_index_dropped_total")
                                   .Help("Stored-block events not indexed: the index was full.")
                                   .Register(*registry)
                                   .Add({});
  }
  SetMembers(std::move(nodes));
  prober_thread_ = std::thread([this] { ProbeLoop(); });
}

void RouteServiceImpl::SetMembers(std::vector<RingNode> nodes) {
  std::vector<std::shared_ptr<Member>> departed;
  {
    MutexLock lock(&mu_);
    std::vector<std::shared_ptr<Member>> next;
    for (const RingNode& n : nodes) {
      std::shared_ptr<Member> m;
      for (const auto& old : members_) {
        if (old->node.name == n.name) m = old;
      }
      if (m != nullptr) {
        m->node.weight = n.weight;
        next.push_back(std::move(m));
        continue;
      }
      m = std::make_shared<Member>();
      m->node = n;
      m->channel = NodeChannel(n.name, credentials_, health_.probe_interval_ms);
      m->health_stub = grpc::health::v1::Health::NewStub(m->channel);
      m->cache = v1::CacheService::NewStub(m->channel);
      if (metrics_->decisions != nullptr) {
        m->decisions_metric = &metrics_->decisions->Add({{"node", n.name}});
        m->ejections_metric = &metrics_->ejections->Add({{"node", n.name}});
        m->load_metric = &metrics_->load->Add({{"node", n.name}});
        m->healthy_metric = &metrics_->healthy->Add({{"node", n.name}});
        m->healthy_metric->Set(1);
      }
      spdlog::info("kvtier-router: {} joined", n.name);
      if (cache_aware_.enabled && cache_aware_.daemons) {
        m->index_id = index_.AddNode();
        m->watch = std::make_unique<DaemonWatch>(n.name, m->index_id, m->cache.get(), &index_,
                                                 credentials_, health_.probe_interval_ms);
        if (metrics_->watching != nullptr) {
          m->watching_metric = &metrics_->watching->Add({{"node", n.name}});
        }
      }
      if (cache_aware_.enabled) StartEngineWatch(*m);
      next.push_back(std::move(m));
    }
    for (auto& old : members_) {
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
      if (old->watching_metric != nullptr) {
        metrics_->watching->Remove(std::exchange(old->watching_metric, nullptr));
      }
      loads_.Remove(old->node.name);
      departed.push_back(old);
    }
    members_ = std::move(next);
    RebuildLocked();
  }
  // Outside the routing lock: stopping a watch waits for its stream to end.
  for (auto& m : departed) {
    if (m->engine != nullptr) {
      m->engine.reset();
      index_.RemoveNode(m->engine_index_id);
    }
    if (m->watch == nullptr) continue;
    m->watch.reset();
    index_.RemoveNode(m->index_id);
  }
}

RouteServiceImpl::~RouteServiceImpl() {
  stop_ = true;
  decided_.SignalAll();
  {
    MutexLock lock(&peers_mu_);
    peers_.clear();
  }
  prober_thread_.join();
  std::vector<std::shared_ptr<Member>> members;
  {
    MutexLock lock(&mu_);
    members.swap(members_);
  }
  for (auto& m : members) {
    m->watch.reset();
    m->engine.reset();
  }
}

void RouteServiceImpl::SetPeers(const std::vector<std::string>& addresses) {
  syncing_ = true;
  std::vector<std::unique_ptr<Peer>> gone;
  {
    MutexLock lock(&peers_mu_);
    std::vector<std::unique_ptr<Peer>> next;
    for (const std::string& a : addresses) {
      auto it = std::find_if(peers_.begin(), peers_.end(),
                             [&](const auto& p) { return p != nullptr && p->sync->address() == a; });
      if (it != peers_.end()) {
        next.push_back(std::move(*it));
        continue;
      }
      auto peer = std::make_unique<Peer>();
      Peer* raw = peer.get();
      peer->sync = std::make_unique<PeerSync>(
          a, replica_id_, [this, raw](const v1::SyncBatch& b) { ApplyPeerBatch(*raw, b); },
          health_.probe_interval_ms);
      if (metrics_->peer_synced != nullptr) {
        peer->synced_metric = &metrics_->peer_synced->Add({{"peer", a}});
      }
      next.push_back(std::move(peer));
    }
    for (auto& p : peers_) {
      if (p != nullptr) gone.push_back(std::move(p));
    }
    peers_ = std::move(next);
    for (auto& p : gone) {
      if (p->synced_metric != nullptr) metrics_->peer_synced->Remove(p->synced_metric);
    }
  }
  gone.clear();  // outside peers_mu_: each waits for its stream's thread
}

void RouteServiceImpl::ApplyPeerBatch(Peer& peer, const v1::SyncBatch& batch) {
  MutexLock lock(&mu_);
  const bool restarted = batch.replica_id() != peer.replica;
  if (restarted) {
    // A new sender (or a restarted one): its totals so far are old work, a baseline only.
    peer.replica = batch.replica_id();
    peer.work.clear();
  }
  std::vector<BlockKey> keys;
  for (const v1::SyncedDecision& d : batch.decisions()) {
    const std::string& packed = d.counted_keys();
    keys.clear();
    for (size_t i = 0; i + BlockKey::kBytes <= packed.size(); i += BlockKey::kBytes) {
      keys.push_back(BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(packed.data()) + i));
    }
    router_.CountPeerRequest(keys);
    if (d.placed_key().size() != BlockKey::kBytes) continue;
    if (auto it = ring_index_.find(d.placed_node()); it != ring_index_.end()) {
      router_.Remember(
          BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(d.placed_key().data())),
          it->second);
    }
  }
  for (const v1::NodeWork& w : batch.work()) {
    auto& [routed, reported] = peer.work[w.node()];
    if (!restarted) {
      loads_.PeerWork(w.node(), std::max(0.0, w.routed_blocks() - routed),
                      std::max(0.0, w.reported_blocks() - reported));
    }
    routed = w.routed_blocks();
    reported = w.reported_blocks();
  }
  if (metrics_->peer_decisions != nullptr) {
    metrics_->peer_decisions->Increment(static_cast<double>(batch.decisions_size()));
    metrics_->peer_decisions_lost->Increment(static_cast<double>(batch.decisions_lost()));
  }
}

grpc::Status RouteServiceImpl::Sync(grpc::ServerContext* ctx, const v1::SyncRequest* request,
                                    grpc::ServerWriter<v1::SyncBatch>* writer) {
  if (request->replica_id() == replica_id_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, kSyncSelf);
  }
  if (!syncing_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "sync: this router runs without --peers");
  }
  uint64_t cursor, seen = 0;  // the first batch: every node's totals, the peer's baseline
  {
    MutexLock lock(&mu_);
    cursor = decisions_.end();
  }
  constexpr size_t kMaxDecisions = 8192;  // a batch: about 400 KiB at most
  while (!stop_ && !ctx->IsCancelled()) {
    v1::SyncBatch batch;
    batch.set_replica_id(replica_id_);
    {
      MutexLock lock(&mu_);
      // Something new, or a heartbeat every 100 ms.
      if (decisions_.version() == seen) decided_.WaitFor(&mu_, 100'000);
      decisions_.Read(&cursor, &seen, kMaxDecisions, &batch);
    }
    if (!writer->Write(batch)) break;
  }
  return grpc::Status::OK;
}

void RouteServiceImpl::StartEngineWatch(Member& m) {
  const EngineEndpoints& e = cache_aware_.engines;
  if (!e.enabled()) return;
  std::string endpoint, replay;
  if (auto it = e.by_node.find(m.node.name); it != e.by_node.end()) {
    std::tie(endpoint, replay) = it->second;
  } else if (e.port != 0) {
    const std::string host = m.node.name.substr(0, m.node.name.rfind(':'));
    endpoint = absl::StrCat("tcp://", host, ":", e.port);
    if (e.replay_port != 0) replay = absl::StrCat("tcp://", host, ":", e.replay_port);
  } else {
    return;
  }
  m.engine_index_id = index_.AddNode();
  auto watch = EngineWatch::Start(endpoint, replay, e.keys, m.engine_index_id, &index_);
  if (!watch.ok()) {
    spdlog::error("kvtier-router: {}'s engine events: {}", m.node.name, watch.status().ToString());
    index_.RemoveNode(m.engine_index_id);
    return;
  }
  spdlog::info("kvtier-router: following {}'s engine events at {}", m.node.name, endpoint);
  m.engine = std::move(*watch);
}

void RouteServiceImpl::RebuildLocked() {
  std::vector<RingNode> healthy;
  ring_members_.clear();
  ring_index_.clear();
  for (size_t i = 0; i < members_.size(); ++i) {
    if (!members_[i]->health.healthy()) continue;
    ring_index_[members_[i]->node.name] = static_cast<int>(healthy.size());
    healthy.push_back(members_[i]->node);
    ring_members_.push_back(static_cast<int>(i));
  }
  router_.SetNodes(std::move(healthy));
}

std::vector<std::string> RouteServiceImpl::RingNamesLocked() const {
  std::vector<std::string> names;
  names.reserve(ring_members_.size());
  for (int m : ring_members_) names.push_back(members_[m]->node.name);
  return names;
}

void RouteServiceImpl::SetLoadMetricsLocked() {
  if (metrics_->imbalance == nullptr) return;
  const std::vector<std::string> names = RingNamesLocked();
  const std::vector<double> loads = loads_.Loads(names);
  for (size_t i = 0; i < ring_members_.size(); ++i) {
    members_[ring_members_[i]]->load_metric->Set(loads[i]);
  }
  metrics_->imbalance->Set(loads_.Imbalance(names));
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
  RouterStatus out;
  uint64_t hit = 0, missed = 0;
  for (const auto& m : members_) {
    NodeStatus n{.node = m->node.name,
                 .healthy = m->health.healthy(),
                 .load = loads_.Load(m->node.name),
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
  out.imbalance = loads_.Imbalance(RingNamesLocked());
  out.load_bound = router_.options().load_factor;
  out.history.assign(history_.begin(), history_.end());
  return out;
}

void RouteServiceImpl::ProbeLoop() {
  while (!stop_) {
    std::vector<std::shared_ptr<Member>> snapshot;
    {
      MutexLock lock(&mu_);
      snapshot = members_;
    }
    std::vector<ProbeTarget> targets;
    for (const auto& m : snapshot) targets.push_back({m->health_stub.get(), m->cache.get()});
    const std::vector<ProbeResult> results = prober_.ProbeAll(targets);
    {
      MutexLock lock(&mu_);
      bool rebuild = false;
      for (size_t i = 0; i < snapshot.size(); ++i) {
        Member& m = *snapshot[i];
        if (std::find(members_.begin(), members_.end(), snapshot[i]) == members_.end()) continue;
        const ProbeResult& r = results[i];
        // Its tiers and Lookup counts, for the status page (a daemon with auth answers only a
        // cluster token: without one the page shows none).
        m.stats_ok = r.stats_ok;
        if (r.stats_ok) {
          for (const v1::TierStats& t : r.stats.tiers()) {
            const TierFill fill{t.used_bytes(), t.capacity_bytes()};
            if (t.tier() == v1::TIER_HOST) m.host = fill;
            if (t.tier() == v1::TIER_NVME) m.nvme = fill;
          }
          const double now = Seconds(clock_);
          m.lookups.emplace_back(now, r.stats.lookup_blocks_hit(), r.stats.lookup_blocks_missed());
          // Keep one answer at least a minute old as the window's start.
          while (m.lookups.size() > 2 && std::get<0>(m.lookups[1]) <= now - 60) {
            m.lookups.pop_front();
          }
        }
        if (m.watching_metric != nullptr) m.watching_metric->Set(m.watch->watching() ? 1 : 0);
        if (m.engine != nullptr && metrics_->engine_batches != nullptr) {
          const EngineWatch::Counters now = m.engine->counters();
          metrics_->engine_batches->Increment(
              static_cast<double>(now.batches - m.engine_seen.batches));
          metrics_->engine_lost->Increment(static_cast<double>(now.lost - m.engine_seen.lost));
          metrics_->engine_malformed->Increment(
              static_cast<double>(now.malformed - m.engine_seen.malformed));
          m.engine_seen = now;
        }
        switch (m.health.Observe(r.serving, health_.failures_to_eject)) {
          case NodeHealth::Change::kReadmitted:
            spdlog::info("kvtier-router: {} is healthy again; re-admitted", m.node.name);
            if (m.healthy_metric != nullptr) m.healthy_metric->Set(1);
            rebuild = true;
            break;
          case NodeHealth::Change::kEjected:
            spdlog::warn("kvtier-router: {} failed {} health probes ({}); ejected", m.node.name,
                         m.health.failures(), r.error);
            if (m.healthy_metric != nullptr) m.healthy_metric->Set(0);
            if (m.ejections_metric != nullptr) m.ejections_metric->Increment();
            rebuild = true;
            break;
          case NodeHealth::Change::kNone:
            break;
        }
      }
      if (rebuild) RebuildLocked();
      // Loads decay while no request comes: the gauges follow them between requests too.
      SetLoadMetricsLocked();
      AddHistoryLocked();
      if (metrics_->index_keys != nullptr) {
        metrics_->index_keys->Set(static_cast<double>(index_.keys()));
        const uint64_t dropped = index_.dropped();
        metrics_->index_dropped->Increment(
            static_cast<double>(dropped - metrics_->index_dropped_seen));
        metrics_->index_dropped_seen = dropped;
      }
    }
    {
      MutexLock lock(&peers_mu_);
      for (const auto& p : peers_) {
        if (p->synced_metric != nullptr) p->synced_metric->Set(p->sync->synced() ? 1 : 0);
        if (p->sync->is_self() && p->synced_metric != nullptr) {
          metrics_->peer_synced->Remove(std::exchange(p->synced_metric, nullptr));
        }
      }
    }
    for (int waited = 0; waited < health_.probe_interval_ms && !stop_; waited += 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

template <typename F>
grpc::Status RouteServiceImpl::Observed(const char* rpc, F body) {
  const auto start = std::chrono::steady_clock::now();
  grpc::Status st = body();
  if (metrics_->rpcs != nullptr) {
    metrics_->rpcs->Observe(
        rpc, st.error_code(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
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
  const auto start = std::chrono::steady_clock::now();
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
    keys.push_back(
        BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(request->packed_keys().data()) + i));
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
  const std::span<const uint32_t> tokens(request->tokens().data(), request->tokens().size());
  // Which nodes hold how much of the prompt, before the routing lock: (index id, blocks).
  std::vector<std::pair<uint32_t, size_t>> cached;
  LazyKeys store_keys(tokens, hasher.has_value() ? &*hasher : nullptr, keys, request->tenant());
  if (cache_aware_.enabled) index_.Prefixes(store_keys.size(), store_keys, &cached);
  // Engines' blocks, by their namespace: the same tokens, no tenant (an engine shares its cache
  // across users unless they salt their requests).
  std::vector<std::pair<uint32_t, size_t>> engine_cached;
  const EngineEndpoints& engines = cache_aware_.engines;
  if (engines.enabled() && hasher.has_value() &&
      (request->model().empty() || request->model() == engines.keys.model_id)) {
    auto h = ChainHasher::Create({.tenant_salt = request->cache_salt(),
                                  .model_id = engines.keys.model_id,
                                  .layout_fingerprint = engines.keys.layout_fingerprint,
                                  .adapter_id = request->adapter()},
                                 hasher->block_tokens());
    if (h.ok()) {
      LazyKeys engine_keys(tokens, &*h, {}, std::nullopt);
      index_.Prefixes(engine_keys.size(), engine_keys, &engine_cached);
    }
  }
  const double cost = static_cast<double>(std::max<size_t>(store_keys.size(), 1));

  std::vector<std::string> order_names;
  size_t expected = 0;
  {
    MutexLock lock(&mu_);
    if (ring_members_.empty()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "no healthy kvtierd node: every member failed its health probes");
    }
    const std::vector<double> loads = loads_.Loads(RingNamesLocked());
    const double slack = loads_.mean_request_blocks();
    const RouteChoice c = hasher.has_value() ? router_.RouteTokens(*hasher, tokens, loads, slack)
                                             : router_.Route(keys, loads, slack);
    int node = c.node;
    if (cache_aware_.enabled) {
      // Each ring node's leading blocks held, by the index.
      std::vector<size_t> held(ring_members_.size(), 0);
      for (size_t n = 0; n < ring_members_.size(); ++n) {
        const Member& m = *members_[ring_members_[n]];
        for (const auto& [holder, blocks] : cached) {
          if (holder == m.index_id && m.watch != nullptr) held[n] = blocks;
        }
        for (const auto& [holder, blocks] : engine_cached) {
          if (holder == m.engine_index_id && m.engine != nullptr) {
            held[n] = std::max(held[n], blocks);
          }
        }
      }
      node = router_.PreferCached(c, held, loads, slack, &expected);
    }
    if (syncing_) {
      const bool placed = c.placed || node != c.node;
      decisions_.Decided(router_.last_counted(), c.routing_key,
                         placed ? members_[ring_members_[node]]->node.name : std::string());
    }
    std::vector<int> order;
    router_.ring().Candidates(RingHash(c.routing_key), router_.ring().size(), &order);
    // The chosen node first, then the rest in ring order (where to go if it fails).
    order_names.push_back(members_[ring_members_[node]]->node.name);
    for (int n : order) {
      if (n != node) order_names.push_back(members_[ring_members_[n]]->node.name);
    }
    response->set_routing_depth(static_cast<uint32_t>(c.depth));
    Member& chosen = *members_[ring_members_[node]];
    loads_.Routed(chosen.node.name, cost);
    if (syncing_) {
      decisions_.Worked(chosen.node.name, cost, 0);
      decided_.SignalAll();
    }
    ++chosen.decisions;
    if (chosen.decisions_metric != nullptr) {
      chosen.decisions_metric->Increment();
      chosen.load_metric->Set(loads_.Load(chosen.node.name));
      metrics_->placements->Set(static_cast<double>(router_.placements()));
    }
  }
  for (std::string& name : order_names) response->add_nodes(std::move(name));
  if (cache_aware_.enabled) response->set_expected_cached_blocks(static_cast<uint32_t>(expected));
  if (metrics_->latency != nullptr) {
    metrics_->latency->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return grpc::Status::OK;
}

grpc::Status RouteServiceImpl::ReportImpl(const v1::ReportRequest* request) {
  MutexLock lock(&mu_);
  for (auto& m : members_) {
    if (m->node.name != request->node()) continue;
    loads_.Reported(m->node.name, static_cast<double>(request->prefilled_blocks()));
    if (syncing_) {
      decisions_.Worked(m->node.name, 0, static_cast<double>(request->prefilled_blocks()));
      decided_.SignalAll();
    }
    if (m->load_metric != nullptr) m->load_metric->Set(loads_.Load(m->node.name));
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      "report: " + request->node() + " is not a member");
}

grpc::Status RouteServiceImpl::MembersImpl(v1::MembersResponse* response) {
  MutexLock lock(&mu_);
  for (const auto& m : members_) {
    v1::Member* out = response->add_members();
    out->set_address(m->node.name);
    out->set_weight(m->node.weight);
    out->set_healthy(m->health.healthy());
    out->set_decisions(m->decisions);
    out->set_load(loads_.Load(m->node.name));
  }
  response->set_load_factor(router_.options().load_factor);
  response->set_points_per_weight(static_cast<uint32_t>(router_.options().points_per_weight));
  return grpc::Status::OK;
}

}  // namespace kvtier::router
