#pragma once
// KeyIndex: block key -> entry handle, for committed blocks only, in shards that each have their
// own lock (CacheLib's AccessContainer). A read takes one shard lock; nothing here takes the
// store's policy lock. Internal to src/cache.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "cache/entry.h"
#include "common/mutex.h"

namespace kvtier::cache_internal {

class KeyIndex {
 public:
  // Handles hashed and compared by their entries' keys, so a set of 4-byte handles is the map.
  struct HandleHash {
    using is_transparent = void;
    const EntryPool* pool;
    size_t operator()(uint32_t h) const { return absl::Hash<BlockKey>()(pool->At(h).key); }
    size_t operator()(const BlockKey& k) const { return absl::Hash<BlockKey>()(k); }
  };
  struct HandleEq {
    using is_transparent = void;
    const EntryPool* pool;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t a, const BlockKey& k) const { return pool->At(a).key == k; }
    bool operator()(const BlockKey& k, uint32_t a) const { return pool->At(a).key == k; }
  };
  struct Shard {
    mutable Mutex mu;
    absl::flat_hash_set<uint32_t, HandleHash, HandleEq> set ABSL_GUARDED_BY(mu);
  };

  // REQUIRES: shards is a power of two.
  KeyIndex(const EntryPool* pool, size_t shards);

  size_t ShardIndex(const BlockKey& k) const { return k.hi & (shards_.size() - 1); }
  Shard& ShardOf(const BlockKey& k) const { return const_cast<Shard&>(shards_[ShardIndex(k)]); }
  Shard& shard(size_t i) const { return const_cast<Shard&>(shards_[i]); }
  size_t shard_count() const { return shards_.size(); }

  // The handle of `key`, or kNoEntry.
  uint32_t FindLocked(const Shard& s, const BlockKey& key) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    auto it = s.set.find(key);
    return it == s.set.end() ? kNoEntry : *it;
  }
  uint32_t Find(const BlockKey& key) const;
  // REQUIRES: no entry of h's key is indexed.
  void InsertLocked(Shard& s, uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) { s.set.insert(h); }
  void EraseLocked(Shard& s, uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) { s.set.erase(h); }

  // For each key of `keys`, the tier of its block, or kAbsent; each shard locked once per batch.
  static constexpr uint8_t kAbsent = 0xff;
  void TiersOf(std::span<const BlockKey> keys, std::vector<uint8_t>* tiers) const;

  uint64_t MemoryBytes() const;

 private:
  const EntryPool* pool_;
  std::vector<Shard> shards_;
};

}  // namespace kvtier::cache_internal
