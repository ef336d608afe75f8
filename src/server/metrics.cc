#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "common/service_main.h"
#include "common/status_macros.h"

namespace kvtier::server {
namespace {

constexpr const char* kRpcs[] = {"Put",     "Get",    "Lookup", "Lease",
                                 "Release", "Delete", "Stats",  "DataPlane"};


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
    per_tier("kvtier_hits_total", "Gets served from each tier.", prometheus::MetricType::Counter,
             [](const TierStats& t) { return t.hits; });
    auto one = [&](const char* name, const char* help, prometheus::MetricType type, double v) {
      prometheus::ClientMetric m;
      if (type == prometheus::MetricType::Counter)
        m.counter.value = v;
      else
        m.gauge.value = v;
      out.push_back(prometheus::MetricFamily{name, help, type, {m}});
    };
    using T = prometheus::MetricType;
    one("kvtier_gets_total", "Block reads.", T::Counter, s.gets);
    one("kvtier_get_misses_total", "Block reads of absent blocks.", T::Counter, s.get_misses);
    one("kvtier_lookups_total", "Lookup calls.", T::Counter, s.lookups);
    one("kvtier_lookup_blocks_hit_total", "Chain blocks found by Lookup.", T::Counter,
        s.lookup_blocks_hit);
    one("kvtier_lookup_blocks_missed_total", "Chain blocks Lookup asked for and did not find.",
        T::Counter, s.lookup_blocks_missed);
    one("kvtier_puts_total", "Block puts begun.", T::Counter, s.puts);
    one("kvtier_puts_noop_total", "Puts of blocks already present.", T::Counter, s.puts_noop);
    one("kvtier_puts_aborted_total", "Puts abandoned before their last byte.", T::Counter,
        s.puts_aborted);
    one("kvtier_evictions_total", "Blocks dropped by capacity pressure.", T::Counter, s.evictions);
    one("kvtier_demotions_total", "Blocks moved one tier down.", T::Counter, s.demotions);
    one("kvtier_promotions_total", "Blocks moved from NVMe to host.", T::Counter, s.promotions);
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

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    default:
      return "OTHER";
  }
}

absl::StatusOr<std::unique_ptr<DaemonMetrics>> DaemonMetrics::Start(const std::string& listen,
                                                                    const BlockStore* store) {
  std::unique_ptr<DaemonMetrics> m(new DaemonMetrics());
  KVTIER_ASSIGN_OR_RETURN(m->server_, MetricsServer::Start(listen));
  m->port_ = m->server_->port();
  m->registry_ = std::make_shared<prometheus::Registry>();
  m->requests_ = &prometheus::BuildCounter()
                      .Name("kvtier_rpc_requests_total")
                      .Help("CacheService calls by method and status code.")
                      .Register(*m->registry_);
  auto& latency = prometheus::BuildHistogram()
                      .Name("kvtier_rpc_duration_seconds")
                      .Help("CacheService call latency by method.")
                      .Register(*m->registry_);
  const prometheus::Histogram::BucketBoundaries buckets = {
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
      50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};
  for (const char* rpc : kRpcs) m->latency_[rpc] = &latency.Add({{"rpc", rpc}}, buckets);
  m->inflight_bytes_ = &prometheus::BuildGauge()
                            .Name("kvtier_inflight_bytes")
                            .Help("Payload bytes held for Puts being received and Gets being sent.")
                            .Register(*m->registry_)
                            .Add({});
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(*m->registry_).Add({});
  };
  m->leased_blocks_ = counter("kvtier_ucx_leased_blocks_total",
                              "Blocks granted to one-sided (UCX) readers by leases.");
  m->leased_bytes_ = counter("kvtier_ucx_leased_bytes_total",
                             "Payload bytes granted to one-sided (UCX) readers by leases.");
  m->lease_promotions_ = counter("kvtier_ucx_lease_promotions_total",
                                 "Blocks promoted from NVMe to host RAM to be leased.");
  m->ucx_bytes_read_ = counter("kvtier_ucx_read_bytes_total",
                               "Bytes clients read over UCX, as they report on Release.");
  m->lease_wait_ = &prometheus::BuildHistogram()
                        .Name("kvtier_ucx_lease_wait_seconds")
                        .Help("Time to grant a lease, promotions from NVMe included.")
                        .Register(*m->registry_)
                        .Add({}, buckets);
  auto collector = std::make_shared<StoreCollector>(store);
  m->server_->RegisterCollectable(m->registry_);
  m->server_->RegisterCollectable(collector);
  m->store_collector_ = std::move(collector);
  return m;
}

DaemonMetrics::~DaemonMetrics() = default;

void DaemonMetrics::ObserveRpc(const std::string& rpc, grpc::StatusCode code, double seconds) {
  auto it = latency_.find(rpc);
  if (it != latency_.end()) it->second->Observe(seconds);
  requests_->Add({{"rpc", rpc}, {"code", CodeName(code)}}).Increment();
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

void DaemonMetrics::AddUcxBytesRead(uint64_t bytes) {
  ucx_bytes_read_->Increment(static_cast<double>(bytes));
}

void DaemonMetrics::SetInflightBytes(uint64_t bytes) {
  inflight_bytes_->Set(static_cast<double>(bytes));
}

}  // namespace kvtier::server
