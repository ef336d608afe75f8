#pragma once
// Replica sync: kvtier-router replicas behind one Service (round robin) share their routing
// decisions, so that they route a prefix alike. Without it each replica has its own popularity
// sketch, placements and load view, and the turns of one conversation, spread over the
// replicas, meet different nodes (a third of the hit rate lost with three replicas).
//
// Each replica keeps a DecisionLog of what it decided: the keys each request counted in the
// popularity sketch, the placements it made or moved, and its prefill work per node. Its peers
// follow the log through RouteService.Sync (a PeerSync each) and apply it: the same counts,
// the same placements, everyone's work in every load view. A stream sends as soon as there is
// something new (what piles up while a write is under way goes in the next batch), so a peer is
// a network round trip behind, not a polling period: replicas that decide on stale loads pile
// new prefixes onto the same idle node. Two replicas that place one new prefix within that
// window on different nodes each adopt the other's choice; the prefix's next placement settles
// it.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/block_key.h"
#include "kvtier/v1/router.grpc.pb.h"

namespace kvtier::router {

// Not thread-safe: kvtier-router uses it under its routing lock.
class DecisionLog {
 public:
  explicit DecisionLog(size_t capacity = size_t{1} << 16);

  // A routed request: the keys it counted; `placed_node` non-empty when it placed
  // `placed_key` there.
  void Decided(std::span<const BlockKey> counted, const BlockKey& placed_key,
               const std::string& placed_node);
  // Prefill work accounted for `node`: blocks routed there, blocks reported prefilled.
  void Worked(const std::string& node, double routed, double reported);

  // Moves the decisions after `*cursor` (at most `max`) and the work totals changed since
  // version `*seen` (all of them for 0) into `batch`, and advances both. A cursor the log has
  // dropped past counts the dropped decisions in decisions_lost.
  void Read(uint64_t* cursor, uint64_t* seen, size_t max, v1::SyncBatch* batch) const;
  // The cursor of a reader that starts now (decisions from now on).
  uint64_t end() const { return first_ + entries_.size(); }
  // Grows with every Decided and Worked; never 0.
  uint64_t version() const { return version_; }

 private:
  struct Entry {
    std::vector<BlockKey> counted;
    BlockKey placed_key;
    std::string placed_node;
  };
  const size_t capacity_;
  struct Work {
    double routed = 0, reported = 0;
    uint64_t version = 0;  // at its last change
  };
  uint64_t first_ = 0;  // sequence number of entries_.front()
  uint64_t version_ = 1;
  std::deque<Entry> entries_;
  absl::flat_hash_map<std::string, Work> work_;
};

// Follows one peer's Sync stream and hands each batch to `apply`, from its own thread. A stream
// that fails is logged once per run of failures and made again every `retry_ms`; a peer that
// turns out to be this replica (FAILED_PRECONDITION naming it) is left alone.
class PeerSync {
 public:
  using Apply = std::function<void(const v1::SyncBatch&)>;
  PeerSync(std::string address, uint64_t replica_id, Apply apply, int retry_ms);
  // Stops the stream and waits for its thread.
  ~PeerSync();

  const std::string& address() const { return address_; }
  bool synced() const { return synced_; }    // a stream is open and has answered
  bool is_self() const { return is_self_; }  // the address is this replica's

 private:
  void Loop();

  const std::string address_;
  const uint64_t replica_id_;
  const Apply apply_;
  const int retry_ms_;
  std::atomic<bool> stop_{false}, synced_{false}, is_self_{false};
  std::mutex ctx_mu_;
  grpc::ClientContext* ctx_ = nullptr;  // guarded by ctx_mu_
  std::thread thread_;
};

// The reason text of Sync's FAILED_PRECONDITION for a caller that is the replica itself.
inline constexpr char kSyncSelf[] = "sync: the caller is this replica";

}  // namespace kvtier::router
