#include "cache/key_index.h"

#include <algorithm>

namespace kvtier::cache_internal {

KeyIndex::KeyIndex(const EntryPool* pool, size_t shards) : pool_(pool), shards_(shards) {
  for (Shard& s : shards_) {
    MutexLock l(&s.mu);
    s.set = decltype(s.set)(0, HandleHash{pool}, HandleEq{pool});
  }
}

uint32_t KeyIndex::Find(const BlockKey& key) const {
  const Shard& s = ShardOf(key);
  MutexLock l(&s.mu);
  return FindLocked(s, key);
}

void KeyIndex::TiersOf(std::span<const BlockKey> keys, std::vector<uint8_t>* tiers) const {
  // Keys grouped by shard (a counting sort), then each shard locked once for its keys: a lock per
  // key was a fifth of an 8,192-key Lookup.
  const size_t nshards = shards_.size();
  thread_local std::vector<uint32_t> first, next;
  thread_local std::vector<uint32_t> order;
  first.assign(nshards + 1, 0);
  next.resize(nshards);
  order.resize(keys.size());
  tiers->resize(keys.size());
  for (const BlockKey& k : keys) ++first[ShardIndex(k) + 1];
  for (size_t i = 1; i <= nshards; ++i) first[i] += first[i - 1];
  std::copy(first.begin(), first.end() - 1, next.begin());
  for (size_t i = 0; i < keys.size(); ++i) order[next[ShardIndex(keys[i])]++] = i;
  for (size_t sh = 0; sh < nshards; ++sh) {
    if (first[sh] == first[sh + 1]) continue;
    const Shard& shard = shards_[sh];
    MutexLock l(&shard.mu);
    for (uint32_t j = first[sh]; j < first[sh + 1]; ++j) {
      const uint32_t h = FindLocked(shard, keys[order[j]]);
      (*tiers)[order[j]] = h == kNoEntry ? kAbsent : static_cast<uint8_t>(pool_->At(h).tier);
    }
  }
}

uint64_t KeyIndex::MemoryBytes() const {
  uint64_t bytes = 0;
  for (const Shard& s : shards_) {
    MutexLock l(&s.mu);
    bytes += s.set.capacity() * (sizeof(uint32_t) + 1);
  }
  return bytes;
}

}  // namespace kvtier::cache_internal
