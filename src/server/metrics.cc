#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "common/rpc_metrics.h"
#include "common/service_main.h"
#include "common/status_macros.h"

namespace kvtier::server {
namespace {

// The methods whose calls are counted (WatchBlocks, a stream that lasts, is not).
const std::vector<std::string> kRpcs = {"Put",    "Get",   "Lookup", "Lease",
                                        "Release", "Delete", "Stats", "DataPlane"};
// The store's state and the service's per-tenant usage, read at scrape time.
class StoreCollector final : public prometheus::Collectable {
 public:
  explicit StoreCollector(const BlockStore* store) : store_(store) {}

  void SetServiceSource(DaemonMetrics::ServiceSource source) {
    MutexLock l(&mu_);
    service_ = std::move(source);
  }
  // From now on scrapes report no store or service figures; both may then be destroyed.
  void Detach() {
    MutexLock l(&mu_);
    store_ = nullptr;
    service_ = {};
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    MutexLock l(&mu_);
    if (store_ == nullptr) return {};
    const StoreStats s = store_->Stats();
    std::vector<prometheus::MetricFamily> out;
    if (service_.usage) CollectTenants(service_.usage(), &out);
    if (service_.idle_cancels) {
      prometheus::ClientMetric m;
      m.counter.value = static_cast<double>(service_.idle_cancels());
      out.push_back({"kvtier_stream_idle_cancels_total",
                     "Put streams that sent nothing, and Gets whose client read nothing, for "
                     "limits.stream_idle_timeout_s, cancelled.",
                     prometheus::MetricType::Counter,
                     {m}});
    }
    auto counter = [&](const char* name, const char* help, const std::function<uint64_t()>& f) {
      if (!f) return;
      prometheus::ClientMetric m;
      m.counter.value = static_cast<double>(f());
      out.push_back({name, help, prometheus::MetricType::Counter, {m}});
    };
    counter("kvtier_ucx_served_reads_total",
            "Reads the UCX data plane served (ucx.mode served) with their bytes.",
            service_.served_reads);
    counter("kvtier_ucx_served_read_refusals_total",
            "Served reads refused: no such lease of the reader's, ranges outside it, too many.",
            service_.served_read_refusals);
    counter("kvtier_kv_events_published_total",
            "Block events published in vLLM's KV-event format (events.zmq_endpoint).",
            service_.kv_events_published);
    counter("kvtier_kv_events_dropped_total",
            "KV events dropped because the publisher's queue was full.",
            service_.kv_events_dropped);
    auto per_tier = [&](const char* name, const char* help, prometheus::MetricType type,
                        auto value) {
      prometheus::MetricFamily f{name, help, type, {}};
      for (int t = 0; t < kNumTiers; ++t) {
        prometheus::ClientMetric m;
        m.label = {{"tier", TierName(static_cast<Tier>(t))}};
        const double v = static_cast<double>(value(s.tiers[t]));
        if (type == prometheus::MetricType::Counter)
          m.counter.value = v;
        else
          m.gauge.value = v;
        f.metric.push_back(std::move(m));
      }
      out.push_back(std::move(f));
    };
    per_tier("kvtier_tier_capacity_bytes", "Capacity of each tier (0 when absent).",
             prometheus::MetricType::Gauge, [](const TierStats& t) { return t.capacity_bytes; });
    per_tier("kvtier_tier_used_bytes", "Bytes of block payloads held by each tier.",
             prometheus::MetricType::Gauge, [](const TierStats& t) { return t.used_bytes; });
    per_tier("kvtier_tier_blocks", "Blocks resident in each tier.", prometheus::MetricType::Gauge,
             [](const TierStats& t) { return t.blocks; });
    per_tier("kvtier_evictions_total", "Blocks dropped out of the store, by the tier they left.",
             prometheus::MetricType::Counter, [](const TierStats& t) { return t.evictions; });
    per_tier("kvtier_evicted_bytes_total",
             "Payload bytes dropped out of the store, by the tier they left.",
             prometheus::MetricType::Counter, [](const TierStats& t) { return t.evicted_bytes; });
    // Blocks found, by the request that asked and the tier it found them in; blocks asked for
    // and absent.
    {
      prometheus::MetricFamily hits{"kvtier_block_hits_total",
                                    "Blocks found: by Get (read), Lookup (matched chain blocks) "
                                    "and Lease, and the tier they were in.",
                                    prometheus::MetricType::Counter,
                                    {}};
      prometheus::MetricFamily misses{"kvtier_block_misses_total",
                                      "Blocks asked for and absent: by Get, Lookup (chain blocks "
                                      "past the matched prefix) and Lease (it stops at the first).",
                                      prometheus::MetricType::Counter,
                                      {}};
      for (const char* op : {"get", "lookup", "lease"}) {
        const std::string o = op;
        for (int t = 0; t < kNumTiers; ++t) {
          prometheus::ClientMetric m;
          m.label = {{"op", o}, {"tier", TierName(static_cast<Tier>(t))}};
          m.counter.value = static_cast<double>(o == "get"      ? s.tiers[t].hits
                                                : o == "lookup" ? s.tiers[t].lookup_hits
                                                                : s.tiers[t].lease_hits);
          hits.metric.push_back(std::move(m));
        }
        prometheus::ClientMetric m;
        m.label = {{"op", o}};
        m.counter.value = static_cast<double>(o == "get"      ? s.get_misses
                                              : o == "lookup" ? s.lookup_blocks_missed
                                                              : s.lease_misses);
        misses.metric.push_back(std::move(m));
      }
      out.push_back(std::move(hits));
      out.push_back(std::move(misses));
    }
    // Moves between tiers: demotions HBM -> host -> NVMe, promotions NVMe -> host.
    {
      struct Move {
        Tier from, to;
        uint64_t blocks, bytes;
      };
      const TierStats& hbm = s.tiers[static_cast<int>(Tier::kHbm)];
      const TierStats& host = s.tiers[static_cast<int>(Tier::kHost)];
      const Move moves[] = {{Tier::kHbm, Tier::kHost, hbm.demotions, hbm.demoted_bytes},
                            {Tier::kHost, Tier::kNvme, host.demotions, host.demoted_bytes},
                            {Tier::kNvme, Tier::kHost, s.promotions, s.promoted_bytes}};
      prometheus::MetricFamily blocks{"kvtier_tier_moves_total",
                                      "Blocks moved between tiers: demotions and promotions.",
                                      prometheus::MetricType::Counter,
                                      {}};
      prometheus::MetricFamily bytes{"kvtier_tier_moved_bytes_total",
                                     "Payload bytes moved between tiers.",
                                     prometheus::MetricType::Counter,
                                     {}};
      for (const Move& mv : moves) {
        prometheus::ClientMetric m;
        m.label = {{"from", TierName(mv.from)}, {"to", TierName(mv.to)}};
        m.counter.value = static_cast<double>(mv.blocks);
        blocks.metric.push_back(m);
        m.counter.value = static_cast<double>(mv.bytes);
        bytes.metric.push_back(std::move(m));
      }
      out.push_back(std::move(blocks));
      out.push_back(std::move(bytes));
    }
    auto one = [&](const char* name, const char* help, prometheus::MetricType type, double v) {
      prometheus::ClientMetric m;
      if (type == prometheus::MetricType::Counter)
        m.counter.value = v;
      else
        m.gauge.value = v;
      out.push_back(prometheus::MetricFamily{name, help, type, {m}});
    };
    using T = prometheus::MetricType;
    one("kvtier_puts_total", "Block puts begun.", T::Counter, s.puts);
    one("kvtier_puts_noop_total", "Puts of blocks already present.", T::Counter, s.puts_noop);
    one("kvtier_puts_aborted_total", "Puts abandoned before their last byte.", T::Counter,
        s.puts_aborted);
    one("kvtier_nvme_admission_rejections_total", "Demoted blocks kept off flash.", T::Counter,
        s.nvme_admission_rejections);
    one("kvtier_nvme_bytes_written_total", "Payload bytes written to flash.", T::Counter,
        s.nvme_bytes_written);
    one("kvtier_nvme_write_errors_total", "Failed flash writes.", T::Counter, s.nvme_write_errors);
    one("kvtier_sync_evictions_total",
        "Blocks a put or lease evicted itself because the movers' free reserve was used up.",
        T::Counter, s.sync_evictions);
    one("kvtier_tenant_quota_evictions_total",
        "Blocks a put moved down or out to keep its tenant within its share of a memory tier.",
        T::Counter, s.quota_evictions);
    one("kvtier_nvme_disk_full_rejections_total", "Flash writes refused for lack of disk space.",
        T::Counter, s.nvme_disk_full_rejections);
    one("kvtier_nvme_compactions_total", "Blob files compacted or removed.", T::Counter,
        s.nvme_compactions);
    one("kvtier_nvme_bad_records_total", "Damaged flash metadata records dropped at start-up.",
        T::Counter, s.nvme_bad_records);
    one("kvtier_nvme_lost_blocks_total",
        "Flash blocks dropped at start-up because their payload file was missing or short.",
        T::Counter, s.nvme_lost_blocks);
    one("kvtier_nvme_recovered_with_loss",
        "1 if the flash metadata was recovered only up to a damaged point of its log.", T::Gauge,
        s.nvme_metadata_recovered_with_loss ? 1 : 0);
    one("kvtier_nvme_damaged_tier_moved_aside",
        "1 if an unreadable flash tier was moved aside at start-up and a new one begun.", T::Gauge,
        s.nvme_damaged_tier_moved_aside ? 1 : 0);
    one("kvtier_checksum_failures_total", "Blocks that failed verification and were dropped.",
        T::Counter, s.checksum_failures);
    one("kvtier_leases_active", "Leases outstanding.", T::Gauge, s.leases_active);
    one("kvtier_leases_granted_total", "Leases granted.", T::Counter, s.leases_granted);
    one("kvtier_leases_expired_total", "Leases that ran out their TTL.", T::Counter,
        s.leases_expired);
    one("kvtier_leased_bytes", "Bytes pinned by leases.", T::Gauge, s.leased_bytes);
    one("kvtier_leased_bytes_limit", "Cap on bytes pinned by leases (store.max_leased_mib).",
        T::Gauge, s.leased_bytes_limit);
    one("kvtier_orphan_blocks", "Blocks whose parent is not cached.", T::Gauge, s.orphan_blocks);
    one("kvtier_index_bytes", "RAM of the block index and RocksDB table indexes.", T::Gauge,
        s.index_bytes + s.nvme_index_bytes);
    return out;
  }

