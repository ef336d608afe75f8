#pragma once
// PlacementMemory: the node each routing key was last placed on, in bounded memory, so that the
// later requests of a prefix go where its blocks are cached even after loads have shifted.
// A 4-way set-associative table of (key fingerprint, node id, last use); a full set forgets its
// least recently used entry. Node ids are the Router's stable ids for node names, so a
// membership change keeps every placement on the nodes that remain.

#include <cstdint>
#include <vector>

#include "common/block_key.h"

namespace kvtier::router {

class PlacementMemory {
 public:
  // `entries` rounded up to a power of two (at least 64); memory is 16 bytes an entry.
  explicit PlacementMemory(size_t entries = size_t{1} << 20);

  // The node id remembered for `key`, or -1. Find marks the entry as recently used.
  int64_t Find(const BlockKey& key);
  int64_t Peek(const BlockKey& key) const;
  void Remember(const BlockKey& key, uint32_t node_id);

  size_t size() const { return live_; }  // keys remembered now
  size_t memory_bytes() const { return entries_.size() * sizeof(Entry); }

 private:
  struct Entry {
    uint64_t tag = 0;  // 0: empty
    uint32_t node = 0;
    uint32_t used = 0;  // clock value at the last use (wraps; compared by age)
  };
  static constexpr size_t kWays = 4;
  Entry* Set(uint64_t tag);
  const Entry* Set(uint64_t tag) const;
  static uint64_t Tag(const BlockKey& key);

  std::vector<Entry> entries_;
  size_t set_mask_;
  uint32_t clock_ = 0;
  size_t live_ = 0;
};

}  // namespace kvtier::router
