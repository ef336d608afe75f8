#pragma once
// RouteServiceImpl: kvtier.v1.RouteService, the gRPC face of kvtier-router: the RPC glue over
// its parts. Members come from SetMembers (a MembershipRefresher in kvtier-router); each round of
// HealthProber probes ejects and re-admits them (NodeHealth); Router decides over the healthy
// ones with the loads of a LoadTracker (Report, else routed blocks; one-minute half-life; a node
// may run one mean request ahead of its bound); in cache-aware mode a DaemonWatch per member
// (and an EngineWatch per member's engine, where configured) feeds the CacheIndex, and Route
// prefers, among the nodes within the bound, the one holding the longest prefix. Route holds the
// routing lock only for the decision itself; keys are hashed outside it, and only as deep as the
// index needs. Replicas given each other (SetPeers) share their decisions through Sync
// (router/replica_sync.h). Thread-safe.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "kvtier/v1/router.grpc.pb.h"
#include "router/cache_index.h"
#include "router/engine_watch.h"
#include "router/health_prober.h"
#include "router/load_tracker.h"
#include "router/membership.h"
#include "router/node_channel.h"
#include "router/replica_sync.h"
#include "router/router.h"
#include "router/status_page.h"

namespace prometheus {
class Registry;
}

namespace kvtier::router {

// Where each member's inference engine publishes its KV events (EngineWatch).
struct EngineEndpoints {
  // Default: none. Per node name: the PUB endpoint, and the replay endpoint or "".
  std::map<std::string, std::pair<std::string, std::string>> by_node;
  // Default: 0 (none). For nodes not named above: tcp://<the node's host>:port, and the replay
  // socket at replay_port (0: none).
  int port = 0;
  int replay_port = 0;
  EngineEventsOptions keys;  // the engines' model and layout

  bool enabled() const { return !by_node.empty() || port != 0; }
};

struct CacheAwareOptions {
  // Default: false. Also keep an index of which node holds which blocks (fed by every daemon's
  // CacheService.WatchBlocks, and by engines' KV events where `engines` names them) and send a
  // request, among the nodes within the load bound, to the one holding the longest prefix of it.
  bool enabled = false;
  size_t max_keys = size_t{2} << 20;  // Default: 2,097,152 keys (at most ~70 bytes a key).
  bool daemons = true;  // Default: true. Watch each member's kvtierd (false: engines only).
  EngineEndpoints engines;
};

class RouteServiceImpl final : public v1::RouteService::Service {
 public:
  // `registry` may be null (no metrics); `clock` (default: the system's) times the loads'
  // decay. Starts the prober.
  RouteServiceImpl(std::vector<RingNode> nodes, RouterOptions options, HealthOptions health,
                   prometheus::Registry* registry, CacheAwareOptions cache_aware = {},
                   NodeCredentials credentials = {}, const Clock* clock = nullptr);
  ~RouteServiceImpl() override;

  // Each call is counted in kvtier_router_rpc_requests_total and _rpc_duration_seconds.
  grpc::Status Route(grpc::ServerContext* ctx, const v1::RouteRequest* request,
                     v1::RouteResponse* response) override;
  grpc::Status Members(grpc::ServerContext* ctx, const v1::MembersRequest* request,
                       v1::MembersResponse* response) override;
  grpc::Status Report(grpc::ServerContext* ctx, const v1::ReportRequest* request,
                      v1::ReportResponse* response) override;
  // Streams this replica's decisions until the caller goes or the service stops.
  grpc::Status Sync(grpc::ServerContext* ctx, const v1::SyncRequest* request,
                    grpc::ServerWriter<v1::SyncBatch>* writer) override;

  // What the status page shows (router/status_page.h), now.
  RouterStatus Status();

  // New membership (from a re-read node file or a re-resolved DNS name). Members that stay keep
  // their load and health; new ones start healthy; only the keys of nodes that join or leave
  // move.
  void SetMembers(std::vector<RingNode> nodes);
  // Replica sync: follow these replicas' decisions (host:port of their RouteService; this
  // replica's own address among them is recognised and skipped). The first call turns sync on:
  // from then on this replica logs its decisions for its peers' Sync streams.
  void SetPeers(const std::vector<std::string>& addresses);

 private:
  struct Member;
  struct Metrics;
  struct Peer;
  // Applies a peer's batch: its counted keys, placements and work.
  void ApplyPeerBatch(Peer& peer, const v1::SyncBatch& batch);
  grpc::Status RouteImpl(const v1::RouteRequest* request, v1::RouteResponse* response);
  grpc::Status MembersImpl(v1::MembersResponse* response);
  grpc::Status ReportImpl(const v1::ReportRequest* request);
  // Runs `body` as call `rpc`, and counts it.
  template <typename F>
  grpc::Status Observed(const char* rpc, F body);
  void ProbeLoop();
  // Follows `m`'s engine's KV events, where cache_aware_.engines names them.
  void StartEngineWatch(Member& m);
  void RebuildLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The names of the healthy members, in ring order.
  std::vector<std::string> RingNamesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kvtier_router_load_blocks and kvtier_router_imbalance from the members' loads now.
  void SetLoadMetricsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One point of the cluster's hit ratio: the Lookup blocks the members answered since the last
  // round.
  void AddHistoryLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const HealthOptions health_;
  const CacheAwareOptions cache_aware_;
  const NodeCredentials credentials_;
  const Clock* const clock_;
  const HealthProber prober_;
  CacheIndex index_;
  Mutex mu_;
  std::vector<std::shared_ptr<Member>> members_ ABSL_GUARDED_BY(mu_);
  Router router_ ABSL_GUARDED_BY(mu_);
  LoadTracker loads_ ABSL_GUARDED_BY(mu_);
  std::vector<int> ring_members_ ABSL_GUARDED_BY(mu_);  // ring node index -> member index
  // Member name -> ring node index, for peers' placements (RebuildLocked keeps it).
  absl::flat_hash_map<std::string, int> ring_index_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Metrics> metrics_;
  static constexpr size_t kHistoryPoints = 600;
  std::deque<std::pair<double, double>> history_ ABSL_GUARDED_BY(mu_);  // RouterStatus::history
  // Replica sync. replica_id_ is random per start; decisions_ is kept while syncing_.
  const uint64_t replica_id_;
  std::atomic<bool> syncing_{false};
  DecisionLog decisions_ ABSL_GUARDED_BY(mu_);
  CondVar decided_;  // signalled when decisions_ grows
  Mutex peers_mu_;  // never taken under mu_ (a PeerSync's thread applies under mu_)
  std::vector<std::unique_ptr<Peer>> peers_ ABSL_GUARDED_BY(peers_mu_);
  std::atomic<bool> stop_{false};
  std::thread prober_thread_;
};

}  // namespace kvtier::router