 private:
  static void CollectTenants(const std::vector<v1::TenantUsage>& usage,
                             std::vector<prometheus::MetricFamily>* out) {
    auto family = [&](const char* name, const char* help, auto value) {
      prometheus::MetricFamily f{name, help, prometheus::MetricType::Gauge, {}};
      for (const v1::TenantUsage& u : usage) {
        prometheus::ClientMetric m;
        m.label = {{"tenant", u.tenant()}};
        m.gauge.value = static_cast<double>(value(u));
        f.metric.push_back(std::move(m));
      }
      out->push_back(std::move(f));
    };
    using U = v1::TenantUsage;
    family("kvtier_tenant_resident_bytes", "Payload bytes of each tenant's blocks, every tier.",
           [](const U& u) { return u.resident_bytes(); });
    family("kvtier_tenant_resident_blocks", "Each tenant's blocks, every tier.",
           [](const U& u) { return u.resident_blocks(); });
    family("kvtier_tenant_inflight_bytes",
           "Payload bytes held for each tenant's Puts being received and Gets being sent.",
           [](const U& u) { return u.inflight_bytes(); });
    family("kvtier_tenant_leased_bytes", "Bytes of blocks under each tenant's live leases.",
           [](const U& u) { return u.leased_bytes(); });
  }

