#pragma once
// DaemonWatch: one kvtierd's CacheService.WatchBlocks stream, fed into the CacheIndex under the
// node's id, for as long as the node is a member. A reset or a lost stream forgets what the node
// held; the stream is made again every `retry_ms`. A stream that fails is logged (its status:
// UNAUTHENTICATED or PERMISSION_DENIED means the router's token is missing or not a cluster
// token), once per run of failures, and again when it is back.

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kvtier/v1/cache.grpc.pb.h"
#include "router/cache_index.h"
#include "router/node_channel.h"

namespace kvtier::router {

class DaemonWatch {
 public:
  // Starts watching. REQUIRES: `index` and `cache` outlive this.
  DaemonWatch(std::string node, uint32_t id, v1::CacheService::Stub* cache, CacheIndex* index,
              const NodeCredentials& credentials, int retry_ms);
  // Stops the stream and waits for its thread.
  ~DaemonWatch();

  // True while a stream is open (it has answered at least once).
  bool watching() const { return watching_; }

 private:
  void Loop();

  const std::string node_;
  const uint32_t id_;
  v1::CacheService::Stub* const cache_;
  CacheIndex* const index_;
  const NodeCredentials credentials_;
  const int retry_ms_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> watching_{false};
  std::mutex ctx_mu_;
  grpc::ClientContext* ctx_ = nullptr;  // guarded by ctx_mu_
  std::thread thread_;
};

}  // namespace kvtier::router
