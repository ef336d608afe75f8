#pragma once
// CacheIndex: which node holds which block, for cache-aware routing. Fed by the nodes' block
// events (kvtierd's CacheService.WatchBlocks, engines' KV events); asked, per request, how long a
// prefix of the request's chain each node holds. Nodes are small integer ids, reused after a node
// leaves, with no limit on how many there are; each key keeps the ids of its holders inline (one
// or two in the common case). Keys beyond `max_keys` are not indexed and are counted as dropped.
// Thread-safe: events and lookups may come from any thread.

#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "common/block_key.h"
#include "common/mutex.h"

namespace kvtier::router {

class CacheIndex {
 public:
  explicit CacheIndex(size_t max_keys = size_t{2} << 20) : max_keys_(max_keys) {}

  // An id for a new node: the smallest one no node has.
  uint32_t AddNode();
  // Forgets what node `id` holds and frees its id.
  void RemoveNode(uint32_t id);
  // Node `id` stored / removed these blocks.
  void Stored(uint32_t id, std::span<const BlockKey> keys);
  void Removed(uint32_t id, std::span<const BlockKey> keys);
  // Forgets what node `id` holds (its stream was reset or lost; it stays a node).
  void Forget(uint32_t id);

  // For a chain of `n` keys, key i being `key_at(i)`: each node that holds the chain's first block,
  // with the number of leading blocks it holds, in `*out` (cleared first). Keys are asked for in
  // order, and only as deep as some node still holds every block so far: a prompt's keys need to
  // be computed only that far.
  template <typename KeyAt>
  void Prefixes(size_t n, KeyAt&& key_at, std::vector<std::pair<uint32_t, size_t>>* out) const;

  size_t keys() const;
  uint64_t dropped() const;

 private:
  using Holders = absl::InlinedVector<uint32_t, 2>;
  const Holders* FindLocked(const BlockKey& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &it->second;
  }
  void ForgetLocked(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_keys_;
  mutable Mutex mu_;
  absl::flat_hash_map<BlockKey, Holders> index_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> used_ids_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

template <typename KeyAt>
void CacheIndex::Prefixes(size_t n, KeyAt&& key_at,
                          std::vector<std::pair<uint32_t, size_t>>* out) const {
  out->clear();
  size_t alive = 0;  // (*out)[0, alive) hold every block so far
  for (size_t i = 0; i < n && (i == 0 || alive > 0); ++i) {
    // Each key is computed outside the lock: hashing a block of tokens takes longer than a
    // lookup.
    const BlockKey key = key_at(i);
    MutexLock lock(&mu_);
    const Holders* holders = FindLocked(key);
    if (i == 0) {
      if (holders == nullptr) return;
      for (uint32_t id : *holders) out->emplace_back(id, 1);
      alive = out->size();
      continue;
    }
    // Those that hold block i move up; the others keep the length they reached.
    size_t kept = 0;
    for (size_t j = 0; j < alive; ++j) {
      if (holders == nullptr ||
          std::find(holders->begin(), holders->end(), (*out)[j].first) == holders->end()) {
        continue;
      }
      ++(*out)[j].second;
      std::swap((*out)[j], (*out)[kept++]);
    }
    alive = kept;
  }
}

}  // namespace kvtier::router
