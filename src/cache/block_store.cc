#include "cache/block_store.h"

#include <algorithm>
#include <cstring>
#include <atomic>
#include <queue>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "cache/device_arena.h"
#include "cache/host_arena.h"
#include "cache/nvme_tier.h"
#include "cache/slab_allocator.h"
#include "common/checksum.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace kvtier {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kHbm:
      return "hbm";
    case Tier::kHost:
      return "host";
    case Tier::kNvme:
      return "nvme";
  }
  return "invalid";
}

const char* NvmeAdmissionName(NvmeAdmission a) {
  return a == NvmeAdmission::kAll ? "all" : "seen-twice";
}

absl::Status StoreOptions::Validate() const {
  if (max_block_bytes == 0 || max_block_bytes > KvLayout::kMaxBlockBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_block_bytes: must be in (0, ", KvLayout::kMaxBlockBytes, "]"));
  }
  const size_t slab = SlabAllocator::ChunkBytes(max_block_bytes);
  if (host_bytes < slab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host_bytes: ", host_bytes, " cannot hold one block of max_block_bytes (", slab, ")"));
  }
  if (hbm_bytes != 0 && hbm_bytes < slab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hbm_bytes: ", hbm_bytes, " cannot hold one block of max_block_bytes (", slab, ")"));
  }
  if (!nvme_path.empty() && nvme_bytes < max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nvme_bytes: ", nvme_bytes, " cannot hold one block of max_block_bytes"));
  }
  if (lease_ttl_us <= 0) return absl::InvalidArgumentError("lease_ttl_us: must be > 0");
  if (max_lease_ttl_us < lease_ttl_us) {
    return absl::InvalidArgumentError("max_lease_ttl_us: must be >= lease_ttl_us");
  }
  if (max_lease_blocks == 0) return absl::InvalidArgumentError("max_lease_blocks: must be > 0");
  if (index_shards == 0 || (index_shards & (index_shards - 1)) != 0 || index_shards > 4096) {
    return absl::InvalidArgumentError("index_shards: must be a power of two in [1, 4096]");
  }
  return absl::OkStatus();
}

namespace {

constexpr uint32_t kNone = UINT32_MAX;
constexpr uint32_t kChunkEntries = 4096;
constexpr uint32_t kMaxChunks = 1u << 16;  // 268M entries
// NVMe reads in flight at once for one lease's promotions.
constexpr size_t kLeasePromotionThreads = 8;

enum class State : uint8_t { kFree, kReserved, kCommitted, kDoomed };
// Eviction classes, evicted in this order.
enum Class : uint8_t { kOrphan = 0, kLeaf = 1, kInterior = 2, kNumClasses = 3, kUnlisted = 255 };
enum Flags : uint8_t { kOnNvme = 1, kDeleteDurably = 2 };

struct Entry {
  // What an index lookup reads (key, tier, state) shares the key's cache line in most entries.
  BlockKey key;
  Tier tier = Tier::kHost;
  State state = State::kFree;  // written under mu_ and the shard lock
  uint16_t pins = 0;           // readers and writers in flight; guarded by the shard lock
  uint16_t leases = 0;         // guarded by mu_
  uint8_t cls = kUnlisted;     // guarded by mu_
  uint8_t flags = 0;           // guarded by mu_
  BlockKey parent;
  uint64_t checksum = 0;
  uint64_t location = 0;
  uint64_t last_access = 0;  // store tick; guarded by mu_
  uint32_t size = 0;
  uint32_t generation = 0;
  uint32_t lru_prev = kNone, lru_next = kNone;  // guarded by mu_
  uint32_t parent_ref = kNone;                  // guarded by mu_
  uint32_t first_child = kNone, next_sibling = kNone, prev_sibling = kNone;  // guarded by mu_
  // Children in this block's tier or a faster one: the block is a chain tail *in its tier* when
  // there are none (children already demoted below it do not keep it up). Guarded by mu_.
  uint32_t kids_here = 0;
  uint8_t hits = 0;  // saturating read count; guarded by mu_
};
static_assert(sizeof(Entry) == 104, "the index's memory per block (bench_store) counts on it");

struct ListHead {
  uint32_t head = kNone;  // most recent
  uint32_t tail = kNone;  // least recent
  uint64_t size = 0;
};

}  // namespace

struct BlockStore::Impl {
  explicit Impl(const StoreOptions& o) : options(o), shards(o.index_shards) {}

