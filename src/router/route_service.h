#pragma once
// RouteServiceImpl: kvtier.v1.RouteService, the gRPC face of kvtier-router. Routes with Router
// over the healthy members of a static list; a prober thread checks each daemon with
// grpc.health.v1 every `probe_interval_ms`, ejects a node after `failures_to_eject` failed
// probes in a row and re-admits it at its first good one. A node's load is the prefill work
// reported for it (Report: blocks it missed), or, until the first report, the blocks of the
// requests routed to it; it decays with a one-minute half-life, and a node may run one mean
// request ahead of its bound (Router::Pick's slack).
// Thread-safe.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "kvtier/v1/router.grpc.pb.h"
#include "router/router.h"
#include "router/status_page.h"

namespace prometheus {
class Registry;
}

namespace kvtier::router {

struct CacheAwareOptions {
  // Default: false. Also keep an index of which node holds which blocks (fed by every daemon's
  // CacheService.WatchBlocks) and send a request, among the nodes within the load bound, to the
  // one holding the longest prefix of it.
  bool enabled = false;
  size_t max_keys = size_t{2} << 20;  // Default: 2,097,152 keys (about 64 MiB).
};

struct HealthOptions {
  int probe_interval_ms = 1000;  // Default: 1 s.
  int probe_timeout_ms = 500;    // Default: 500 ms.
  int failures_to_eject = 2;     // Default: 2 failed probes in a row.
};

class RouteServiceImpl final : public v1::RouteService::Service {
 public:
  // `registry` may be null (no metrics). Starts the prober.
  RouteServiceImpl(std::vector<RingNode> nodes, RouterOptions options, HealthOptions health,
                   prometheus::Registry* registry, CacheAwareOptions cache_aware = {});
  ~RouteServiceImpl() override;

  // Each call is counted in kvtier_router_rpc_requests_total and _rpc_duration_seconds.
  grpc::Status Route(grpc::ServerContext* ctx, const v1::RouteRequest* request,
                     v1::RouteResponse* response) override;
  grpc::Status Members(grpc::ServerContext* ctx, const v1::MembersRequest* request,
                       v1::MembersResponse* response) override;
  grpc::Status Report(grpc::ServerContext* ctx, const v1::ReportRequest* request,
                      v1::ReportResponse* response) override;

  // What the status page shows (router/status_page.h), now.
  RouterStatus Status();

  // New membership (from a re-read node file or a re-resolved DNS name). Members that stay keep
  // their load and health; new ones start healthy; only the keys of nodes that join or leave
  // move.
  void SetMembers(std::vector<RingNode> nodes);

 private:
  struct Member;
  struct Metrics;
  grpc::Status RouteImpl(const v1::RouteRequest* request, v1::RouteResponse* response);
  grpc::Status MembersImpl(v1::MembersResponse* response);
  grpc::Status ReportImpl(const v1::ReportRequest* request);
  // Runs `body` as call `rpc`, and counts it.
  template <typename F>
  grpc::Status Observed(const char* rpc, F body);
  void ProbeLoop();
  void WatchLoop(std::shared_ptr<Member> member);
  // Leading blocks of `store_keys` that node `id` holds, as the index knows.
  size_t CachedPrefix(std::span<const BlockKey> store_keys, int id);
  void RebuildLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DecayLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kvtier_router_load_blocks and kvtier_router_imbalance from the members' loads now.
  void SetLoadMetricsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double ImbalanceLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One point of the cluster's hit ratio: the Lookup blocks the members answered since the last
  // round.
  void AddHistoryLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const HealthOptions health_;
  const CacheAwareOptions cache_aware_;
  Mutex mu_;
  std::vector<std::shared_ptr<Member>> members_ ABSL_GUARDED_BY(mu_);
  Router router_ ABSL_GUARDED_BY(mu_);
  std::vector<int> ring_members_ ABSL_GUARDED_BY(mu_);  // ring node index -> member index
  double last_decay_s_ ABSL_GUARDED_BY(mu_) = 0;
  // Recent mean of request sizes (blocks): the bounded loads' slack.
  double mean_request_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<Metrics> metrics_;
  static constexpr size_t kHistoryPoints = 600;
  std::deque<std::pair<double, double>> history_ ABSL_GUARDED_BY(mu_);  // RouterStatus::history
  std::atomic<bool> stop_{false};
  std::thread prober_;
  std::vector<std::thread> watchers_ ABSL_GUARDED_BY(mu_);
  int next_member_id_ ABSL_GUARDED_BY(mu_) = 0;
  // The cache-aware index: store key -> bitmask of member ids holding it.
  Mutex index_mu_;
  absl::flat_hash_map<BlockKey, uint64_t> index_ ABSL_GUARDED_BY(index_mu_);
};

// Parses "host:port[=weight],..." into nodes. INVALID_ARGUMENT names the bad entry.
absl::StatusOr<std::vector<RingNode>> ParseNodeList(const std::string& list);
// A node file: one host:port[=weight] a line; blank lines and # comments are skipped.
absl::StatusOr<std::vector<RingNode>> ReadNodeFile(const std::string& path);
// Every address `host` resolves to, as ip:port nodes of weight 1 (sorted). UNAVAILABLE when it
// does not resolve.
absl::StatusOr<std::vector<RingNode>> ResolveNodes(const std::string& host_port);

}  // namespace kvtier::router
