#pragma once
// DaemonMetrics: kvtierd's Prometheus endpoint (/metrics). Every metric of the daemon is declared
// here: the store's tiers and counters (read from BlockStore::Stats() at scrape time, so they
// cost nothing between scrapes) and per-RPC request counts and latency histograms.
// Thread-safe.

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/block_store.h"
#include "common/metrics_server.h"
#include "kvtier/v1/cache.pb.h"

namespace prometheus {
class Collectable;
class Registry;
class Histogram;
template <typename T>
class Family;
class Counter;
class Gauge;
}  // namespace prometheus

namespace kvtier {
class RpcMetrics;
}

namespace kvtier::server {

class DaemonMetrics {
 public:
  // Serves /metrics over HTTP on `listen` (HOST:PORT; port 0 picks a free one).
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<DaemonMetrics>> Start(const std::string& listen,
                                                              const BlockStore* store);
  ~DaemonMetrics();

  int port() const { return port_; }
  // Records one finished RPC. `rpc` is one of CacheService's method names.
  void ObserveRpc(const std::string& rpc, grpc::StatusCode code, double seconds);
  // Payload bytes held for requests in progress.
  void SetInflightBytes(uint64_t bytes);
  // One granted lease: its blocks and bytes, how many blocks it promoted from NVMe, and how long
  // the caller waited for it.
  void ObserveLease(size_t blocks, uint64_t bytes, uint32_t promoted, double seconds);
  // Payload bytes a gRPC Get sent of a block found in `tier`.
  void AddServedBytes(Tier tier, uint64_t bytes);
  // Bytes a client read over UCX under a lease (reported when it releases the lease).
  void AddUcxBytesRead(uint64_t bytes);
  // The in-flight cap (kvtier_inflight_bytes_limit), and the address clients reach the daemon at
  // (kvtier_daemon_info{address}); each set once.
  void SetInflightLimit(uint64_t bytes);
  void SetAddress(const std::string& address);
  // Where scrapes read each tenant's usage (kvtier_tenant_*{tenant}), the count of calls the
  // idle-stream watchdog cancelled, and (with a UCX data plane) the served reads answered with
  // their bytes and refused.
  struct ServiceSource {
    std::function<std::vector<v1::TenantUsage>()> usage;
    std::function<uint64_t()> idle_cancels;
    std::function<uint64_t()> served_reads;
    std::function<uint64_t()> served_read_refusals;
    // KV events (--kv-events-endpoint) published and dropped (queue full); 0 without one.
    std::function<uint64_t()> kv_events_published;
    std::function<uint64_t()> kv_events_dropped;
  };
  void SetServiceSource(ServiceSource source);
  // Stops reading the store and the service (call before destroying them); the endpoint keeps
  // serving the rest.
  void DetachStore();

 private:
  DaemonMetrics() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> store_collector_;  // the server holds it weakly
  std::unique_ptr<MetricsServer> server_;
  std::unique_ptr<RpcMetrics> rpcs_;
  prometheus::Gauge* inflight_bytes_ = nullptr;
  prometheus::Counter* leased_blocks_ = nullptr;
  prometheus::Counter* leased_bytes_ = nullptr;
  prometheus::Counter* lease_promotions_ = nullptr;
  prometheus::Gauge* inflight_limit_ = nullptr;
  prometheus::Counter* served_grpc_[kNumTiers] = {};
  prometheus::Counter* served_ucx_ = nullptr;
  prometheus::Family<prometheus::Gauge>* info_ = nullptr;
  prometheus::Histogram* lease_wait_ = nullptr;
  int port_ = 0;
};

}  // namespace kvtier::server