  // ---- entry pool: handle -> Entry, stable addresses ------------------------------------------
  Entry& E(uint32_t h) const { return chunks[h / kChunkEntries][h % kChunkEntries]; }
  // Every placement of a block (stored, moved, promoted) gets a generation no placement had
  // before, so a block seen at the same place with the same generation never left it.
  uint32_t NewGeneration() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return next_generation++; }
  uint32_t AllocEntry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (free_entries.empty()) {
      if (num_chunks == kMaxChunks) return kNone;
      chunks[num_chunks] = std::make_unique<Entry[]>(kChunkEntries);
      for (uint32_t i = kChunkEntries; i-- > 0;) free_entries.push_back(num_chunks * kChunkEntries + i);
      ++num_chunks;
    }
    uint32_t h = free_entries.back();
    free_entries.pop_back();
    E(h) = Entry();
    return h;
  }

  // ---- sharded index: key -> handle -----------------------------------------------------------
  struct HandleHash {
    using is_transparent = void;
    const Impl* impl;
    size_t operator()(uint32_t h) const { return absl::Hash<BlockKey>()(impl->E(h).key); }
    size_t operator()(const BlockKey& k) const { return absl::Hash<BlockKey>()(k); }
  };
  struct HandleEq {
    using is_transparent = void;
    const Impl* impl;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t a, const BlockKey& k) const { return impl->E(a).key == k; }
    bool operator()(const BlockKey& k, uint32_t a) const { return impl->E(a).key == k; }
  };
  struct Shard {
    mutable Mutex mu;
    absl::flat_hash_set<uint32_t, HandleHash, HandleEq> set ABSL_GUARDED_BY(mu);
  };
  size_t ShardIndex(const BlockKey& k) const { return k.hi & (shards.size() - 1); }
  Shard& ShardOf(const BlockKey& k) const { return const_cast<Shard&>(shards[ShardIndex(k)]); }
  // Handle of `key` in any state but free, or kNone. Caller holds the shard lock.
  uint32_t FindLocked(Shard& s, const BlockKey& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    auto it = s.set.find(key);
    return it == s.set.end() ? kNone : *it;
  }
  uint32_t Find(const BlockKey& key) const {
    Shard& s = ShardOf(key);
    MutexLock l(&s.mu);
    return FindLocked(s, key);
  }
  uint32_t FindCommitted(const BlockKey& key) const {
    Shard& s = ShardOf(key);
    MutexLock l(&s.mu);
    uint32_t h = FindLocked(s, key);
    return h != kNone && E(h).state == State::kCommitted ? h : kNone;
  }
  void SetState(uint32_t h, State st) {
    Shard& s = ShardOf(E(h).key);
    MutexLock l(&s.mu);
    E(h).state = st;
  }

  // ---- eviction lists -------------------------------------------------------------------------
  ListHead& List(Tier t, uint8_t cls) { return lists[static_cast<int>(t)][cls]; }
  uint8_t ClassOf(const Entry& e) const {
    if (!e.parent.IsZero() && e.parent_ref == kNone) return kOrphan;
    return e.kids_here == 0 ? kLeaf : kInterior;
  }
  void Unlist(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.cls == kUnlisted) return;
    ListHead& l = List(e.tier, e.cls);
    if (e.lru_prev != kNone) E(e.lru_prev).lru_next = e.lru_next; else l.head = e.lru_next;
    if (e.lru_next != kNone) E(e.lru_next).lru_prev = e.lru_prev; else l.tail = e.lru_prev;
    e.lru_prev = e.lru_next = kNone;
    --l.size;
    if (e.cls == kOrphan) --orphans;
    e.cls = kUnlisted;
  }
  // Lists `h` in its tier and class, placed by its recency (walking from the least recent end,
  // a bounded number of steps: exact for the usual case of an old block changing class).
  void ListByRecency(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.leases > 0 || e.state != State::kCommitted) return;  // leased blocks are not evictable
    e.cls = ClassOf(e);
    if (e.cls == kOrphan) ++orphans;
    ListHead& l = List(e.tier, e.cls);
    ++l.size;
    if (l.head == kNone || E(l.head).last_access <= e.last_access) {  // the most recent
      e.lru_prev = kNone;
      e.lru_next = l.head;
      if (l.head != kNone) E(l.head).lru_prev = h; else l.tail = h;
      l.head = h;
      return;
    }
    // From the least recent end, find the first node at least as recent as e and insert e just
    // behind it. Gives up after 64 steps (e then sits a little too close to the tail).
    uint32_t newer = l.tail;
    for (int steps = 0; E(newer).last_access < e.last_access && steps < 64; ++steps) {
      newer = E(newer).lru_prev;
    }
    e.lru_prev = newer;
    e.lru_next = E(newer).lru_next;
    if (e.lru_next != kNone) E(e.lru_next).lru_prev = h; else l.tail = h;
    E(newer).lru_next = h;
  }
  void Relist(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Unlist(h);
    ListByRecency(h);
  }
  void Touch(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    e.last_access = ++tick;
    if (e.hits < 255) ++e.hits;
    if (e.cls == kUnlisted) return;
    Unlist(h);
    ListByRecency(h);  // newest: becomes the head at once
  }

  // ---- chains ---------------------------------------------------------------------------------
  // Adds `delta` to a parent's count of children at its tier or above, relisting it when it
  // turns from chain tail to interior or back.
  void AdjustKidsHere(uint32_t parent, int delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& p = E(parent);
    const bool was_leaf = p.kids_here == 0;
    p.kids_here += delta;
    if (was_leaf != (p.kids_here == 0) && p.cls != kUnlisted) Relist(parent);
  }
  void AddChild(uint32_t parent, uint32_t child) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& p = E(parent);
    Entry& c = E(child);
    c.parent_ref = parent;
    c.prev_sibling = kNone;
    c.next_sibling = p.first_child;
    if (p.first_child != kNone) E(p.first_child).prev_sibling = child;
    p.first_child = child;
    if (c.tier <= p.tier) AdjustKidsHere(parent, +1);
  }
  // Keeps chain-tail classes right after `h` moved from tier `from` to its current tier.
  void OnTierChanged(uint32_t h, Tier from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.parent_ref != kNone) {
      const Tier pt = E(e.parent_ref).tier;
      const int delta = int{e.tier <= pt} - int{from <= pt};
      if (delta != 0) AdjustKidsHere(e.parent_ref, delta);
    }
    e.kids_here = 0;
    for (uint32_t c = e.first_child; c != kNone; c = E(c).next_sibling) {
      if (E(c).tier <= e.tier) ++e.kids_here;
    }
  }
  // Links a newly visible block into the chain structure: to its parent if present, else to the
  // wait list of its parent's key; and adopts blocks that were waiting for it.
  void LinkChain(uint32_t h, bool adopt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (!e.parent.IsZero()) {
      uint32_t p = FindCommitted(e.parent);
      if (p != kNone) {
        AddChild(p, h);
      } else {
        auto [it, inserted] = waiting.try_emplace(e.parent, h);
        e.parent_ref = kNone;
        e.prev_sibling = kNone;
        e.next_sibling = inserted ? kNone : it->second;
        if (!inserted) {
          E(it->second).prev_sibling = h;
          it->second = h;
        }
      }
    }
    if (!adopt) return;
    auto it = waiting.find(e.key);
    if (it == waiting.end()) return;
    uint32_t c = it->second;
    waiting.erase(it);
    while (c != kNone) {
      uint32_t next = E(c).next_sibling;
      AddChild(h, c);
      Relist(c);  // no longer an orphan
      c = next;
    }
  }
  // Unlinks a departing block: from its parent (which may become a tail) or its wait list, and
  // turns its children into orphans waiting for its key.
  void UnlinkChain(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state != State::kCommitted && e.state != State::kDoomed) return;
    if (e.prev_sibling != kNone) E(e.prev_sibling).next_sibling = e.next_sibling;
    if (e.next_sibling != kNone) E(e.next_sibling).prev_sibling = e.prev_sibling;
    if (e.parent_ref != kNone && e.tier <= E(e.parent_ref).tier) AdjustKidsHere(e.parent_ref, -1);
    if (e.prev_sibling == kNone) {
      if (e.parent_ref != kNone) {
        E(e.parent_ref).first_child = e.next_sibling;
      } else if (!e.parent.IsZero()) {
        auto it = waiting.find(e.parent);
        if (it != waiting.end() && it->second == h) {
          if (e.next_sibling == kNone) waiting.erase(it); else it->second = e.next_sibling;
        }
      }
    }
    e.parent_ref = e.prev_sibling = e.next_sibling = kNone;
    uint32_t c = e.first_child;
    e.first_child = kNone;
    e.kids_here = 0;
    if (c == kNone) return;
    waiting[e.key] = c;
    while (c != kNone) {
      E(c).parent_ref = kNone;
      Relist(c);
      c = E(c).next_sibling;
    }
  }

  // ---- space ----------------------------------------------------------------------------------
  SlabAllocator* Alloc(Tier t) { return t == Tier::kHbm ? hbm_alloc.get() : host_alloc.get(); }
  bool TierPresent(Tier t) const {
    switch (t) {
      case Tier::kHbm: return hbm != nullptr;
      case Tier::kHost: return true;
      case Tier::kNvme: return nvme != nullptr;
    }
    return false;
  }
  void FreeSpace(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (e.tier == Tier::kNvme) return;
    Alloc(e.tier)->Free(e.location, e.size);
    --resident[static_cast<int>(e.tier)];
  }

  // Space for `bytes` in memory tier t, evicting (demoting) in policy order as needed.
  absl::StatusOr<uint64_t> MakeRoom(Tier t, size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    SlabAllocator* alloc = Alloc(t);
    for (;;) {
      if (auto loc = alloc->Allocate(bytes)) {
        ++resident[static_cast<int>(t)];
        return *loc;
      }
      uint32_t victim = PickVictim(t);
      if (victim == kNone) {
        return absl::ResourceExhaustedError(absl::StrCat(
            TierName(t), " tier full: no evictable block (", alloc->used_bytes(),
            " bytes in use, ", leased_bytes, " leased); retry after leases end"));
      }
      Demote(victim);
    }
  }
  // Least valuable unpinned block of tier t, or kNone.
  uint32_t PickVictim(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (uint8_t cls = 0; cls < kNumClasses; ++cls) {
      for (uint32_t h = List(t, cls).tail; h != kNone; h = E(h).lru_prev) {
        Shard& s = ShardOf(E(h).key);
        MutexLock l(&s.mu);
        if (E(h).pins == 0) return h;
      }
    }
    return kNone;
  }
  // Try to switch `h` to a new place while no reader holds it. False if a reader does.
  bool Relocate(uint32_t h, Tier t, uint64_t location) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    Shard& s = ShardOf(e.key);
    MutexLock l(&s.mu);
    if (e.pins != 0) return false;
    e.tier = t;
    e.location = location;
    e.generation = NewGeneration();
    return true;
  }
  // Moves an unpinned victim one tier down, or out of the store.
  void Demote(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    const Tier from = e.tier;
    if (from == Tier::kHbm) {
      if (DemoteHbmToHost(h)) return;
      Evict(h);
      return;
    }
    if (from == Tier::kNvme) {
      Evict(h);
      return;
    }
    // Host -> NVMe.
    if (nvme != nullptr && (e.flags & kOnNvme) == 0 && Admit(e)) {
      const uint8_t* bytes = host_base + e.location;
      if (Checksum(bytes, e.size) != e.checksum) {
        ++stats.checksum_failures;
        spdlog::error("store: block {} corrupt in host memory; dropped", e.key.Hex());
        Evict(h);
        return;
      }
      absl::Status st = nvme->Write(e.key, BlockMeta{e.parent, e.checksum, e.size},
                                    std::span<const uint8_t>(bytes, e.size), /*durable=*/false);
      if (st.ok()) {
        e.flags |= kOnNvme;
        nvme_used += e.size;
        stats.nvme_bytes_written += e.size;
      } else {
        ++stats.nvme_write_errors;
        spdlog::warn("store: demotion of {} to NVMe failed: {}", e.key.Hex(), st.ToString());
      }
    }
    if ((e.flags & kOnNvme) == 0 || nvme == nullptr) {
      Evict(h);
      return;
    }
    const uint64_t old_location = e.location;
    Unlist(h);
    if (!Relocate(h, Tier::kNvme, 0)) {  // a reader pinned it meanwhile: keep it in host
      ListByRecency(h);
      return;
    }
    host_alloc->Free(old_location, e.size);
    --resident[static_cast<int>(Tier::kHost)];
    ++stats.demotions;
    OnTierChanged(h, Tier::kHost);
    ListByRecency(h);
  }
  bool DemoteHbmToHost(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    auto loc = MakeRoom(Tier::kHost, e.size);
    if (!loc.ok()) return false;
    if (!hbm->CopyToHost(host_base + *loc, e.location, e.size).ok()) {
      host_alloc->Free(*loc, e.size);
      --resident[static_cast<int>(Tier::kHost)];
      return false;
    }
    const uint64_t old_location = e.location;
    Unlist(h);
    if (!Relocate(h, Tier::kHost, *loc)) {
      host_alloc->Free(*loc, e.size);
      --resident[static_cast<int>(Tier::kHost)];
      ListByRecency(h);
      return true;  // still in HBM, but the caller will pick another victim
    }
    hbm_alloc->Free(old_location, e.size);
    --resident[static_cast<int>(Tier::kHbm)];
    ++stats.demotions;
    OnTierChanged(h, Tier::kHbm);
    ListByRecency(h);
    return true;
  }
  bool Admit(const Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (options.nvme_admission == NvmeAdmission::kSeenTwice && e.hits == 0) {
      ++stats.nvme_admission_rejections;
      return false;
    }
    if (options.nvme_write_bytes_per_s > 0) {
      const int64_t now = clock->NowMicros();
      const double rate = static_cast<double>(options.nvme_write_bytes_per_s);
      write_tokens = std::min(rate, write_tokens + rate * (now - tokens_at_us) / 1e6);
      tokens_at_us = now;
      if (write_tokens < e.size) {
        ++stats.nvme_admission_rejections;
        return false;
      }
      write_tokens -= e.size;
    }
    // Make room on flash by dropping its least valuable blocks.
    while (nvme_used + e.size > options.nvme_bytes) {
      uint32_t v = PickVictim(Tier::kNvme);
      if (v == kNone) {
        ++stats.nvme_admission_rejections;
        return false;
      }
      Evict(v);
    }
    return true;
  }
  // Drops an unpinned block from the store, counting it as an eviction.
  void Evict(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ++stats.evictions;
    Remove(h, /*durable_delete=*/false);
  }
  // Removes a block from every tier and the index. If a reader holds it, it only becomes invisible
  // (doomed) and the last reader's Unpin finishes the removal.
  void Remove(uint32_t h, bool durable_delete) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state == State::kCommitted && options.on_block_event) {
      options.on_block_event(e.key, /*stored=*/false);
    }
    Unlist(h);
    UnlinkChain(h);
    {
      Shard& s = ShardOf(e.key);
      MutexLock l(&s.mu);
      if (e.pins != 0 || e.leases != 0) {  // freed by the last Unpin or lease end
        e.state = State::kDoomed;
        if (durable_delete) e.flags |= kDeleteDurably;
        return;
      }
      s.set.erase(h);
      e.state = State::kFree;
    }
    FreeSpace(e);
    if (e.flags & kOnNvme) {
      absl::Status st = nvme->Delete(e.key, durable_delete || (e.flags & kDeleteDurably));
      if (!st.ok()) spdlog::warn("store: NVMe delete of {}: {}", e.key.Hex(), st.ToString());
      nvme_used -= e.size;
      nvme->Maintain();
    }
    free_entries.push_back(h);
  }

  // ---- pins -----------------------------------------------------------------------------------
  // Pins a committed block for reading and snapshots where it is. kNone if absent.
  uint32_t PinForRead(const BlockKey& key, BlockInfo* info) {
    Shard& s = ShardOf(key);
    MutexLock l(&s.mu);
    uint32_t h = FindLocked(s, key);
    if (h == kNone || E(h).state != State::kCommitted) return kNone;
    Entry& e = E(h);
    ++e.pins;
    *info = BlockInfo{key, e.tier, e.size, e.checksum, e.location, e.generation};
    return h;
  }
  // Statistics and recency of a read: a miss, or a hit served by `tier`.
  absl::Status CountMiss(const BlockKey& key) {
    MutexLock l(&mu);
    ++stats.gets;
    ++stats.get_misses;
    return absl::NotFoundError(absl::StrCat("block ", key.Hex(), " not found"));
  }
  void CountHit(uint32_t h, Tier tier) {
    MutexLock l(&mu);
    ++stats.gets;
    ++stats.tiers[static_cast<int>(tier)].hits;
    Touch(h);
  }

  void Unpin(uint32_t h) {
    Entry& e = E(h);
    bool remove = false;
    {
      Shard& s = ShardOf(e.key);
      MutexLock l(&s.mu);
      remove = --e.pins == 0 && e.state == State::kDoomed;
    }
    if (!remove) return;
    MutexLock l(&mu);
    bool still = false;
    {
      Shard& s = ShardOf(e.key);
      MutexLock sl(&s.mu);
      still = e.pins == 0 && e.state == State::kDoomed;
    }
    still = still && e.leases == 0;
    if (still) Remove(h, /*durable_delete=*/true);
  }
  // Host copy of an NVMe-resident block, for a lease. Requires mu.
  absl::Status PromoteFromNvme(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    KVTIER_ASSIGN_OR_RETURN(uint64_t loc, MakeRoom(Tier::kHost, e.size));
    auto sum = nvme->Read(e.key, std::span<uint8_t>(host_base + loc, e.size));
    if (!sum.ok() || *sum != e.checksum) {
      host_alloc->Free(loc, e.size);
      --resident[static_cast<int>(Tier::kHost)];
      ++stats.checksum_failures;
      Remove(h, /*durable_delete=*/true);
      return absl::DataLossError(absl::StrCat(
          "block ", e.key.Hex(), " is corrupt on NVMe and was dropped",
          sum.ok() ? "" : absl::StrCat(": ", sum.status().ToString())));
    }
    Unlist(h);
    if (!Relocate(h, Tier::kHost, loc)) {  // cannot happen: callers hold mu and no pins exist
      host_alloc->Free(loc, e.size);
      --resident[static_cast<int>(Tier::kHost)];
      ListByRecency(h);
      return absl::OkStatus();
    }
    ++stats.promotions;
    OnTierChanged(h, Tier::kNvme);
    ListByRecency(h);
    return absl::OkStatus();
  }

  // ---- leases ---------------------------------------------------------------------------------
  struct LeaseRecord {
    int64_t expires_at_us;
    std::vector<uint32_t> handles;
    uint64_t bytes;
  };
  // Ends one lease's hold on `h`: listed again, or freed if it was removed meanwhile.
  void ReleaseLeasePin(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (--e.leases != 0) return;
    if (e.state != State::kDoomed) {
      ListByRecency(h);
      return;
    }
    bool unpinned = false;
    {
      Shard& s = ShardOf(e.key);
      MutexLock l(&s.mu);
      unpinned = e.pins == 0;
    }
    if (unpinned) Remove(h, /*durable_delete=*/true);
  }
  void EndLease(absl::flat_hash_map<uint64_t, LeaseRecord>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (uint32_t h : it->second.handles) ReleaseLeasePin(h);
    leased_bytes -= it->second.bytes;
    leases.erase(it);
  }
  size_t ReapLeases() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const int64_t now = clock->NowMicros();
    size_t n = 0;
    while (!lease_expiry.empty() && lease_expiry.top().first <= now) {
      uint64_t id = lease_expiry.top().second;
      lease_expiry.pop();
      auto it = leases.find(id);
      if (it == leases.end()) continue;  // released earlier
      EndLease(it);
      ++stats.leases_expired;
      ++n;
    }
    return n;
  }

  uint64_t IndexBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    uint64_t bytes = uint64_t{num_chunks} * kChunkEntries * sizeof(Entry) +
                     free_entries.capacity() * sizeof(uint32_t) + sizeof(chunks);
    for (const Shard& s : shards) {
      MutexLock l(&s.mu);
      bytes += s.set.capacity() * (sizeof(uint32_t) + 1);
    }
    bytes += waiting.capacity() * (sizeof(BlockKey) + sizeof(uint32_t) + 1);
    return bytes;
  }

  void AbortReservation(uint32_t h) {
    MutexLock l(&mu);
    Entry& e = E(h);
    {
      Shard& s = ShardOf(e.key);
      MutexLock sl(&s.mu);
      s.set.erase(h);
      e.state = State::kFree;
    }
    FreeSpace(e);
    free_entries.push_back(h);
    ++stats.puts_aborted;
  }

  const StoreOptions options;
  Clock* clock = nullptr;
  std::unique_ptr<HostArena> host;
  uint8_t* host_base = nullptr;
  std::unique_ptr<DeviceArena> hbm;
  std::unique_ptr<NvmeTier> nvme;
  std::vector<Shard> shards;

  mutable Mutex mu;  // the policy lock: everything below; taken before any shard lock
  std::unique_ptr<SlabAllocator> host_alloc ABSL_GUARDED_BY(mu);
  std::unique_ptr<SlabAllocator> hbm_alloc ABSL_GUARDED_BY(mu);
  std::unique_ptr<Entry[]> chunks[kMaxChunks];
  uint32_t num_chunks ABSL_GUARDED_BY(mu) = 0;
  std::vector<uint32_t> free_entries ABSL_GUARDED_BY(mu);
  ListHead lists[kNumTiers][kNumClasses] ABSL_GUARDED_BY(mu);
  // Children whose parent is absent, by the parent's key: head of a sibling list.
  absl::flat_hash_map<BlockKey, uint32_t> waiting ABSL_GUARDED_BY(mu);
  uint64_t tick ABSL_GUARDED_BY(mu) = 0;
  uint64_t resident[kNumTiers] ABSL_GUARDED_BY(mu) = {0, 0, 0};
  uint64_t orphans ABSL_GUARDED_BY(mu) = 0;
  uint64_t nvme_used ABSL_GUARDED_BY(mu) = 0;
  double write_tokens ABSL_GUARDED_BY(mu) = 0;
  int64_t tokens_at_us ABSL_GUARDED_BY(mu) = 0;
  absl::flat_hash_map<uint64_t, LeaseRecord> leases ABSL_GUARDED_BY(mu);
  uint32_t next_generation ABSL_GUARDED_BY(mu) = 1;
  std::priority_queue<std::pair<int64_t, uint64_t>, std::vector<std::pair<int64_t, uint64_t>>,
                      std::greater<>>
      lease_expiry ABSL_GUARDED_BY(mu);
  uint64_t next_lease_id ABSL_GUARDED_BY(mu) = 1;
  uint64_t leased_bytes ABSL_GUARDED_BY(mu) = 0;
  uint64_t max_leased_bytes = 0;
  StoreStats stats ABSL_GUARDED_BY(mu);
};

// ---- BlockStore -------------------------------------------------------------------------------

BlockStore::BlockStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BlockStore::~BlockStore() = default;

absl::StatusOr<std::unique_ptr<BlockStore>> BlockStore::Open(const StoreOptions& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>(options);
  Impl& s = *impl;
  for (auto& shard : s.shards) {
    MutexLock l(&shard.mu);
    shard.set = decltype(shard.set)(0, Impl::HandleHash{&s}, Impl::HandleEq{&s});
  }
  s.clock = options.clock != nullptr ? options.clock : SystemClock::Default();
  const size_t slab = SlabAllocator::ChunkBytes(options.max_block_bytes);

  KVTIER_ASSIGN_OR_RETURN(s.host, HostArena::Create(HostArenaOptions{
                                      .bytes = options.host_bytes,
                                      .hugepages = options.host_hugepages,
                                      .lock = options.host_lock,
                                      .provider = options.host_memory}));
  s.host_base = s.host->base();
  MutexLock l(&s.mu);
  s.host_alloc = std::make_unique<SlabAllocator>(options.host_bytes, slab);
  s.max_leased_bytes =
      options.max_leased_bytes != 0 ? options.max_leased_bytes : options.host_bytes / 2;

  if (options.hbm_bytes > 0) {
    auto arena = OpenDeviceArena(options.hbm_bytes, options.hbm_device);
    if (arena.ok()) {
      s.hbm = std::move(*arena);
      s.hbm_alloc = std::make_unique<SlabAllocator>(options.hbm_bytes, slab);
      spdlog::info("store: HBM tier of {} MiB on {}", options.hbm_bytes >> 20,
                   s.hbm->description());
    } else if (arena.status().code() == absl::StatusCode::kUnavailable) {
      spdlog::info("store: HBM tier absent: {}", std::string(arena.status().message()));
    } else {
      return arena.status();
    }
  }

  if (!options.nvme_path.empty()) {
    KVTIER_ASSIGN_OR_RETURN(s.nvme, NvmeTier::Open(NvmeTierOptions{
                                        .path = options.nvme_path,
                                        .capacity_bytes = options.nvme_bytes,
                                        .write_buffer_bytes = options.nvme_write_buffer_bytes,
                                        .direct_io = options.nvme_direct_io,
                                        .env = options.nvme_env}));
    // Index what an earlier run left on flash.
    std::vector<uint32_t> recovered;
    absl::Status scan = s.nvme->ForEachMeta([&](const BlockKey& key, const BlockMeta& meta) {
      if (key.IsZero() || meta.size == 0 || meta.size > options.max_block_bytes) {
        spdlog::warn("store: skipping NVMe block {} of {} bytes (max_block_bytes {})", key.Hex(),
                     meta.size, options.max_block_bytes);
        return;
      }
      uint32_t h = s.AllocEntry();
      if (h == kNone) return;
      Entry& e = s.E(h);
      e.key = key;
      e.parent = meta.parent;
      e.checksum = meta.checksum;
      e.size = meta.size;
      e.tier = Tier::kNvme;
      e.flags = kOnNvme;
      e.generation = s.NewGeneration();
      e.state = State::kCommitted;
      Impl::Shard& shard = s.ShardOf(key);
      MutexLock sl(&shard.mu);
      shard.set.insert(h);
      s.nvme_used += meta.size;
      recovered.push_back(h);
    });
    if (!scan.ok()) return scan;
    for (uint32_t h : recovered) s.LinkChain(h, /*adopt=*/false);
    for (uint32_t h : recovered) s.ListByRecency(h);
    while (s.nvme_used > options.nvme_bytes) {
      uint32_t v = s.PickVictim(Tier::kNvme);
      if (v == kNone) break;
      s.Evict(v);
    }
    if (!recovered.empty()) {
      spdlog::info("store: recovered {} blocks ({} MiB) from {}", recovered.size(),
                   s.nvme_used >> 20, options.nvme_path);
    }
  }
  s.tokens_at_us = s.clock->NowMicros();
  s.write_tokens = static_cast<double>(options.nvme_write_bytes_per_s);
  return std::unique_ptr<BlockStore>(new BlockStore(std::move(impl)));
}

const StoreOptions& BlockStore::options() const { return impl_->options; }
uint8_t* BlockStore::host_arena_base() const { return impl_->host_base; }
size_t BlockStore::host_arena_bytes() const { return impl_->options.host_bytes; }

absl::StatusOr<BlockStore::PutHandle> BlockStore::BeginPut(const BlockKey& key,
                                                           const BlockKey& parent, size_t size,
                                                           const PutOptions& options) {
  Impl& s = *impl_;
  if (key.IsZero()) return absl::InvalidArgumentError("put: the all-zero key is reserved");
  if (key == parent) {
    return absl::InvalidArgumentError(absl::StrCat("put: block ", key.Hex(), " is its own parent"));
  }
  if (size == 0) return absl::InvalidArgumentError("put: empty block");
  if (size > s.options.max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("put: block of ", size,
                                                   " bytes exceeds max_block_bytes (",
                                                   s.options.max_block_bytes, ")"));
  }
  if (options.layout != nullptr) {
    KVTIER_RETURN_IF_ERROR(options.layout->Validate());
    if (size != options.layout->BytesPerBlock()) {
      return absl::InvalidArgumentError(
          absl::StrCat("put: block of ", size, " bytes does not match layout ",
                       options.layout->DebugString(), " (", options.layout->BytesPerBlock(),
                       " bytes per block)"));
    }
  }
  if (options.durable && s.nvme == nullptr) {
    return absl::FailedPreconditionError("put: durable put needs an NVMe tier (nvme_path)");
  }

  MutexLock l(&s.mu);
  s.ReapLeases();
  ++s.stats.puts;
  PutHandle handle;
  handle.size_ = size;
  if (s.Find(key) != kNone) {
    ++s.stats.puts_noop;
    handle.noop_ = true;
    return handle;
  }
  Tier tier = s.hbm != nullptr ? Tier::kHbm : Tier::kHost;
  absl::StatusOr<uint64_t> loc = s.MakeRoom(tier, size);
  if (!loc.ok() && tier == Tier::kHbm) {
    tier = Tier::kHost;
    loc = s.MakeRoom(tier, size);
  }
  if (!loc.ok()) return loc.status();
  const uint32_t h = s.AllocEntry();
  if (h == kNone) {
    return absl::ResourceExhaustedError("put: the index is full");
  }
  Entry& e = s.E(h);
  e.key = key;
  e.parent = parent;
  e.size = static_cast<uint32_t>(size);
  e.tier = tier;
  e.location = *loc;
  e.generation = s.NewGeneration();
  e.state = State::kReserved;
  e.pins = 1;  // the writer's
  {
    Impl::Shard& shard = s.ShardOf(key);
    MutexLock sl(&shard.mu);
    shard.set.insert(h);
  }
  handle.store_ = impl_.get();
  handle.handle_ = h;
  handle.host_data_ = e.tier == Tier::kHost ? s.host_base + e.location : nullptr;
  handle.durable_ = options.durable;
  handle.expected_checksum_ = options.expected_checksum;
  return handle;
}

absl::Status BlockStore::Put(const BlockKey& key, const BlockKey& parent,
                             std::span<const uint8_t> data, const PutOptions& options) {
  KVTIER_ASSIGN_OR_RETURN(PutHandle handle, BeginPut(key, parent, data.size(), options));
  KVTIER_RETURN_IF_ERROR(handle.Write(0, data));
  return handle.Commit();
}

BlockStore::PutHandle::PutHandle(PutHandle&& o) noexcept { *this = std::move(o); }

BlockStore::PutHandle& BlockStore::PutHandle::operator=(PutHandle&& o) noexcept {
  if (this != &o) {
    Abort();
    store_ = std::exchange(o.store_, nullptr);
    handle_ = o.handle_;
    size_ = o.size_;
    host_data_ = o.host_data_;
    noop_ = o.noop_;
    durable_ = o.durable_;
    expected_checksum_ = o.expected_checksum_;
  }
  return *this;
}

BlockStore::PutHandle::~PutHandle() { Abort(); }

void BlockStore::PutHandle::Abort() {
  if (store_ == nullptr) return;
  store_->AbortReservation(handle_);
  store_ = nullptr;
}

absl::Status BlockStore::PutHandle::Write(size_t offset, std::span<const uint8_t> data) {
  if (offset > size_ || data.size() > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat("put: write of ", data.size(),
                                                   " bytes at offset ", offset,
                                                   " passes the block's ", size_, " bytes"));
  }
  if (noop_) return absl::OkStatus();
  if (store_ == nullptr) return absl::FailedPreconditionError("put: handle already committed");
  if (host_data_ != nullptr) {
    std::memcpy(host_data_ + offset, data.data(), data.size());
    return absl::OkStatus();
  }
  const Entry& e = store_->E(handle_);
  return store_->hbm->CopyToDevice(e.location + offset, data.data(), data.size());
}

absl::Status BlockStore::PutHandle::Commit() {
  if (noop_) return absl::OkStatus();
  if (store_ == nullptr) return absl::FailedPreconditionError("put: handle already committed");
  Impl& s = *store_;
  Entry& e = s.E(handle_);
  // The bytes are the writer's alone until the commit: checksum and persist them unlocked.
  std::vector<uint8_t> staged;
  const uint8_t* bytes = host_data_;
  if (bytes == nullptr) {  // HBM: checksum a host copy
    staged.resize(e.size);
    absl::Status st = s.hbm->CopyToHost(staged.data(), e.location, e.size);
    if (!st.ok()) {
      Abort();
      return st;
    }
    bytes = staged.data();
  }
  const uint64_t sum = Checksum(bytes, e.size);
  if (expected_checksum_.has_value() && *expected_checksum_ != sum) {
    Abort();
    return absl::DataLossError(absl::StrCat("put: block ", e.key.Hex(),
                                            " does not match its declared checksum"));
  }
  e.checksum = sum;
  if (durable_) {
    absl::Status st = s.nvme->Write(e.key, BlockMeta{e.parent, sum, e.size},
                                    std::span<const uint8_t>(bytes, e.size), /*durable=*/true);
    if (!st.ok()) {
      Abort();
      return st;
    }
  }
  MutexLock l(&s.mu);
  if (durable_) {
    e.flags |= kOnNvme;
    s.nvme_used += e.size;
    s.stats.nvme_bytes_written += e.size;
  }
  {
    Impl::Shard& shard = s.ShardOf(e.key);
    MutexLock sl(&shard.mu);
    e.state = State::kCommitted;
    --e.pins;
  }
  e.last_access = ++s.tick;
  s.LinkChain(handle_, /*adopt=*/true);
  s.ListByRecency(handle_);
  if (s.options.on_block_event) s.options.on_block_event(e.key, /*stored=*/true);
  store_ = nullptr;
  return absl::OkStatus();
}

absl::StatusOr<size_t> BlockStore::Get(const BlockKey& key, std::span<uint8_t> out) {
  Impl& s = *impl_;
  BlockInfo info;
  const uint32_t h = s.PinForRead(key, &info);
  if (h == kNone) return s.CountMiss(key);
  if (out.size() < info.size) {
    s.Unpin(h);
    return absl::InvalidArgumentError(absl::StrCat("get: buffer of ", out.size(),
                                                   " bytes for a block of ", info.size));
  }
  s.CountHit(h, info.tier);
  absl::StatusOr<uint64_t> sum;
  // An NVMe block is read straight into the host chunk it is promoted to, then copied out.
  std::optional<uint64_t> promote_to;
  switch (info.tier) {
    case Tier::kHost:
      sum = CopyWithChecksum(out.data(), s.host_base + info.location, info.size, CopyTo::kCache);
      break;
    case Tier::kHbm: {
      absl::Status st = s.hbm->CopyToHost(out.data(), info.location, info.size);
      if (st.ok()) sum = Checksum(out.data(), info.size); else sum = st;
      break;
    }
    case Tier::kNvme: {
      {
        MutexLock l(&s.mu);
        absl::StatusOr<uint64_t> loc = s.MakeRoom(Tier::kHost, info.size);
        if (loc.ok()) promote_to = *loc;
      }
      if (promote_to.has_value()) {
        uint8_t* chunk = s.host_base + *promote_to;
        sum = s.nvme->Read(key, std::span<uint8_t>(chunk, info.size));
        if (sum.ok()) CopyBytes(out.data(), chunk, info.size, CopyTo::kCache);
      } else {
        sum = s.nvme->Read(key, out.first(info.size));
      }
      break;
    }
  }
  auto release_chunk = [&] {
    if (!promote_to.has_value()) return;
    MutexLock l(&s.mu);
    s.host_alloc->Free(*promote_to, info.size);
    --s.resident[static_cast<int>(Tier::kHost)];
  };
  if (!sum.ok() && sum.status().code() != absl::StatusCode::kDataLoss &&
      sum.status().code() != absl::StatusCode::kNotFound) {
    release_chunk();
    s.Unpin(h);
    return sum.status();  // an I/O error: the block may be fine, keep it
  }
  if (!sum.ok() || *sum != info.checksum) {
    release_chunk();
    {
      MutexLock l(&s.mu);
      ++s.stats.checksum_failures;
      if (s.E(h).state == State::kCommitted) s.Remove(h, /*durable_delete=*/true);
    }
    s.Unpin(h);
    spdlog::error("store: block {} failed its checksum in the {} tier; dropped", key.Hex(),
                  TierName(info.tier));
    return absl::DataLossError(absl::StrCat("block ", key.Hex(), " is corrupt (",
                                            TierName(info.tier), " tier) and was dropped"));
  }
  if (promote_to.has_value()) {
    MutexLock l(&s.mu);
    Entry& e = s.E(h);
    if (e.state == State::kCommitted && e.tier == Tier::kNvme) {
      s.Unlist(h);
      {
        Impl::Shard& shard = s.ShardOf(key);
        MutexLock sl(&shard.mu);
        // Other readers may still be reading the NVMe copy, which stays valid.
        e.tier = Tier::kHost;
        e.location = *promote_to;
        e.generation = s.NewGeneration();
      }
      ++s.stats.promotions;
      s.OnTierChanged(h, Tier::kNvme);
      s.ListByRecency(h);
    } else {  // another reader promoted it first
      s.host_alloc->Free(*promote_to, info.size);
      --s.resident[static_cast<int>(Tier::kHost)];
    }
  }
  s.Unpin(h);
  return static_cast<size_t>(info.size);
}

absl::StatusOr<std::vector<uint8_t>> BlockStore::Get(const BlockKey& key) {
  std::vector<uint8_t> out;
  for (;;) {
    KVTIER_ASSIGN_OR_RETURN(BlockInfo info, Stat(key));
    out.resize(info.size);
    auto n = Get(key, std::span<uint8_t>(out));
    if (n.ok()) return out;
    if (n.status().code() != absl::StatusCode::kInvalidArgument) return n.status();
  }
}

absl::StatusOr<BlockStore::PinnedBlock> BlockStore::PinHostBlock(const BlockKey& key) {
  Impl& s = *impl_;
  BlockInfo info;
  const uint32_t h = s.PinForRead(key, &info);
  if (h == kNone) return s.CountMiss(key);
  if (info.tier != Tier::kHost) {
    s.Unpin(h);
    return absl::FailedPreconditionError("block is not in the host tier");
  }
  s.CountHit(h, Tier::kHost);
  return PinnedBlock{s.host_base + info.location, info.size, info.checksum, h};
}

void BlockStore::UnpinHostBlock(const PinnedBlock& pinned) { impl_->Unpin(pinned.handle); }

absl::StatusOr<BlockInfo> BlockStore::Stat(const BlockKey& key) const {
  Impl& s = *impl_;
  Impl::Shard& shard = s.ShardOf(key);
  MutexLock l(&shard.mu);
  uint32_t h = s.FindLocked(shard, key);
  if (h == kNone || s.E(h).state != State::kCommitted) {
    return absl::NotFoundError(absl::StrCat("block ", key.Hex(), " not found"));
  }
  const Entry& e = s.E(h);
  return BlockInfo{key, e.tier, e.size, e.checksum, e.location, e.generation};
}

LookupResult BlockStore::Lookup(std::span<const BlockKey> chain) const {
  LookupResult r = LookupPiece(chain);
  CountLookup(chain.size(), r.matched);
  return r;
}

void BlockStore::CountLookup(size_t blocks, size_t matched) const {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  ++s.stats.lookups;
  s.stats.lookup_blocks_hit += matched;
  s.stats.lookup_blocks_missed += blocks - matched;
}

LookupResult BlockStore::LookupPiece(std::span<const BlockKey> chain) const {
  Impl& s = *impl_;
  LookupResult r;
  r.tiers.reserve(chain.size());
  // The chain is looked up a run of keys at a time, each shard locked once per run (a lock per
  // key was a fifth of an 8,192-key Lookup). Runs grow from 64 keys, so a chain that misses
  // early costs little more than walking it key by key.
  constexpr uint8_t kAbsent = 0xff;
  constexpr size_t kFirstRun = 64, kMaxRun = 1024;
  const size_t nshards = s.shards.size();
  std::vector<uint32_t> first(nshards + 1);  // per shard, where its keys start in `order`
  std::vector<uint16_t> order(std::min(chain.size(), kMaxRun));  // run offsets by shard
  std::vector<uint8_t> tier(order.size());                       // per run offset
  std::vector<uint32_t> next(nshards);  // per shard, where its next key goes in `order`
  for (size_t begin = 0, run = kFirstRun; begin < chain.size() && r.tiers.size() == begin;
       begin += run, run = std::min(run * 2, kMaxRun)) {
    const std::span<const BlockKey> keys =
        chain.subspan(begin, std::min(run, chain.size() - begin));
    std::fill(first.begin(), first.end(), 0);
    for (const BlockKey& k : keys) ++first[s.ShardIndex(k) + 1];
    for (size_t i = 1; i <= nshards; ++i) first[i] += first[i - 1];
    std::copy(first.begin(), first.end() - 1, next.begin());
    for (size_t i = 0; i < keys.size(); ++i) order[next[s.ShardIndex(keys[i])]++] = i;
    for (size_t sh = 0; sh < nshards; ++sh) {
      if (first[sh] == first[sh + 1]) continue;
      Impl::Shard& shard = s.shards[sh];
      MutexLock l(&shard.mu);
      for (uint32_t j = first[sh]; j < first[sh + 1]; ++j) {
        const uint32_t h = s.FindLocked(shard, keys[order[j]]);
        tier[order[j]] = h == kNone || s.E(h).state != State::kCommitted
                             ? kAbsent
                             : static_cast<uint8_t>(s.E(h).tier);
      }
    }
    for (size_t i = 0; i < keys.size() && tier[i] != kAbsent; ++i) {
      r.tiers.push_back(static_cast<Tier>(tier[i]));
    }
  }
  r.matched = r.tiers.size();
  return r;
}

absl::Status BlockStore::Delete(const BlockKey& key) {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  const uint32_t h = s.FindCommitted(key);
  if (h == kNone) return absl::NotFoundError(absl::StrCat("block ", key.Hex(), " not found"));
  if (s.E(h).leases > 0) {
    return absl::FailedPreconditionError(absl::StrCat("block ", key.Hex(), " is leased"));
  }
  s.Remove(h, /*durable_delete=*/true);
  return absl::OkStatus();
}

absl::StatusOr<LeaseGrant> BlockStore::Lease(std::span<const BlockKey> keys, int64_t ttl_us) {
  Impl& s = *impl_;
  if (keys.empty()) return absl::InvalidArgumentError("lease: no keys");
  if (keys.size() > s.options.max_lease_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("lease: ", keys.size(),
                                                   " keys exceed max_lease_blocks (",
                                                   s.options.max_lease_blocks, ")"));
  }
  if (ttl_us < 0 || ttl_us > s.options.max_lease_ttl_us) {
    return absl::InvalidArgumentError(absl::StrCat("lease: ttl_us must be in [0, ",
                                                   s.options.max_lease_ttl_us, "]"));
  }
  if (ttl_us == 0) ttl_us = s.options.lease_ttl_us;
  // One NVMe block brought up for this lease: read into `location` outside the store's lock.
  struct Promotion {
    uint32_t handle;
    BlockKey key;
    uint64_t size;
    uint64_t checksum;
    uint64_t location;
    absl::StatusOr<uint64_t> sum = absl::UnknownError("not read");
  };
  std::vector<uint32_t> handles;
  std::vector<Promotion> promotions;
  uint64_t bytes = 0;
  // Undoes the pins of a lease that is not granted. Requires mu.
  auto unpin_all = [&] {
    for (uint32_t h : handles) s.ReleaseLeasePin(h);
  };
  {
    MutexLock l(&s.mu);
    s.ReapLeases();
    handles.reserve(keys.size());
    absl::flat_hash_set<uint32_t> seen;
    for (size_t i = 0; i < keys.size(); ++i) {
      uint32_t h = s.FindCommitted(keys[i]);
      if (h == kNone) {
        return absl::NotFoundError(
            absl::StrCat("lease: block ", keys[i].Hex(), " (position ", i, ") not found"));
      }
      if (!seen.insert(h).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("lease: block ", keys[i].Hex(), " named twice"));
      }
      handles.push_back(h);
      bytes += s.E(h).size;
    }
    if (s.leased_bytes + bytes > s.max_leased_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("lease: ", bytes, " more bytes would pass the leased-bytes cap of ",
                       s.max_leased_bytes, " (", s.leased_bytes, " leased)"));
    }
    // Leased blocks are neither evicted nor moved, so room made for one NVMe block cannot
    // come from another block of the same lease.
    for (uint32_t h : handles) {
      Entry& e = s.E(h);
      if (e.leases++ == 0) s.Unlist(h);
    }
    // Room in the host tier for each NVMe block; a pin keeps the entry from being freed
    // while the lock is dropped below (a failed checksum elsewhere may doom it meanwhile).
    for (uint32_t h : handles) {
      Entry& e = s.E(h);
      if (e.tier != Tier::kNvme) continue;
      absl::StatusOr<uint64_t> loc = s.MakeRoom(Tier::kHost, e.size);
      if (!loc.ok()) {
        for (const Promotion& p : promotions) s.host_alloc->Free(p.location, p.size);
        s.resident[static_cast<int>(Tier::kHost)] -= promotions.size();
        for (const Promotion& p : promotions) {
          Impl::Shard& shard = s.ShardOf(p.key);
          MutexLock sl(&shard.mu);
          --s.E(p.handle).pins;  // not doomed: the store lock was held since the pin
        }
        unpin_all();
        return loc.status();
      }
      {
        Impl::Shard& shard = s.ShardOf(e.key);
        MutexLock sl(&shard.mu);
        ++e.pins;
      }
      promotions.push_back({h, e.key, e.size, e.checksum, *loc});
    }
  }

  // The NVMe reads, in parallel and without the store's lock: other requests go on meanwhile.
  if (!promotions.empty()) {
    auto read = [&](Promotion& p) {
      p.sum = s.nvme->Read(p.key, std::span<uint8_t>(s.host_base + p.location, p.size));
    };
    const size_t workers = std::min<size_t>(promotions.size(), kLeasePromotionThreads);
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i; (i = next.fetch_add(1)) < promotions.size();) read(promotions[i]);
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (size_t t = 1; t < workers; ++t) threads.emplace_back(work);
    work();
    for (std::thread& t : threads) t.join();
  }

  LeaseGrant grant;
  absl::Status failed;
  {
    MutexLock l(&s.mu);
    for (Promotion& p : promotions) {
      Entry& e = s.E(p.handle);
      const bool good = p.sum.ok() && *p.sum == p.checksum;
      const bool still_nvme = e.state == State::kCommitted && e.tier == Tier::kNvme;
      if (!good || !still_nvme) {  // bad bytes, or a Get promoted the block first
        s.host_alloc->Free(p.location, p.size);
        --s.resident[static_cast<int>(Tier::kHost)];
      }
      if (!good) {
        const bool corrupt = !p.sum.ok() ? p.sum.status().code() == absl::StatusCode::kDataLoss ||
                                               p.sum.status().code() == absl::StatusCode::kNotFound
                                         : true;
        if (corrupt) {
          ++s.stats.checksum_failures;
          if (e.state == State::kCommitted) s.Remove(p.handle, /*durable_delete=*/true);
        }
        if (failed.ok()) {
          failed = corrupt ? absl::DataLossError(absl::StrCat(
                                 "block ", p.key.Hex(), " is corrupt on NVMe and was dropped"))
                           : p.sum.status();
        }
        continue;
      }
      if (!still_nvme) continue;
      {
        Impl::Shard& shard = s.ShardOf(p.key);
        MutexLock sl(&shard.mu);
        // Readers that pinned the NVMe copy before may still read it; it stays valid.
        e.tier = Tier::kHost;
        e.location = p.location;
        e.generation = s.NewGeneration();
      }
      ++s.stats.promotions;
      s.OnTierChanged(p.handle, Tier::kNvme);
      ++grant.promoted;
    }
    for (uint32_t h : handles) {
      if (failed.ok() && s.E(h).state != State::kCommitted) {  // dropped by a failed check
        failed = absl::AbortedError(absl::StrCat("lease: block ", s.E(h).key.Hex(),
                                                 " was dropped while being leased; retry"));
      }
    }
    if (failed.ok()) {
      grant.id = s.next_lease_id++;
      grant.expires_at_us = s.clock->NowMicros() + ttl_us;
      for (uint32_t h : handles) {
        const Entry& e = s.E(h);
        grant.blocks.push_back(
            BlockInfo{e.key, e.tier, e.size, e.checksum, e.location, e.generation});
      }
      s.leases.emplace(grant.id, Impl::LeaseRecord{grant.expires_at_us, handles, bytes});
      s.lease_expiry.emplace(grant.expires_at_us, grant.id);
      s.leased_bytes += bytes;
      ++s.stats.leases_granted;
    } else {
      unpin_all();
    }
  }
  for (const Promotion& p : promotions) s.Unpin(p.handle);  // frees an entry doomed meanwhile
  if (!failed.ok()) return failed;
  return grant;
}

absl::Status BlockStore::Release(uint64_t lease_id) {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  s.ReapLeases();
  auto it = s.leases.find(lease_id);
  if (it == s.leases.end()) {
    return absl::NotFoundError(absl::StrCat("lease ", lease_id, " is unknown or expired"));
  }
  s.EndLease(it);
  return absl::OkStatus();
}

size_t BlockStore::FirstChanged(std::span<const BlockInfo> seen) const {
  Impl& s = *impl_;
  for (size_t i = 0; i < seen.size(); ++i) {
    Impl::Shard& shard = s.ShardOf(seen[i].key);
    MutexLock l(&shard.mu);
    const uint32_t h = s.FindLocked(shard, seen[i].key);
    if (h == kNone) return i;
    const Entry& e = s.E(h);
    if (e.state != State::kCommitted || e.tier != seen[i].tier ||
        e.location != seen[i].location || e.generation != seen[i].generation) {
      return i;
    }
  }
  return seen.size();
}

size_t BlockStore::ExpireLeases() {
  MutexLock l(&impl_->mu);
  return impl_->ReapLeases();
}

absl::Status BlockStore::Flush() {
  if (impl_->nvme == nullptr) return absl::OkStatus();
  return impl_->nvme->Flush();
}

StoreStats BlockStore::Stats() const {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  StoreStats st = s.stats;
  auto& hbm = st.tiers[static_cast<int>(Tier::kHbm)];
  hbm.present = s.hbm != nullptr;
  hbm.capacity_bytes = s.hbm != nullptr ? s.hbm_alloc->capacity_bytes() : 0;
  hbm.used_bytes = s.hbm != nullptr ? s.hbm_alloc->used_bytes() : 0;
  hbm.blocks = s.resident[static_cast<int>(Tier::kHbm)];
  auto& host = st.tiers[static_cast<int>(Tier::kHost)];
  host.present = true;
  host.capacity_bytes = s.host_alloc->capacity_bytes();
  host.used_bytes = s.host_alloc->used_bytes();
  host.blocks = s.resident[static_cast<int>(Tier::kHost)];
  auto& nvme = st.tiers[static_cast<int>(Tier::kNvme)];
  nvme.present = s.nvme != nullptr;
  nvme.capacity_bytes = s.nvme != nullptr ? s.options.nvme_bytes : 0;
  nvme.used_bytes = s.nvme_used;
  uint64_t nvme_only = 0;
  for (int c = 0; c < kNumClasses; ++c) nvme_only += s.lists[static_cast<int>(Tier::kNvme)][c].size;
  nvme.blocks = nvme_only;
  st.leases_active = s.leases.size();
  st.leased_bytes = s.leased_bytes;
  st.orphan_blocks = s.orphans;
  st.index_bytes = s.IndexBytes();
  st.nvme_index_bytes = s.nvme != nullptr ? s.nvme->IndexMemoryBytes() : 0;
  return st;
}

absl::Status BlockStore::CheckConsistency() const {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  auto fail = [](const std::string& what) { return absl::InternalError("consistency: " + what); };
  uint64_t listed = 0, orphans = 0;
  for (int t = 0; t < kNumTiers; ++t) {
    for (uint8_t c = 0; c < kNumClasses; ++c) {
      const ListHead& list = s.lists[t][c];
      uint64_t n = 0;
      uint32_t prev = kNone;
      for (uint32_t h = list.head; h != kNone; prev = h, h = s.E(h).lru_next) {
        const Entry& e = s.E(h);
        if (++n > list.size) return fail("list longer than its size");
        if (e.lru_prev != prev) return fail("broken back link");
        if (static_cast<int>(e.tier) != t) {
          return fail(absl::StrCat("block ", e.key.Hex(), " of tier ", TierName(e.tier),
                                   " listed in tier ", TierName(static_cast<Tier>(t))));
        }
        if (e.cls != c || s.ClassOf(e) != c) {
          return fail(absl::StrCat("block ", e.key.Hex(), " listed in class ", c, ", is ",
                                   s.ClassOf(e)));
        }
        if (e.state != State::kCommitted) return fail("listed block not committed");
        if (e.leases != 0) return fail("leased block listed");
        if (e.parent_ref != kNone && s.E(e.parent_ref).key != e.parent) {
          return fail("parent link names another block");
        }
        uint32_t kids_here = 0;
        for (uint32_t k = e.first_child; k != kNone; k = s.E(k).next_sibling) {
          if (s.E(k).parent_ref != h) return fail("child does not point back to its parent");
          if (s.E(k).tier <= e.tier) ++kids_here;
        }
        if (kids_here != e.kids_here) {
          return fail(absl::StrCat("block ", e.key.Hex(), " counts ", e.kids_here,
                                   " children in its tier, has ", kids_here));
        }
        if (c == kOrphan) ++orphans;
      }
      if (n != list.size || list.tail != prev) return fail("list size or tail wrong");
      listed += n;
    }
  }
  if (orphans != s.orphans) return fail("orphan count");
  uint64_t indexed = 0;
  for (const Impl::Shard& shard : s.shards) {
    MutexLock sl(&shard.mu);
    for (uint32_t h : shard.set) {
      const Entry& e = s.E(h);
      if (e.state == State::kCommitted && e.leases == 0 && e.cls == kUnlisted) {
        return fail(absl::StrCat("block ", e.key.Hex(), " committed but not listed"));
      }
      if (e.state == State::kCommitted) ++indexed;
    }
  }
  if (indexed < listed) return fail("more listed blocks than indexed ones");
  for (const auto& [key, head] : s.waiting) {
    for (uint32_t h = head; h != kNone; h = s.E(h).next_sibling) {
      if (s.E(h).parent != key || s.E(h).parent_ref != kNone) return fail("wait list member");
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier
