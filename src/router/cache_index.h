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
#include "common/huge_page_allocator.h"
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
  // with the number of leading blocks it holds, in `*out` (cleared first). A node's blocks are
  // taken to be prefix-closed (holding block i, it holds every block before it: chains are
  // stored parent first and evicted tail first), so the search gallops: it looks at blocks 1, 2,
  // 4, 8, ... past the first while some node holds them, then bisects where a node stops, a
  // lookup for each doubling and each halving instead of one a block. Keys are asked for only up
  // to about twice the longest prefix held; key_at may be asked for a key more than once, and out
  // of order (a lazily computed chain should keep what it computed).
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
  // On huge pages: lookups probe it at random, up to ~140 MiB of it.
  absl::flat_hash_map<BlockKey, Holders, absl::Hash<BlockKey>, std::equal_to<BlockKey>,
                      HugePageAllocator<std::pair<const BlockKey, Holders>>>
      index_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> used_ids_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

template <typename KeyAt>
void CacheIndex::Prefixes(size_t n, KeyAt&& key_at,
                          std::vector<std::pair<uint32_t, size_t>>* out) const {
  out->clear();
  if (n == 0) return;
  // The holders of block i (a copy: the lock is held for the lookup only). The key is computed
  // outside the lock: hashing a block of tokens takes longer than a lookup.
  Holders holders;
  auto look = [&](size_t i) -> const Holders& {
    const BlockKey key = key_at(i);
    MutexLock lock(&mu_);
    const Holders* h = FindLocked(key);
    holders = h != nullptr ? *h : Holders();
    return holders;
  };
  auto holds = [](const Holders& h, uint32_t id) {
    return std::find(h.begin(), h.end(), id) != h.end();
  };
  for (uint32_t id : look(0)) out->emplace_back(id, 1);
  // (*out)[0, alive) hold every block up to `lo`; the others have their lengths.
  size_t alive = out->size(), lo = 0;
  // Nodes (*out)[first, last) hold block `a` and not block `b`: bisect, grouping those that
  // agree, until each has its last block.
  auto bisect = [&](auto& self, size_t first, size_t last, size_t a, size_t b) -> void {
    if (first == last) return;
    if (b - a <= 1) {
      for (size_t j = first; j < last; ++j) (*out)[j].second = a + 1;
      return;
    }
    const size_t mid = a + (b - a) / 2;
    const Holders& h = look(mid);
    const size_t split = std::partition(out->begin() + first, out->begin() + last,
                                        [&](const auto& node) { return holds(h, node.first); }) -
                         out->begin();
    self(self, first, split, mid, b);
    self(self, split, last, a, mid);
  };
  for (size_t step = 1; alive > 0 && lo + 1 < n; step *= 2) {
    const size_t hi = std::min(lo + step, n - 1);
    const Holders& h = look(hi);
    const size_t kept = std::partition(out->begin(), out->begin() + alive,
                                       [&](const auto& node) { return holds(h, node.first); }) -
                        out->begin();
    if (kept < alive) bisect(bisect, kept, alive, lo, hi);
    alive = kept;
    lo = hi;
  }
  for (size_t j = 0; j < alive; ++j) (*out)[j].second = lo + 1;
}

}  // namespace kvtier::router
