#pragma once
// EvictionPolicy: which block of a tier goes first when the tier needs room (CacheLib's
// MMContainer). PrefixAwarePolicy is kvtier's: in each tier, blocks whose parent is gone first
// (orphans: they can never be a prefix hit), then chain tails (no child in this tier or a faster
// one), then interior blocks; least recently used first within each class.
//
// Not thread-safe: BlockStore calls it under its policy lock. Recency is recorded without that
// lock (Entry::last_access, written by any reader); RecordAccess moves a block to the front when
// the reader got the lock without waiting, and PickVictim moves a block it finds read since it
// was listed to the front instead of choosing it. Blocks that must not be evicted now (leased,
// moving, pinned by a reader) are hidden: off the lists, so picking never walks past them.
// Internal to src/cache.

#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "cache/entry.h"
#include "cache/key_index.h"

namespace kvtier::cache_internal {

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  // A block became visible: linked into its chain and listed in its tier.
  virtual void Add(uint32_t h) = 0;
  // A block leaves the store (or is replaced): off the lists and out of its chain; its children
  // become orphans until a block of their parent's key is added again.
  virtual void Remove(uint32_t h) = 0;
  // Off the lists while the block must not be evicted, and back (by its recency). Both may be
  // called for a block in either state.
  virtual void Hide(uint32_t h) = 0;
  virtual void Show(uint32_t h) = 0;
  virtual bool listed(uint32_t h) const = 0;
  // A read of a listed block: it becomes its tier's most recent.
  virtual void RecordAccess(uint32_t h) = 0;
  // The block moved to another tier; it was in `from`.
  virtual void TierChanged(uint32_t h, Tier from) = 0;
  // The block of `tier` to evict first that `usable` accepts, or kNoEntry. Blocks `usable`
  // rejects are hidden (shown again by the caller when they become usable).
  virtual uint32_t PickVictim(Tier tier, absl::FunctionRef<bool(uint32_t)> usable) = 0;
  // The same among the blocks of one tenant (Entry::tenant), looking at no more than
  // `max_steps` listed blocks; other tenants' blocks are passed over, not hidden.
  virtual uint32_t PickTenantVictim(Tier tier, uint16_t tenant, size_t max_steps,
                                    absl::FunctionRef<bool(uint32_t)> usable) = 0;

  virtual uint64_t orphans() const = 0;
  virtual uint64_t listed_blocks() const = 0;
  virtual uint64_t MemoryBytes() const = 0;
  // Walks every list and link and checks that they agree.
  virtual absl::Status Check() const = 0;
};

class PrefixAwarePolicy final : public EvictionPolicy {
 public:
  // `index` finds a parent block by its key when a child arrives.
  PrefixAwarePolicy(EntryPool* pool, const KeyIndex* index) : pool_(pool), index_(index) {}

  void Add(uint32_t h) override;
  void Remove(uint32_t h) override;
  void Hide(uint32_t h) override { Unlist(h); }
  void Show(uint32_t h) override;
  bool listed(uint32_t h) const override { return E(h).cls != kUnlisted; }
  void RecordAccess(uint32_t h) override;
  void TierChanged(uint32_t h, Tier from) override;
  uint32_t PickVictim(Tier tier, absl::FunctionRef<bool(uint32_t)> usable) override;
  uint32_t PickTenantVictim(Tier tier, uint16_t tenant, size_t max_steps,
                            absl::FunctionRef<bool(uint32_t)> usable) override;
  uint64_t orphans() const override { return orphans_; }
  uint64_t listed_blocks() const override;
  uint64_t MemoryBytes() const override;
  absl::Status Check() const override;

 private:
  // Eviction classes, evicted in this order.
  enum Class : uint8_t { kOrphan = 0, kLeaf = 1, kInterior = 2, kNumClasses = 3, kUnlisted = 0xff };
  struct List {
    uint32_t head = kNoEntry;  // most recent
    uint32_t tail = kNoEntry;  // least recent
    uint64_t size = 0;
  };

  Entry& E(uint32_t h) const { return pool_->At(h); }
  List& ListOf(Tier t, uint8_t cls) { return lists_[static_cast<int>(t)][cls]; }
  uint8_t ClassOf(const Entry& e) const;
  // PickVictim's walk, over the blocks `wanted` accepts, for at most `max_steps` of them all.
  uint32_t Pick(Tier tier, size_t max_steps, absl::FunctionRef<bool(const Entry&)> wanted,
                absl::FunctionRef<bool(uint32_t)> usable);
  void Unlist(uint32_t h) { Unlist(h, E(h).tier); }
  void Unlist(uint32_t h, Tier listed_in);  // listed_in: the tier whose list holds h
  void ListByRecency(uint32_t h);
  void Relist(uint32_t h);
  void AdjustKidsHere(uint32_t parent, int delta);
  void AddChild(uint32_t parent, uint32_t child);
  void RecountKidsHere(uint32_t h, Tier from);

  EntryPool* pool_;
  const KeyIndex* index_;
  List lists_[kNumTiers][kNumClasses];
  // Children whose parent is absent, by the parent's key: head of a sibling list.
  absl::flat_hash_map<BlockKey, uint32_t> waiting_;
  uint64_t orphans_ = 0;
};

}  // namespace kvtier::cache_internal