  mutable Mutex mu_;
  const BlockStore* store_ ABSL_GUARDED_BY(mu_);
  DaemonMetrics::ServiceSource service_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<DaemonMetrics>> DaemonMetrics::Start(const std::string& listen,
                                                                    const BlockStore* store) {
  std::unique_ptr<DaemonMetrics> m(new DaemonMetrics());
  KVTIER_ASSIGN_OR_RETURN(m->server_, MetricsServer::Start(listen, "kvtierd"));
  m->port_ = m->server_->port();
  m->registry_ = std::make_shared<prometheus::Registry>();
  m->rpcs_ = std::make_unique<RpcMetrics>(*m->registry_, "kvtier", "CacheService", kRpcs);
  m->inflight_bytes_ = &prometheus::BuildGauge()
                            .Name("kvtier_inflight_bytes")
                            .Help("Payload bytes held for Puts being received and Gets being sent.")
                            .Register(*m->registry_)
                            .Add({});
  m->inflight_limit_ = &prometheus::BuildGauge()
                            .Name("kvtier_inflight_bytes_limit")
                            .Help("Cap on kvtier_inflight_bytes (limits.max_inflight_mib).")
                            .Register(*m->registry_)
                            .Add({});
  auto& served = prometheus::BuildCounter()
                     .Name("kvtier_served_bytes_total")
                     .Help("Payload bytes served: by gRPC Get from each tier, and read over UCX "
                           "from the host tier (as clients report on Release).")
                     .Register(*m->registry_);
  for (int t = 0; t < kNumTiers; ++t) {
    m->served_grpc_[t] = &served.Add({{"path", "grpc"}, {"tier", TierName(static_cast<Tier>(t))}});
  }
  m->served_ucx_ = &served.Add({{"path", "ucx"}, {"tier", TierName(Tier::kHost)}});
  m->info_ = &prometheus::BuildGauge()
                  .Name("kvtier_daemon_info")
                  .Help("1, labelled with the gRPC address clients and kvtier-router reach this "
                        "daemon at (the router's node label).")
                  .Register(*m->registry_);
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(*m->registry_).Add({});
  };
  m->leased_blocks_ = counter("kvtier_ucx_leased_blocks_total",
                              "Blocks granted to one-sided (UCX) readers by leases.");
  m->leased_bytes_ = counter("kvtier_ucx_leased_bytes_total",
                             "Payload bytes granted to one-sided (UCX) readers by leases.");
  m->lease_promotions_ = counter("kvtier_ucx_lease_promotions_total",
                                 "Blocks promoted from NVMe to host RAM to be leased.");
  m->lease_wait_ = &prometheus::BuildHistogram()
                        .Name("kvtier_ucx_lease_wait_seconds")
                        .Help("Time to grant a lease, promotions from NVMe included.")
                        .Register(*m->registry_)
                        .Add({}, prometheus::Histogram::BucketBoundaries{
                                     100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                                     50e-3, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  auto collector = std::make_shared<StoreCollector>(store);
  m->server_->RegisterCollectable(m->registry_);
  m->server_->RegisterCollectable(collector);
  m->store_collector_ = std::move(collector);
  return m;
}

DaemonMetrics::~DaemonMetrics() = default;

void DaemonMetrics::ObserveRpc(const std::string& rpc, grpc::StatusCode code, double seconds) {
  rpcs_->Observe(rpc, code, seconds);
}

void DaemonMetrics::SetServiceSource(ServiceSource source) {
  static_cast<StoreCollector*>(store_collector_.get())->SetServiceSource(std::move(source));
}

void DaemonMetrics::DetachStore() {
  static_cast<StoreCollector*>(store_collector_.get())->Detach();
}

void DaemonMetrics::ObserveLease(size_t blocks, uint64_t bytes, uint32_t promoted, double seconds) {
  leased_blocks_->Increment(static_cast<double>(blocks));
  leased_bytes_->Increment(static_cast<double>(bytes));
  lease_promotions_->Increment(promoted);
  lease_wait_->Observe(seconds);
}

void DaemonMetrics::AddServedBytes(Tier tier, uint64_t bytes) {
  served_grpc_[static_cast<int>(tier)]->Increment(static_cast<double>(bytes));
}

void DaemonMetrics::AddUcxBytesRead(uint64_t bytes) {
  served_ucx_->Increment(static_cast<double>(bytes));
}

void DaemonMetrics::SetInflightLimit(uint64_t bytes) {
  inflight_limit_->Set(static_cast<double>(bytes));
}

void DaemonMetrics::SetAddress(const std::string& address) { info_->Add({{"address", address}}).Set(1); }

void DaemonMetrics::SetInflightBytes(uint64_t bytes) {
  inflight_bytes_->Set(static_cast<double>(bytes));
}

}  // namespace kvtier::server
