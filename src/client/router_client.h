#pragma once
// RouterClient: the C++ client of kvtier-router (kvtier.v1.RouteService). Either ask the router
// per request (Route, RouteTokens), or fetch its membership once (RefreshMembers) and route in
// this process with the router's own code (RouteLocally): no round trip per request. Local
// routing shares the router's ring and bound; its placements (where it sent each prefix) and
// its loads (the router's at the last refresh plus what this client routed since) are its own.
// Thread-safe.

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/block_key.h"
#include "common/mutex.h"

namespace kvtier {
namespace router {
class Router;
}

struct RouteResult {
  std::vector<std::string> nodes;     // kvtierd addresses, best first
  size_t routing_depth = 0;           // blocks in the routing key
  size_t expected_cached_blocks = 0;  // leading blocks the first node holds (cache-aware)
};

class RouterClient {
 public:
  // INVALID_ARGUMENT for an empty address. Connects lazily.
  static absl::StatusOr<std::unique_ptr<RouterClient>> Create(const std::string& address,
                                                              int64_t deadline_ms = 5000);
  ~RouterClient();

  // The prompt as its chain of block keys.
  absl::StatusOr<RouteResult> Route(const std::string& tenant, std::span<const BlockKey> chain);
  // The prompt as tokens: the router computes the keys with the namespace {tenant_salt: tenant,
  // model_id: model, layout_fingerprint, adapter_id: adapter} and `block_tokens`.
  absl::StatusOr<RouteResult> RouteTokens(const std::string& tenant, const std::string& model,
                                          std::span<const uint32_t> tokens,
                                          uint32_t block_tokens = 16,
                                          uint64_t layout_fingerprint = 0,
                                          const std::string& adapter = "");
  // What a routed request cost `node` (blocks it prefilled): the router's load signal.
  absl::Status Report(const std::string& node, uint64_t prefilled_blocks);

  // Fetches the healthy members, their loads and the routing parameters for RouteLocally. The
  // placements of prefixes on nodes that are still members are kept.
  absl::Status RefreshMembers();
  // Routes with the last fetched membership, in this process. FAILED_PRECONDITION before the
  // first RefreshMembers, UNAVAILABLE when no member was healthy.
  absl::StatusOr<RouteResult> RouteLocally(std::span<const BlockKey> chain);

 private:
  struct Rpc;
  RouterClient() = default;
  int64_t deadline_ms_ = 5000;
  std::unique_ptr<Rpc> rpc_;
  Mutex mu_;
  std::unique_ptr<router::Router> local_ ABSL_GUARDED_BY(mu_);
  std::vector<double> loads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier
