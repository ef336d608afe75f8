#pragma once
// The store's per-block record and the pool that holds them. Internal to src/cache.
//
// An Entry is reached by a 4-byte handle: the pool keeps entries in chunks that never move, so a
// handle found in the index stays valid while the entry is pinned, leased or busy. Which lock
// guards which field is said beside it: "policy" is BlockStore's policy lock, "shard" the lock of
// the index shard that holds the entry's key; fields written under both may be read under either.

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/block_key.h"
#include "common/tier.h"

namespace kvtier::cache_internal {

inline constexpr uint32_t kNoEntry = UINT32_MAX;

enum class EntryState : uint8_t {
  kFree,       // in the pool's free list
  kReserved,   // a put's bytes, not yet visible; owned by its PutHandle, not indexed
  kCommitted,  // visible: in the index, listed by the eviction policy unless hidden
  kDoomed,     // gone from the index; freed when the last pin, lease and move let go
};

// Flags, under the policy lock.
enum EntryFlag : uint8_t {
  kOnFlash = 1,  // the flash tier holds a record of this block (a copy, or its only place)
  kDurable = 2,  // that record is on stable storage
  kMoving = 4,   // the mover copies it between tiers now; no other move starts
  kCorrupt = 8,  // dropped for failing its checksum: its flash record is deleted durably
};

struct Entry {
  // What an index lookup reads (key, tier, state) shares the key's cache line.
  BlockKey key;                          // set before the entry is published
  Tier tier = Tier::kHost;               // policy + shard
  EntryState state = EntryState::kFree;  // policy + shard
  uint16_t pins = 0;                     // shard: readers in flight
  uint16_t leases = 0;                   // policy
  uint8_t cls = 0xff;                    // policy: the eviction container's (0xff: unlisted)
  uint8_t flags = 0;                     // policy: EntryFlag
  BlockKey parent;                       // set before the entry is published
  uint64_t checksum = 0;                 // set before the entry is published
  uint64_t location = 0;                 // policy + shard: offset in the memory tier's arena
  std::atomic<uint32_t> last_access{0};  // any thread: the store's access clock at the last hit
  uint32_t listed_access = 0;            // policy: last_access when it was last listed
  uint32_t size = 0;                     // set before the entry is published
  uint32_t generation = 0;               // policy + shard: new for every placement
  // The eviction container's links (policy).
  uint32_t lru_prev = kNoEntry, lru_next = kNoEntry;
  uint32_t parent_ref = kNoEntry;
  uint32_t first_child = kNoEntry, next_sibling = kNoEntry, prev_sibling = kNoEntry;
  uint32_t kids_here = 0;
  std::atomic<uint8_t> hits{0};  // any thread: saturating count of reads since the put
  uint8_t parked = 0;            // shard: hidden by the victim picker because it was pinned
  uint16_t tenant = 0;           // set before the entry is published (PutOptions::tenant)

  // Back to a fresh entry (atomics make the type not assignable).
  void Reset() {
    key = parent = BlockKey{};
    tier = Tier::kHost;
    state = EntryState::kFree;
    pins = leases = 0;
    cls = 0xff;
    flags = 0;
    checksum = location = 0;
    last_access.store(0, std::memory_order_relaxed);
    listed_access = size = generation = 0;
    lru_prev = lru_next = parent_ref = first_child = next_sibling = prev_sibling = kNoEntry;
    kids_here = 0;
    hits.store(0, std::memory_order_relaxed);
    parked = 0;
    tenant = 0;
  }
};
static_assert(sizeof(Entry) == 104, "the index's memory per block (bench_store) counts on it");

// Handles -> entries. Alloc and Free under the policy lock; At from any thread for a handle the
// caller holds (found in the index under its shard lock, or owned).
class EntryPool {
 public:
  static constexpr uint32_t kChunkEntries = 4096;
  static constexpr uint32_t kMaxChunks = 1u << 16;  // 268M entries

  EntryPool() : chunks_(new std::unique_ptr<Entry[]>[kMaxChunks]) {}
  Entry& At(uint32_t h) const { return chunks_[h / kChunkEntries][h % kChunkEntries]; }

  // A fresh entry, or kNoEntry when the pool is full.
  uint32_t Alloc() {
    if (free_.empty()) {
      if (num_chunks_ == kMaxChunks) return kNoEntry;
      chunks_[num_chunks_] = std::make_unique<Entry[]>(kChunkEntries);
      for (uint32_t i = kChunkEntries; i-- > 0;) free_.push_back(num_chunks_ * kChunkEntries + i);
      ++num_chunks_;
    }
    const uint32_t h = free_.back();
    free_.pop_back();
    At(h).Reset();
    return h;
  }
  void Free(uint32_t h) {
    At(h).state = EntryState::kFree;
    free_.push_back(h);
  }
  uint64_t MemoryBytes() const {
    return uint64_t{num_chunks_} * kChunkEntries * sizeof(Entry) +
           free_.capacity() * sizeof(uint32_t) + kMaxChunks * sizeof(std::unique_ptr<Entry[]>);
  }

 private:
  std::unique_ptr<std::unique_ptr<Entry[]>[]> chunks_;
  uint32_t num_chunks_ = 0;
  std::vector<uint32_t> free_;
};

}  // namespace kvtier::cache_internal
