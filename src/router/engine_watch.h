#pragma once
// EngineWatch: one inference engine's KV events (vLLM's protocol; src/kvevents) fed into the
// CacheIndex under the engine's node id, for cache-aware routing over engines that keep their own
// prefix cache, with or without kvtierd beside them. The engine's blocks are indexed by kvtier's
// chain keys computed from the tokens its events carry (EngineBlockMapper), in the namespace of
// EngineEventsOptions; Route looks them up with the same namespace. A lost batch the engine
// cannot replay, a restart and AllBlocksCleared forget what the engine held; so does the engine
// leaving the membership.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/block_key.h"
#include "router/cache_index.h"

namespace kvtier::kvevents {
class EngineBlockMapper;
class KvEventSubscriber;
}  // namespace kvtier::kvevents

namespace kvtier::router {

// What the engines' blocks are keyed by: their model and KV layout (as in KeyNamespace). A
// request is matched against engines' blocks only when its model is this one.
struct EngineEventsOptions {
  std::string model_id;
  uint64_t layout_fingerprint = 0;
};

class EngineWatch {
 public:
  struct Counters {
    uint64_t batches = 0, lost = 0, malformed = 0;   // the subscriber's
    uint64_t stored_blocks = 0, unknown_parent = 0;  // the mapper's
  };
  // Subscribes to `endpoint` (and `replay_endpoint`, if not empty). UNAVAILABLE or
  // INVALID_ARGUMENT naming the endpoint when it cannot. REQUIRES: `index` outlives this.
  static absl::StatusOr<std::unique_ptr<EngineWatch>> Start(const std::string& endpoint,
                                                            const std::string& replay_endpoint,
                                                            const EngineEventsOptions& options,
                                                            uint32_t id, CacheIndex* index);
  ~EngineWatch();  // stops the subscriber
  Counters counters() const;

 private:
  class Sink;
  EngineWatch() = default;
  std::unique_ptr<Sink> sink_;
  std::unique_ptr<kvevents::EngineBlockMapper> mapper_;
  std::unique_ptr<kvevents::KvEventSubscriber> subscriber_;
};

}  // namespace kvtier::router
