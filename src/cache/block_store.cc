#include "cache/block_store.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "cache/device_arena.h"
#include "cache/entry.h"
#include "cache/eviction_policy.h"
#include "cache/flash_admission.h"
#include "cache/host_arena.h"
#include "cache/key_index.h"
#include "cache/lease_table.h"
#include "cache/memory_tier.h"
#include "cache/nvme_tier.h"
#include "cache/slab_allocator.h"
#include "common/task_pool.h"
#include "common/checksum.h"
#include "common/mutex.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace kvtier {

using cache_internal::Entry;
using cache_internal::EntryState;
using cache_internal::kNoEntry;

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
    return absl::InvalidArgumentError(
        absl::StrCat("nvme_bytes: ", nvme_bytes, " cannot hold one block of max_block_bytes"));
  }
  if (tenant_memory_bytes != 0 && tenant_memory_bytes < max_block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("tenant_memory_bytes: ", tenant_memory_bytes,
                                                   " cannot hold one block of max_block_bytes"));
  }
  if (lease_ttl_us <= 0) return absl::InvalidArgumentError("lease_ttl_us: must be > 0");
  if (max_lease_ttl_us < lease_ttl_us) {
    return absl::InvalidArgumentError("max_lease_ttl_us: must be >= lease_ttl_us");
  }
  if (max_lease_blocks == 0) return absl::InvalidArgumentError("max_lease_blocks: must be > 0");
  if (index_shards == 0 || (index_shards & (index_shards - 1)) != 0 || index_shards > 4096) {
    return absl::InvalidArgumentError("index_shards: must be a power of two in [1, 4096]");
  }
  if (host_reserve_bytes < -1 ||
      static_cast<uint64_t>(std::max<int64_t>(0, host_reserve_bytes)) > host_bytes / 2) {
    return absl::InvalidArgumentError(
        "host_reserve_bytes: must be -1 (automatic), 0 (none) or at most half of host_bytes");
  }
  if (hbm_reserve_bytes < -1 ||
      static_cast<uint64_t>(std::max<int64_t>(0, hbm_reserve_bytes)) > hbm_bytes / 2 + 1) {
    return absl::InvalidArgumentError(
        "hbm_reserve_bytes: must be -1 (automatic), 0 (none) or at most half of hbm_bytes");
  }
  if (mover_threads < 1 || mover_threads > 64) {
    return absl::InvalidArgumentError("mover_threads: must be in [1, 64]");
  }
  return absl::OkStatus();
}

namespace {

// NVMe reads in flight at once for one lease's promotions.
constexpr int kLeasePromotionThreads = 8;
// The mover's periodic work (lease expiry, flash compaction), at most this far apart.
constexpr int64_t kMoverTickUs = 100'000;

void Count(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
uint64_t Read(const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); }

// Counters bumped without the policy lock.
struct Counters {
  std::atomic<uint64_t> gets{0}, get_misses{0}, hits[kNumTiers]{};
  std::atomic<uint64_t> lookups{0}, lookup_blocks_hit{0}, lookup_blocks_missed{0};
  std::atomic<uint64_t> lookup_hits[kNumTiers]{}, lease_hits[kNumTiers]{}, lease_misses{0};
  std::atomic<uint64_t> evictions_from[kNumTiers]{}, evicted_bytes[kNumTiers]{};
  std::atomic<uint64_t> demotions_from[kNumTiers]{}, demoted_bytes[kNumTiers]{};
  std::atomic<uint64_t> promoted_bytes{0};
  std::atomic<uint64_t> puts{0}, puts_noop{0}, puts_aborted{0};
  std::atomic<uint64_t> evictions{0}, demotions{0}, promotions{0}, sync_evictions{0};
  std::atomic<uint64_t> quota_evictions{0};
  std::atomic<uint64_t> nvme_bytes_written{0}, nvme_write_errors{0}, checksum_failures{0};
  std::atomic<uint64_t> leases_granted{0}, leases_expired{0};
};

// Flash I/O of one key, which the store serializes: a write or delete at a time (`busy`), and a
// delete that waits its turn (`delete_pending`, done by the mover unless a write replaces the
// record first).
struct FlashKey {
  bool busy = false;
  bool delete_pending = false;
  bool delete_durable = false;
};

// The free room the mover keeps in a memory tier: 1/32 of it, at least two of the largest
// blocks, yet never more than 1/8 of the tier or 256 MiB.
size_t Reserve(int64_t option, size_t capacity, size_t block) {
  if (option >= 0) return static_cast<size_t>(option);
  const size_t most = std::min(capacity / 8, size_t{256} << 20);
  return std::min(std::max(capacity / 32, 2 * block), most);
}

}  // namespace

// The put's running checksum (PutHandle::hashing_): fused with the copy into host memory, or of
// the source bytes where the copy goes to HBM.
struct BlockStore::PutHandle::Hashing {
  ChecksumCopier copier;
  ChecksumStream stream;
};

struct BlockStore::Impl {
  explicit Impl(const StoreOptions& o)
      : options(o),
        clock(o.clock != nullptr ? o.clock : SystemClock::Default()),
        index(&pool, o.index_shards),
        policy(std::make_unique<cache_internal::PrefixAwarePolicy>(&pool, &index)),
        admission(o.nvme_admission, o.nvme_write_bytes_per_s, clock) {}

  Entry& E(uint32_t h) const { return pool.At(h); }
  cache_internal::KeyIndex::Shard& ShardOf(const Entry& e) const { return index.ShardOf(e.key); }
  MemoryTier* Mem(Tier t) const {
    return t == Tier::kHbm ? static_cast<MemoryTier*>(hbm.get()) : host.get();
  }
  // A new placement's generation: one no placement had before.
  uint32_t NewGeneration() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return next_generation++; }

  // ---- reads, without the policy lock ----------------------------------------------------------

  // Pins a committed block for reading and snapshots where it is. kNoEntry if absent.
  uint32_t PinForRead(const BlockKey& key, BlockInfo* info) const {
    auto& s = index.ShardOf(key);
    MutexLock l(&s.mu);
    const uint32_t h = index.FindLocked(s, key);
    if (h == kNoEntry) return kNoEntry;
    Entry& e = E(h);
    ++e.pins;
    *info = BlockInfo{key, e.tier, e.size, e.checksum, e.location, e.generation};
    return h;
  }
  // Ends a pin; the last one finishes what waited for it (a doomed entry's free, a parked
  // entry's return to the eviction lists).
  void Unpin(uint32_t h) {
    Entry& e = E(h);
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      if (--e.pins != 0 || (e.state != EntryState::kDoomed && e.parked == 0)) return;
    }
    MutexLock l(&mu);
    bool parked = false;
    {
      auto& s = ShardOf(e);
      MutexLock sl(&s.mu);
      if (e.pins != 0) return;
      parked = e.parked != 0;
      e.parked = 0;
    }
    if (e.state == EntryState::kDoomed) {
      MaybeFree(h);
    } else if (parked) {
      ShowIfIdle(h);
    }
  }
  void CountDemotion(Tier from, uint32_t size) {
    Count(counters.demotions);
    Count(counters.demotions_from[static_cast<int>(from)]);
    Count(counters.demoted_bytes[static_cast<int>(from)], size);
  }
  void CountGetMiss() {
    Count(counters.gets);
    Count(counters.get_misses);
  }
  absl::Status CountMiss(const BlockKey& key) {
    CountGetMiss();
    return absl::NotFoundError(absl::StrCat("block ", key.Hex(), " not found"));
  }
  // A hit's statistics and recency. The block moves to the front of its list only if the policy
  // lock is free right now; else PickVictim sees the newer access time and moves it then.
  void CountHit(uint32_t h, Tier tier) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    Count(counters.gets);
    Count(counters.hits[static_cast<int>(tier)]);
    Entry& e = E(h);
    e.last_access.store(access_clock.fetch_add(1, std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
    const uint8_t hits = e.hits.load(std::memory_order_relaxed);
    if (hits < 255) e.hits.store(hits + 1, std::memory_order_relaxed);
    if (mu.TryLock()) {
      policy->RecordAccess(h);
      mu.Unlock();
    }
  }

  // ---- entries' lives, under the policy lock -------------------------------------------------

  // Makes a reserved entry the committed block of its key: in place of committed entry
  // `replaced`, if given, in one step for readers (the key is never missing meanwhile), which
  // leaves `replaced` doomed. REQUIRES: no other entry of the key is indexed.
  void Publish(uint32_t h, bool event, uint32_t replaced = kNoEntry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    e.last_access.store(access_clock.fetch_add(1, std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
    if (replaced != kNoEntry) policy->Remove(replaced);
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      if (replaced != kNoEntry) {
        index.EraseLocked(s, replaced);
        E(replaced).state = EntryState::kDoomed;
      }
      e.state = EntryState::kCommitted;
      e.generation = NewGeneration();
      index.InsertLocked(s, h);
    }
    if (replaced != kNoEntry) --resident[static_cast<int>(E(replaced).tier)];
    ++resident[static_cast<int>(e.tier)];
    policy->Add(h);
    if (!options.on_block_event) return;
    if (event) {
      options.on_block_event(
          {.key = e.key, .tenant = e.tenant, .size = e.size, .stored = true, .tier = e.tier,
           .parent = e.parent});
    } else if (replaced != kNoEntry && E(replaced).tier != e.tier) {
      ReportMove(h, E(replaced).tier);
    }
  }
  // A committed block now in another tier than `from`, visible throughout.
  void ReportMove(uint32_t h, Tier from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!options.on_block_event) return;
    const Entry& e = E(h);
    options.on_block_event({.key = e.key, .tenant = e.tenant, .size = e.size, .stored = true,
                            .tier = e.tier, .moved_from = from, .parent = e.parent});
  }
  // Takes a committed block out of the index and the policy: from now on it is invisible, and
  // freed once nothing holds it (MaybeFree).
  void Doom(uint32_t h, bool event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state != EntryState::kCommitted) return;
    if (event && options.on_block_event) {
      options.on_block_event({.key = e.key, .tenant = e.tenant, .size = e.size, .stored = false,
                              .tier = e.tier, .parent = e.parent});
    }
    policy->Remove(h);
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      index.EraseLocked(s, h);
      e.state = EntryState::kDoomed;
    }
    --resident[static_cast<int>(e.tier)];
  }
  // Frees a doomed entry once no reader, lease or move holds it.
  void MaybeFree(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state != EntryState::kDoomed || e.leases != 0 || (e.flags & cache_internal::kMoving)) {
      return;
    }
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      if (e.pins != 0) return;
    }
    if (e.tier != Tier::kNvme) Mem(e.tier)->Free(e.location, e.size);
    TenantMemory(e, e.tier, -1);
    pool.Free(h);
  }
  // The block leaves the store: evicted for room, or dropped as corrupt (its flash record then
  // goes durably, so it cannot come back after a restart).
  void Drop(uint32_t h, bool corrupt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state != EntryState::kCommitted) return;
    if (!corrupt) {
      Count(counters.evictions);
      Count(counters.evictions_from[static_cast<int>(e.tier)]);
      Count(counters.evicted_bytes[static_cast<int>(e.tier)], e.size);
    }
    Doom(h, /*event=*/true);
    DropFlashCopy(h, corrupt);
    MaybeFree(h);
  }
  // Gives up the entry's flash record, which the mover then deletes.
  void DropFlashCopy(uint32_t h, bool durably) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if ((e.flags & cache_internal::kOnFlash) == 0) return;
    e.flags &= ~(cache_internal::kOnFlash | cache_internal::kDurable);
    nvme_used -= std::min<uint64_t>(nvme_used, e.size);
    FlashKey& k = flash_keys[e.key];
    k.delete_pending = true;
    k.delete_durable = k.delete_durable || durably;
    flash_deletes.push_back(e.key);
    mover_wake.Signal();
  }
  // Back on the eviction lists, if nothing keeps it off them.
  void ShowIfIdle(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state != EntryState::kCommitted || e.leases != 0 || (e.flags & cache_internal::kMoving)) {
      return;
    }
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      if (e.parked != 0) return;  // the last Unpin shows it
    }
    policy->Show(h);
  }
  // Moves a committed block to a new place, if no reader pins it (a pinned one is parked: its
  // last Unpin lists it again) and no lease holds it. The caller frees the old place.
  bool TryRelocate(uint32_t h, Tier to, uint64_t location) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.state != EntryState::kCommitted || e.leases != 0) return false;
    const Tier from = e.tier;
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      if (e.pins != 0) {
        e.parked = 1;
        return false;
      }
      e.tier = to;
      e.location = location;
      e.generation = NewGeneration();
    }
    --resident[static_cast<int>(from)];
    ++resident[static_cast<int>(to)];
    TenantMemory(e, from, -1);
    TenantMemory(e, to, +1);
    policy->TierChanged(h, from);
    ReportMove(h, from);
    return true;
  }
  // Moves a block up (a promotion: readers of the old place may go on, it stays valid).
  void Promote(uint32_t h, uint64_t location) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    {
      auto& s = ShardOf(e);
      MutexLock l(&s.mu);
      e.tier = Tier::kHost;
      e.location = location;
      e.generation = NewGeneration();
    }
    --resident[static_cast<int>(Tier::kNvme)];
    ++resident[static_cast<int>(Tier::kHost)];
    TenantMemory(e, Tier::kHost, +1);
    policy->TierChanged(h, Tier::kNvme);
    ReportMove(h, Tier::kNvme);
    Count(counters.promotions);
    Count(counters.promoted_bytes, e.size);
  }
  void StartMove(uint32_t h, Tier from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    E(h).flags |= cache_internal::kMoving;
    policy->Hide(h);
    ++moves_out[static_cast<int>(from)];
    moving_bytes[static_cast<int>(from)] += E(h).size;
  }
  void EndMove(uint32_t h, Tier from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    E(h).flags &= ~cache_internal::kMoving;
    --moves_out[static_cast<int>(from)];
    moving_bytes[static_cast<int>(from)] -= E(h).size;
    changed.SignalAll();
  }
  // A reserved entry given up.
  void FreeReservation(uint32_t h, bool counted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    Mem(e.tier)->Free(e.location, e.size);
    TenantMemory(e, e.tier, -1);
    pool.Free(h);
    if (counted) Count(counters.puts_aborted);
  }

  // ---- flash keys ------------------------------------------------------------------------------

  // Takes the key's flash I/O turn, waiting for the one in progress. Returns the delete that was
  // waiting its turn, which the caller's write replaces (durable: whether it was a durable one),
  // or nullopt.
  std::optional<bool> ClaimFlashKey(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (;;) {
      FlashKey& k = flash_keys[key];
      if (!k.busy) {
        k.busy = true;
        std::optional<bool> superseded;
        if (k.delete_pending) superseded = k.delete_durable;
        k.delete_pending = k.delete_durable = false;
        return superseded;
      }
      changed.Wait(&mu);
    }
  }
  // Ends the turn. `wrote`: the caller's write replaced the key's record, so a delete asked for
  // meanwhile (of the record before it) is void. `restore`: the delete to keep waiting (the
  // caller's write failed).
  void ReleaseFlashKey(const BlockKey& key, bool wrote, std::optional<bool> restore)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = flash_keys.find(key);
    it->second.busy = false;
    if (wrote) it->second.delete_pending = it->second.delete_durable = false;
    if (restore.has_value()) {
      it->second.delete_pending = true;
      it->second.delete_durable = it->second.delete_durable || *restore;
    }
    if (it->second.delete_pending) {
      flash_deletes.push_back(key);
      mover_wake.Signal();
    } else {
      flash_keys.erase(it);
    }
    changed.SignalAll();
  }
  void WaitForFlashKey(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (auto it = flash_keys.find(key); it != flash_keys.end() && it->second.busy;
         it = flash_keys.find(key)) {
      changed.Wait(&mu);
    }
  }
  // Writes a record to flash in the key's turn, without the policy lock. A durable write that
  // finds the disk full first lets the flash tier compact what deletes freed, then tries again.
  absl::Status WriteToFlash(const BlockKey& key, const BlockMeta& meta, const uint8_t* bytes,
                            bool durable) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const std::optional<bool> superseded = ClaimFlashKey(key);
    mu.Unlock();
    const std::span<const uint8_t> data(bytes, meta.size);
    absl::Status st = nvme->Write(key, meta, data, durable);
    if (st.code() == absl::StatusCode::kResourceExhausted && durable) {
      for (int i = 0; i < 16 && nvme->Maintain(); ++i) {
      }
      st = nvme->Write(key, meta, data, durable);
    }
    mu.Lock();
    ReleaseFlashKey(key, st.ok(), st.ok() ? std::nullopt : superseded);
    if (st.ok()) {
      Count(counters.nvme_bytes_written, meta.size);
    } else {
      Count(counters.nvme_write_errors);
    }
    return st;
  }
  // Deletes what DropFlashCopy left to delete, each in its key's turn.
  void RunFlashDeletes() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    while (!flash_deletes.empty()) {
      const BlockKey key = flash_deletes.front();
      flash_deletes.pop_front();
      auto it = flash_keys.find(key);
      if (it == flash_keys.end() || it->second.busy || !it->second.delete_pending) continue;
      const bool durable = it->second.delete_durable;
      it->second.busy = true;
      it->second.delete_pending = it->second.delete_durable = false;
      mu.Unlock();
      absl::Status st = nvme->Delete(key, durable);
      mu.Lock();
      if (!st.ok() && st.code() != absl::StatusCode::kNotFound) {
        spdlog::warn("store: deleting {} from NVMe: {}", key.Hex(), st.ToString());
      }
      ReleaseFlashKey(key, /*wrote=*/false, std::nullopt);
    }
  }

  // ---- room ------------------------------------------------------------------------------------

  size_t ReserveOf(Tier t) const { return t == Tier::kHbm ? hbm_reserve : host_reserve; }
  size_t PutSize(Tier t) const {
    const size_t n = last_put_bytes[static_cast<int>(t)].load(std::memory_order_relaxed);
    return n != 0 ? n : options.max_block_bytes;
  }
  // Whether the mover should free more of tier t: counts the room that moves under way will
  // free.
  bool BelowReserve(Tier t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const MemoryTier* m = Mem(t);
    return m != nullptr && ReserveOf(t) > 0 &&
           m->AvailableBytes(PutSize(t)) + moving_bytes[static_cast<int>(t)] < ReserveOf(t);
  }

  // A chunk of `bytes` in memory tier t. When the tier is full: waits for the mover's demotions
  // in flight, or (none under way) evicts a block itself. RESOURCE_EXHAUSTED when nothing can be
  // evicted. May release the policy lock while it waits or evicts.
  absl::StatusOr<uint64_t> ReserveSpace(Tier t, size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    MemoryTier* m = Mem(t);
    bool evicted = false;
    for (;;) {
      if (std::optional<uint64_t> loc = m->Allocate(bytes)) {
        if (evicted && ReserveOf(t) > 0) Count(counters.sync_evictions);  // the reserve ran out
        if (BelowReserve(t)) mover_wake.Signal();
        return *loc;
      }
      mover_wake.Signal();
      if (moves_out[static_cast<int>(t)] > 0) {
        changed.Wait(&mu);
        continue;
      }
      if (!EvictOne(t)) {
        return absl::ResourceExhaustedError(absl::StrCat(
            TierName(t), " tier full: no evictable block (", m->used_bytes(), " bytes in use, ",
            leased_bytes, " leased); retry after leases end"));
      }
      evicted = true;
    }
  }
  // Counts (sign +1) or uncounts (-1) entry e's bytes in memory tier t for its tenant's quota.
  void TenantMemory(const Entry& e, Tier t, int sign) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (t == Tier::kNvme || options.tenant_memory_bytes == 0) return;
    std::vector<uint64_t>& bytes = tenant_memory[t == Tier::kHbm ? 1 : 0];
    if (bytes.empty()) bytes.resize(size_t{UINT16_MAX} + 1);
    bytes[e.tenant] = sign > 0 ? bytes[e.tenant] + e.size : bytes[e.tenant] - e.size;
  }
  uint64_t TenantMemoryBytes(uint16_t tenant, Tier t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const std::vector<uint64_t>& bytes = tenant_memory[t == Tier::kHbm ? 1 : 0];
    return bytes.empty() ? 0 : bytes[tenant];
  }
  // Keeps `tenant` within its quota of memory tier t for a put of `bytes` more: moves its own
  // least valuable blocks down a tier (or out) first. RESOURCE_EXHAUSTED when none of them can
  // go now. May release the policy lock while it demotes.
  absl::Status TenantRoom(uint16_t tenant, Tier t, size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const uint64_t quota = options.tenant_memory_bytes;
    if (quota == 0) return absl::OkStatus();
    // Each demotion frees one block; a bounded number of tries, and a bounded walk for each
    // (past other tenants' blocks), keep a put's time under the lock bounded too.
    constexpr int kMaxDemotions = 64;
    constexpr size_t kMaxSteps = 16'384;
    for (int i = 0; TenantMemoryBytes(tenant, t) + bytes > quota; ++i) {
      const uint32_t v =
          i < kMaxDemotions
              ? policy->PickTenantVictim(
                    t, tenant, kMaxSteps,
                    [this](uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return Evictable(h); })
              : kNoEntry;
      if (v == kNoEntry) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "put: the tenant's blocks fill its quota of the ", TierName(t), " tier (",
            TenantMemoryBytes(tenant, t), " of ", quota,
            " bytes) and none of them can be evicted now; retry after its leases and puts end"));
      }
      Count(counters.quota_evictions);
      Demote(v);
    }
    return absl::OkStatus();
  }
  // May the victim picker take `h` now? A pinned block is parked (off the lists until its last
  // Unpin).
  bool Evictable(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (e.flags & cache_internal::kMoving) return false;
    auto& s = ShardOf(e);
    MutexLock l(&s.mu);
    if (e.pins == 0) return true;
    e.parked = 1;
    return false;
  }
  // The policy's first victim in tier t that may be taken now, or kNoEntry.
  uint32_t PickVictim(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return policy->PickVictim(
        t, [this](uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return Evictable(h); });
  }
  // Evicts the first victim of tier t one tier down (or out). False when there is none.
  bool EvictOne(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const uint32_t v = PickVictim(t);
    if (v == kNoEntry) return false;
    Demote(v);
    return true;
  }
  // Room on flash for `bytes` more, by dropping flash blocks in policy order.
  bool MakeFlashRoom(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    while (nvme_used + bytes > nvme->CapacityBytes()) {
      const uint32_t v = PickVictim(Tier::kNvme);
      if (v == kNoEntry) return false;
      Drop(v, /*corrupt=*/false);
    }
    return true;
  }

  // Moves an evictable block one tier down, or out of the store; copies and writes without the
  // policy lock (the block is marked moving meanwhile) and commits under it.
  void Demote(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    switch (e.tier) {
      case Tier::kNvme:
        Drop(h, /*corrupt=*/false);
        return;
      case Tier::kHbm:
        DemoteFromHbm(h);
        return;
      case Tier::kHost:
        DemoteFromHost(h);
        return;
    }
  }

  void DemoteFromHbm(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    StartMove(h, Tier::kHbm);
    absl::StatusOr<uint64_t> loc = ReserveSpace(Tier::kHost, e.size);
    absl::Status st = loc.status();
    if (loc.ok()) {
      mu.Unlock();
      st = hbm->CopyOut(host->HostPointer(*loc), e.location, e.size);
      mu.Lock();
    }
    EndMove(h, Tier::kHbm);
    const uint64_t old = e.location;
    if (st.ok() && TryRelocate(h, Tier::kHost, *loc)) {
      hbm->Free(old, e.size);
      CountDemotion(Tier::kHbm, e.size);
      ShowIfIdle(h);
      return;
    }
    if (loc.ok()) host->Free(*loc, e.size);
    if (!st.ok()) {
      spdlog::warn("store: demotion of {} from HBM failed: {}", e.key.Hex(), st.ToString());
      Drop(h, /*corrupt=*/false);
    }
    MaybeFree(h);
    ShowIfIdle(h);
  }

  void DemoteFromHost(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    const uint64_t old = e.location;
    if (nvme != nullptr && (e.flags & cache_internal::kOnFlash)) {  // a clean copy: no I/O
      if (TryRelocate(h, Tier::kNvme, 0)) {
        host->Free(old, e.size);
        CountDemotion(Tier::kHost, e.size);
        ShowIfIdle(h);
      }
      return;
    }
    if (nvme == nullptr || !admission.Admit(e.size, e.hits.load(std::memory_order_relaxed)) ||
        !MakeFlashRoom(e.size)) {
      Drop(h, /*corrupt=*/false);
      return;
    }
    StartMove(h, Tier::kHost);
    nvme_used += e.size;  // the room it takes, from now
    const uint8_t* bytes = host->HostPointer(e.location);
    const BlockMeta meta{e.parent, e.checksum, e.size};
    const BlockKey key = e.key;
    const std::optional<bool> superseded = ClaimFlashKey(key);
    if ((e.flags & cache_internal::kOnFlash) || e.state != EntryState::kCommitted) {
      // While it waited for the key's turn, a durable put gave the block its flash record (it is
      // a clean copy now), or the block was deleted or replaced: nothing to write.
      ReleaseFlashKey(key, /*wrote=*/false, superseded);
      nvme_used -= meta.size;
      EndMove(h, Tier::kHost);
      if (e.state != EntryState::kCommitted) {
        MaybeFree(h);
        return;
      }
      if (TryRelocate(h, Tier::kNvme, 0)) {
        host->Free(old, e.size);
        CountDemotion(Tier::kHost, e.size);
      }
      ShowIfIdle(h);
      return;
    }
    mu.Unlock();
    const bool intact = Checksum(bytes, meta.size) == meta.checksum;
    absl::Status st = intact ? nvme->Write(key, meta, std::span(bytes, meta.size), false)
                             : absl::DataLossError("corrupt in host memory");
    mu.Lock();
    ReleaseFlashKey(key, st.ok(), st.ok() ? std::nullopt : superseded);
    EndMove(h, Tier::kHost);
    if (!st.ok()) {
      nvme_used -= meta.size;
      if (intact) {
        Count(counters.nvme_write_errors);
        spdlog::warn("store: demotion of {} to NVMe failed: {}", key.Hex(), st.ToString());
      } else {
        Count(counters.checksum_failures);
        spdlog::error("store: block {} corrupt in host memory; dropped", key.Hex());
      }
      Drop(h, /*corrupt=*/!intact);
      MaybeFree(h);
      return;
    }
    Count(counters.nvme_bytes_written, meta.size);
    e.flags |= cache_internal::kOnFlash;
    if (e.state != EntryState::kCommitted) {  // dropped meanwhile: its new record goes too
      DropFlashCopy(h, /*durably=*/true);
      MaybeFree(h);
      return;
    }
    if (TryRelocate(h, Tier::kNvme, 0)) {
      host->Free(old, e.size);
      CountDemotion(Tier::kHost, e.size);
    }
    ShowIfIdle(h);  // relocated, or kept in host (pinned or leased) with its clean flash copy
  }

  // ---- leases ----------------------------------------------------------------------------------

  // Ends one lease's hold on `h`: listed again, or freed if it was removed meanwhile.
  void ReleaseLeasePin(uint32_t h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = E(h);
    if (--e.leases != 0) return;
    leased_bytes -= e.size;
    if (e.state == EntryState::kDoomed) {
      MaybeFree(h);
    } else {
      ShowIfIdle(h);
    }
  }
  size_t ReapLeases() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const size_t n =
        leases.TakeExpired(clock->NowMicros(), [&](auto& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
          for (uint32_t h : lease.handles) ReleaseLeasePin(h);
        });
    Count(counters.leases_expired, n);
    return n;
  }

  // ---- the mover -------------------------------------------------------------------------------

  void MoverLoop(int id) {
    MutexLock l(&mu);
    auto next_tick = std::chrono::steady_clock::now();
    while (!stopping) {
      bool worked = false;
      if (!flash_deletes.empty()) {
        RunFlashDeletes();
        worked = true;
      }
      for (Tier t : {Tier::kHbm, Tier::kHost}) {
        if (!stopping && BelowReserve(t) &&
            moves_out[static_cast<int>(t)] < options.mover_threads) {
          worked = EvictOne(t) || worked;
        }
      }
      if (nvme != nullptr && nvme_used > nvme->CapacityBytes()) {
        const uint32_t v = PickVictim(Tier::kNvme);
        if (v != kNoEntry) {
          Drop(v, /*corrupt=*/false);
          worked = true;
        }
      }
      if (id == 0 && std::chrono::steady_clock::now() >= next_tick) {
        next_tick = std::chrono::steady_clock::now() + std::chrono::microseconds(kMoverTickUs);
        ReapLeases();
        if (nvme != nullptr) {
          mu.Unlock();
          for (int i = 0; i < 64 && nvme->Maintain(); ++i) {
          }
          mu.Lock();
        }
      }
      if (!worked) {
        ++idle_rounds;
        changed.SignalAll();
        mover_wake.WaitFor(&mu, kMoverTickUs);
      }
    }
  }
  absl::StatusOr<LeaseGrant> LeaseOnce(std::span<const BlockKey> keys, int64_t ttl_us);
  uint64_t IndexBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return pool.MemoryBytes() + index.MemoryBytes() + policy->MemoryBytes();
  }

  const StoreOptions options;
  const Clock* clock;
  std::unique_ptr<HostMemoryTier> host;
  std::unique_ptr<DeviceMemoryTier> hbm;
  std::unique_ptr<FlashTier> nvme;
  size_t host_reserve = 0, hbm_reserve = 0;
  uint64_t max_leased_bytes = 0;
  bool host_hugetlb = false, host_locked = false;  // how the host arena's memory came
  mutable cache_internal::EntryPool pool;  // Alloc and Free under mu
  cache_internal::KeyIndex index;
  Counters counters;
  std::atomic<uint32_t> access_clock{0};
  std::atomic<size_t> last_put_bytes[kNumTiers]{};

  mutable Mutex mu;    // the policy lock: everything below; taken before any shard lock
  CondVar changed;     // a move ended, a flash key was let go, the mover went idle
  CondVar mover_wake;  // work for the mover
  const std::unique_ptr<cache_internal::EvictionPolicy> policy ABSL_PT_GUARDED_BY(mu);
  FlashAdmission admission ABSL_GUARDED_BY(mu);
  cache_internal::LeaseTable leases ABSL_GUARDED_BY(mu);
  uint64_t leased_bytes ABSL_GUARDED_BY(mu) = 0;  // of the blocks under one lease or more
  absl::flat_hash_map<BlockKey, FlashKey> flash_keys ABSL_GUARDED_BY(mu);
  std::deque<BlockKey> flash_deletes ABSL_GUARDED_BY(mu);
  uint64_t nvme_used ABSL_GUARDED_BY(mu) = 0;  // payload bytes of blocks with a flash record
  uint64_t resident[kNumTiers] ABSL_GUARDED_BY(mu) = {0, 0, 0};  // committed blocks per tier
  // With a tenant quota (StoreOptions::tenant_memory_bytes): each tenant's bytes, reserved or
  // committed, in each memory tier, by Entry::tenant.
  std::vector<uint64_t> tenant_memory[2] ABSL_GUARDED_BY(mu);
  int moves_out[kNumTiers] ABSL_GUARDED_BY(mu) = {0, 0, 0};      // moves under way out of a tier
  uint64_t moving_bytes[kNumTiers] ABSL_GUARDED_BY(mu) = {0, 0, 0};  // and their bytes
  uint32_t next_generation ABSL_GUARDED_BY(mu) = 1;
  uint64_t idle_rounds ABSL_GUARDED_BY(mu) = 0;  // mover rounds that found nothing to do
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::vector<std::thread> movers;
  std::unique_ptr<TaskPool> readers;  // a lease's NVMe reads
};

// ---- BlockStore -------------------------------------------------------------------------------

BlockStore::BlockStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

BlockStore::~BlockStore() {
  Impl& s = *impl_;
  {
    MutexLock l(&s.mu);
    s.stopping = true;
  }
  s.mover_wake.SignalAll();
  for (std::thread& t : s.movers) t.join();
  if (s.nvme != nullptr) {
    MutexLock l(&s.mu);
    s.RunFlashDeletes();
  }
}

absl::StatusOr<std::unique_ptr<BlockStore>> BlockStore::Open(const StoreOptions& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>(options);
  Impl& s = *impl;
  const size_t slab = SlabAllocator::ChunkBytes(options.max_block_bytes);

  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<HostArena> arena,
                          HostArena::Create(HostArenaOptions{.bytes = options.host_bytes,
                                                             .hugepages = options.host_hugepages,
                                                             .lock = options.host_lock,
                                                             .provider = options.host_memory}));
  s.host_hugetlb = arena->hugetlb();
  s.host_locked = arena->locked();
  s.host = std::make_unique<HostMemoryTier>(std::move(arena), options.host_bytes, slab);
  s.max_leased_bytes =
      options.max_leased_bytes != 0 ? options.max_leased_bytes : options.host_bytes / 2;

  if (options.hbm_bytes > 0) {
    auto device = options.device_arena ? options.device_arena(options.hbm_bytes, options.hbm_device)
                                       : OpenDeviceArena(options.hbm_bytes, options.hbm_device);
    if (device.ok()) {
      s.hbm = std::make_unique<DeviceMemoryTier>(std::move(*device), slab);
      s.hbm_reserve = Reserve(options.hbm_reserve_bytes, s.hbm->capacity_bytes(), slab);
      spdlog::info("store: HBM tier of {} MiB on {}", options.hbm_bytes >> 20,
                   s.hbm->description());
    } else if (device.status().code() == absl::StatusCode::kUnavailable) {
      spdlog::info("store: HBM tier absent: {}", std::string(device.status().message()));
    } else {
      return device.status();
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
    MutexLock l(&s.mu);
    std::vector<uint32_t> recovered;
    size_t skipped = 0;
    absl::Status scan = s.nvme->ForEachMeta(
        [&](const BlockKey& key, const BlockMeta& meta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
          if (key.IsZero() || meta.size == 0 || meta.size > options.max_block_bytes ||
              key == meta.parent || s.index.Find(key) != kNoEntry) {
            ++skipped;
            return;
          }
          const uint32_t h = s.pool.Alloc();
          if (h == kNoEntry) return;
          Entry& e = s.E(h);
          e.key = key;
          e.parent = meta.parent;
          e.checksum = meta.checksum;
          e.size = meta.size;
          e.tier = Tier::kNvme;
          e.flags = cache_internal::kOnFlash;
          auto& shard = s.index.ShardOf(key);
          MutexLock sl(&shard.mu);
          e.state = EntryState::kCommitted;
          e.generation = s.NewGeneration();
          s.index.InsertLocked(shard, h);
          s.nvme_used += meta.size;
          ++s.resident[static_cast<int>(Tier::kNvme)];
          recovered.push_back(h);
        });
    if (!scan.ok()) return scan;
    if (skipped > 0) {
      spdlog::warn("store: skipped {} NVMe blocks this store cannot hold (max_block_bytes {})",
                   skipped, options.max_block_bytes);
    }
    for (uint32_t h : recovered) s.policy->Add(h);
    s.MakeFlashRoom(0);  // the disk may hold less than the last run had
    if (!recovered.empty()) {
      spdlog::info("store: recovered {} blocks ({} MiB) from {}", recovered.size(),
                   s.nvme_used >> 20, options.nvme_path);
    }
    s.readers = std::make_unique<TaskPool>(kLeasePromotionThreads - 1);
  }
  // With no flash tier below, host victims are dropped, which needs no I/O: a put evicts what it
  // needs, and the whole tier holds blocks.
  s.host_reserve = s.nvme == nullptr && options.host_reserve_bytes < 0
                       ? 0
                       : Reserve(options.host_reserve_bytes, s.host->capacity_bytes(), slab);
  for (int i = 0; i < options.mover_threads; ++i) {
    s.movers.emplace_back([&s, i] { s.MoverLoop(i); });
  }
  return std::unique_ptr<BlockStore>(new BlockStore(std::move(impl)));
}

const StoreOptions& BlockStore::options() const { return impl_->options; }
uint8_t* BlockStore::host_arena_base() const { return impl_->host->HostPointer(0); }
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
      return absl::InvalidArgumentError(absl::StrCat(
          "put: block of ", size, " bytes does not match layout ", options.layout->DebugString(),
          " (", options.layout->BytesPerBlock(), " bytes per block)"));
    }
  }
  if (options.durable && s.nvme == nullptr) {
    return absl::FailedPreconditionError("put: durable put needs an NVMe tier (nvme_path)");
  }
  Count(s.counters.puts);
  PutHandle handle;
  MutexLock l(&s.mu);
  s.ReapLeases();
  Tier tier = s.hbm != nullptr ? Tier::kHbm : Tier::kHost;
  auto reserve = [&](Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) -> absl::StatusOr<uint64_t> {
    s.last_put_bytes[static_cast<int>(t)].store(size, std::memory_order_relaxed);
    KVTIER_RETURN_IF_ERROR(s.TenantRoom(options.tenant, t, size));
    return s.ReserveSpace(t, size);
  };
  absl::StatusOr<uint64_t> loc = reserve(tier);
  if (!loc.ok() && tier == Tier::kHbm) {
    tier = Tier::kHost;
    loc = reserve(tier);
  }
  if (!loc.ok()) return loc.status();
  const uint32_t h = s.pool.Alloc();
  if (h == kNoEntry) {
    s.Mem(tier)->Free(*loc, size);
    return absl::ResourceExhaustedError("put: the index is full");
  }
  Entry& e = s.E(h);
  e.key = key;
  e.parent = parent;
  e.size = static_cast<uint32_t>(size);
  e.tier = tier;
  e.location = *loc;
  e.tenant = options.tenant;
  e.state = EntryState::kReserved;
  s.TenantMemory(e, tier, +1);
  handle.store_ = impl_.get();
  handle.handle_ = h;
  handle.size_ = size;
  handle.host_data_ = s.Mem(tier)->HostPointer(*loc);
  handle.durable_ = options.durable;
  handle.expected_checksum_ = options.expected_checksum;
  if (handle.host_data_ != nullptr) handle.hashing_->copier.Reset(handle.host_data_, size);
  return handle;
}

absl::Status BlockStore::Put(const BlockKey& key, const BlockKey& parent,
                             std::span<const uint8_t> data, const PutOptions& options) {
  KVTIER_ASSIGN_OR_RETURN(PutHandle handle, BeginPut(key, parent, data.size(), options));
  KVTIER_RETURN_IF_ERROR(handle.Write(0, data));
  return handle.Commit().status();
}

BlockStore::PutHandle::PutHandle() : hashing_(std::make_unique<Hashing>()) {}

BlockStore::PutHandle::PutHandle(PutHandle&& o) noexcept { *this = std::move(o); }

BlockStore::PutHandle& BlockStore::PutHandle::operator=(PutHandle&& o) noexcept {
  if (this != &o) {
    Abort();
    store_ = std::exchange(o.store_, nullptr);
    handle_ = o.handle_;
    size_ = o.size_;
    host_data_ = o.host_data_;
    durable_ = o.durable_;
    expected_checksum_ = o.expected_checksum_;
    hashing_ = std::move(o.hashing_);
    hashed_ = o.hashed_;
  }
  return *this;
}

BlockStore::PutHandle::~PutHandle() { Abort(); }

void BlockStore::PutHandle::Abort() {
  if (store_ == nullptr) return;
  MutexLock l(&store_->mu);
  store_->FreeReservation(handle_, /*counted=*/true);
  store_ = nullptr;
}

absl::Status BlockStore::PutHandle::Write(size_t offset, std::span<const uint8_t> data) {
  if (offset > size_ || data.size() > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat("put: write of ", data.size(),
                                                   " bytes at offset ", offset,
                                                   " passes the block's ", size_, " bytes"));
  }
  if (store_ == nullptr) return absl::FailedPreconditionError("put: handle already committed");
  const bool in_order = hashing_ != nullptr && offset == hashed_;
  if (host_data_ != nullptr) {
    if (in_order) {
      hashing_->copier.Copy(data.data(), data.size());
    } else {
      CopyBytes(host_data_ + offset, data.data(), data.size());
    }
  } else {
    KVTIER_RETURN_IF_ERROR(
        store_->hbm->CopyIn(store_->E(handle_).location + offset, data.data(), data.size()));
    if (in_order) hashing_->stream.Update(data.data(), data.size());
  }
  if (in_order) {
    hashed_ += data.size();
  } else {
    hashing_.reset();  // out of order: Commit reads the bytes back
  }
  return absl::OkStatus();
}

absl::StatusOr<PutResult> BlockStore::PutHandle::Commit() {
  if (store_ == nullptr) return absl::FailedPreconditionError("put: handle already committed");
  Impl& s = *store_;
  Entry& r = s.E(handle_);
  // The bytes are the writer's alone until the commit: checksum (and stage) them unlocked.
  std::vector<uint8_t> staged;  // host bytes of an HBM block, for a durable write
  const uint8_t* bytes = host_data_;
  if (bytes == nullptr && (durable_ || hashing_ == nullptr || hashed_ != size_)) {
    staged.resize(size_);
    absl::Status st = s.hbm->CopyOut(staged.data(), r.location, size_);
    if (!st.ok()) {
      Abort();
      return st;
    }
    bytes = staged.data();
  }
  uint64_t sum = 0;
  if (hashing_ != nullptr && hashed_ == size_) {
    sum = host_data_ != nullptr ? hashing_->copier.Digest() : hashing_->stream.Digest();
  } else {
    sum = Checksum(bytes, size_);
  }
  if (expected_checksum_.has_value() && *expected_checksum_ != sum) {
    Abort();
    return absl::DataLossError(
        absl::StrCat("put: block ", r.key.Hex(), " does not match its declared checksum"));
  }
  r.checksum = sum;
  const BlockMeta meta{r.parent, sum, r.size};
  const uint32_t h = handle_;
  MutexLock l(&s.mu);
  store_ = nullptr;  // from here on the reservation is this function's to publish or free
  auto fail = [&](absl::Status st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    s.FreeReservation(h, /*counted=*/true);
    return st;
  };
  bool counted_present = false;
  for (;;) {
    s.WaitForFlashKey(r.key);
    const uint32_t c = s.index.Find(r.key);
    if (c == kNoEntry) {  // ours is the block
      if (durable_) {
        s.MakeFlashRoom(r.size);
        absl::Status st = s.WriteToFlash(r.key, meta, bytes, /*durable=*/true);
        if (!st.ok()) return fail(st);
        // No commit of this key could happen meanwhile: commits wait for its flash turn.
        r.flags |= cache_internal::kOnFlash | cache_internal::kDurable;
        s.nvme_used += r.size;
      }
      s.Publish(h, /*event=*/true);
      return PutResult::kStored;
    }
    Entry& e = s.E(c);
    if (e.flags & cache_internal::kMoving) {  // commit against where it ends up
      s.changed.Wait(&s.mu);
      continue;
    }
    if (!counted_present) {
      Count(s.counters.puts_noop);
      counted_present = true;
    }
    const bool same = e.checksum == sum;
    const bool needs_durable = durable_ && (e.flags & cache_internal::kDurable) == 0;
    if (e.tier != Tier::kNvme && (same || !needs_durable)) {
      // Keep the committed block: its copy in memory is verified by every read.
      if (needs_durable) {
        absl::Status st = s.WriteToFlash(r.key, meta, bytes, /*durable=*/true);
        if (!st.ok()) return fail(st);
        if (s.index.Find(r.key) != c) {  // dropped while we wrote: ours is the block
          r.flags |= cache_internal::kOnFlash | cache_internal::kDurable;
          s.nvme_used += r.size;
          s.Publish(h, /*event=*/true);
          return PutResult::kStored;
        }
        if ((e.flags & cache_internal::kOnFlash) == 0) s.nvme_used += e.size;
        e.flags |= cache_internal::kOnFlash | cache_internal::kDurable;
      }
      s.FreeReservation(h, /*counted=*/false);
      return PutResult::kPresent;
    }
    // Replace it with ours: its only copy is on flash (unverified until read), or it differs and
    // a durable record of the key must hold the bytes that stay.
    if (durable_ || ((e.flags & cache_internal::kDurable) && !same)) {
      absl::Status st = s.WriteToFlash(r.key, meta, bytes, /*durable=*/true);
      if (!st.ok()) return fail(st);
      if (same && s.index.Find(r.key) == c && e.tier != Tier::kNvme &&
          (e.flags & cache_internal::kMoving) == 0) {
        // Promoted (perhaps leased) while ours was written: keep it, durable with our record of
        // the same bytes, so that nothing reading it sees it change.
        if ((e.flags & cache_internal::kOnFlash) == 0) s.nvme_used += e.size;
        e.flags |= cache_internal::kOnFlash | cache_internal::kDurable;
        s.FreeReservation(h, /*counted=*/false);
        return PutResult::kPresent;
      }
      r.flags |= cache_internal::kOnFlash | cache_internal::kDurable;
      s.nvme_used += r.size;
      if (s.index.Find(r.key) == c && (e.flags & cache_internal::kOnFlash)) {
        e.flags &= ~(cache_internal::kOnFlash | cache_internal::kDurable);  // the record is ours
        s.nvme_used -= e.size;
      }
    } else if ((e.flags & cache_internal::kOnFlash) && same) {
      r.flags |= e.flags & (cache_internal::kOnFlash | cache_internal::kDurable);
      e.flags &= ~(cache_internal::kOnFlash | cache_internal::kDurable);
    } else {
      s.DropFlashCopy(c, /*durably=*/false);
    }
    const bool present = s.index.Find(r.key) == c;
    s.Publish(h, /*event=*/!present, present ? c : kNoEntry);
    if (present) s.MaybeFree(c);
    return present ? PutResult::kPresent : PutResult::kStored;
  }
}

absl::StatusOr<size_t> BlockStore::Get(const BlockKey& key, std::span<uint8_t> out) {
  Impl& s = *impl_;
  for (int attempt = 0;; ++attempt) {
    BlockInfo info;
    const uint32_t h = s.PinForRead(key, &info);
    if (h == kNoEntry) return s.CountMiss(key);
    if (out.size() < info.size) {
      s.Unpin(h);
      return absl::InvalidArgumentError(
          absl::StrCat("get: buffer of ", out.size(), " bytes for a block of ", info.size));
    }
    if (attempt == 0) s.CountHit(h, info.tier);
    absl::StatusOr<uint64_t> sum;
    // An NVMe block is read straight into a free host chunk, which it is then promoted to; with
    // no chunk free, into `out` only (the read does not wait for room).
    std::optional<uint64_t> promote_to;
    switch (info.tier) {
      case Tier::kHost:
        sum = CopyWithChecksum(out.data(), s.host->HostPointer(info.location), info.size,
                               CopyTo::kCache);
        break;
      case Tier::kHbm: {
        absl::Status st = s.hbm->CopyOut(out.data(), info.location, info.size);
        if (st.ok())
          sum = Checksum(out.data(), info.size);
        else
          sum = st;
        break;
      }
      case Tier::kNvme: {
        promote_to = s.host->Allocate(info.size);
        if (promote_to.has_value()) {
          uint8_t* chunk = s.host->HostPointer(*promote_to);
          sum = s.nvme->Read(key, std::span<uint8_t>(chunk, info.size), out.first(info.size));
        } else {
          s.mover_wake.Signal();  // to free its reserve again
          sum = s.nvme->Read(key, out.first(info.size));
        }
        break;
      }
    }
    const bool io_error = !sum.ok() && sum.status().code() != absl::StatusCode::kDataLoss &&
                          sum.status().code() != absl::StatusCode::kNotFound;
    if (io_error || !sum.ok() || *sum != info.checksum) {
      if (promote_to.has_value()) s.host->Free(*promote_to, info.size);
      if (io_error) {
        s.Unpin(h);
        return sum.status();  // the block may be fine: keep it
      }
      bool dropped = false;
      {
        MutexLock l(&s.mu);
        Entry& e = s.E(h);
        // Bad bytes where the block still is: it is corrupt. Elsewhere: it moved or was replaced
        // while being read; read it again.
        if (e.state == EntryState::kCommitted && e.generation == info.generation) {
          Count(s.counters.checksum_failures);
          s.Drop(h, /*corrupt=*/true);
          dropped = true;
        }
      }
      s.Unpin(h);
      if (dropped || attempt >= 3) {
        spdlog::error("store: block {} failed its checksum in the {} tier; dropped", key.Hex(),
                      TierName(info.tier));
        return absl::DataLossError(absl::StrCat("block ", key.Hex(), " is corrupt (",
                                                TierName(info.tier), " tier) and was dropped"));
      }
      continue;
    }
    if (promote_to.has_value()) {
      MutexLock l(&s.mu);
      Entry& e = s.E(h);
      if (e.state == EntryState::kCommitted && e.generation == info.generation) {
        s.Promote(h, *promote_to);
        s.ShowIfIdle(h);
      } else {  // another reader promoted it first, or it changed
        s.host->Free(*promote_to, info.size);
      }
    }
    s.Unpin(h);
    return static_cast<size_t>(info.size);
  }
}

absl::StatusOr<std::vector<uint8_t>> BlockStore::Get(const BlockKey& key) {
  std::vector<uint8_t> out;
  for (;;) {
    KVTIER_ASSIGN_OR_RETURN(BlockInfo info, Stat(key));
    out.resize(info.size);
    auto n = Get(key, std::span<uint8_t>(out));
    if (n.ok()) {
      out.resize(*n);
      return out;
    }
    if (n.status().code() != absl::StatusCode::kInvalidArgument) return n.status();
  }
}

absl::StatusOr<BlockStore::PinnedBlock> BlockStore::PinHostBlock(const BlockKey& key) {
  Impl& s = *impl_;
  BlockInfo info;
  const uint32_t h = s.PinForRead(key, &info);
  if (h == kNoEntry) return s.CountMiss(key);
  if (info.tier != Tier::kHost) {
    s.Unpin(h);
    return absl::FailedPreconditionError("block is not in the host tier");
  }
  s.CountHit(h, Tier::kHost);
  return PinnedBlock{s.host->HostPointer(info.location), info.size, info.checksum, h};
}

absl::StatusOr<BlockStore::PinnedBlock> BlockStore::PinHostPlacement(const BlockInfo& seen) {
  Impl& s = *impl_;
  BlockInfo info;
  const uint32_t h = s.PinForRead(seen.key, &info);
  if (h == kNoEntry) return absl::NotFoundError(absl::StrCat("block ", seen.key.Hex(), " is gone"));
  if (info.tier != Tier::kHost || info.location != seen.location ||
      info.generation != seen.generation) {
    s.Unpin(h);
    return absl::FailedPreconditionError(absl::StrCat("block ", seen.key.Hex(), " has moved"));
  }
  return PinnedBlock{s.host->HostPointer(info.location), info.size, info.checksum, h};
}

void BlockStore::UnpinHostBlock(const PinnedBlock& pinned) { impl_->Unpin(pinned.handle); }

absl::StatusOr<BlockInfo> BlockStore::Stat(const BlockKey& key) const {
  const Impl& s = *impl_;
  auto& shard = s.index.ShardOf(key);
  MutexLock l(&shard.mu);
  const uint32_t h = s.index.FindLocked(shard, key);
  if (h == kNoEntry) return absl::NotFoundError(absl::StrCat("block ", key.Hex(), " not found"));
  const Entry& e = s.E(h);
  return BlockInfo{key, e.tier, e.size, e.checksum, e.location, e.generation};
}

LookupResult BlockStore::Lookup(std::span<const BlockKey> chain) const {
  LookupResult r = LookupPiece(chain);
  CountLookup(chain.size(), r);
  return r;
}

void BlockStore::CountLookup(size_t blocks, const LookupResult& found) const {
  Counters& c = impl_->counters;
  Count(c.lookups);
  Count(c.lookup_blocks_hit, found.matched);
  Count(c.lookup_blocks_missed, blocks - found.matched);
  uint64_t per_tier[kNumTiers] = {};
  for (size_t i = 0; i < found.matched && i < found.tiers.size(); ++i) {
    ++per_tier[static_cast<int>(found.tiers[i])];
  }
  for (int t = 0; t < kNumTiers; ++t) {
    if (per_tier[t] != 0) Count(c.lookup_hits[t], per_tier[t]);
  }
}

void BlockStore::CountGetMiss() const { impl_->CountGetMiss(); }

LookupResult BlockStore::LookupPiece(std::span<const BlockKey> chain) const {
  const Impl& s = *impl_;
  LookupResult r;
  r.tiers.reserve(chain.size());
  // Runs of keys grow from 64, so a chain that misses early costs little more than walking it
  // key by key, and a long one locks each shard once per run.
  constexpr size_t kFirstRun = 64, kMaxRun = 1024;
  std::vector<uint8_t> tiers;
  for (size_t begin = 0, run = kFirstRun; begin < chain.size() && r.tiers.size() == begin;
       begin += run, run = std::min(run * 2, kMaxRun)) {
    s.index.TiersOf(chain.subspan(begin, std::min(run, chain.size() - begin)), &tiers);
    for (size_t i = 0; i < tiers.size() && tiers[i] != cache_internal::KeyIndex::kAbsent; ++i) {
      r.tiers.push_back(static_cast<Tier>(tiers[i]));
    }
  }
  r.matched = r.tiers.size();
  return r;
}

absl::Status BlockStore::Delete(const BlockKey& key) {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  uint32_t h = kNoEntry;
  for (;;) {
    s.WaitForFlashKey(key);
    h = s.index.Find(key);
    if (h == kNoEntry) break;
    if (s.E(h).leases > 0) {
      return absl::FailedPreconditionError(absl::StrCat("block ", key.Hex(), " is leased"));
    }
    if ((s.E(h).flags & cache_internal::kMoving) == 0) break;
    s.changed.Wait(&s.mu);
  }
  if (h != kNoEntry) {
    Entry& e = s.E(h);
    if (e.flags & cache_internal::kOnFlash) {
      e.flags &= ~(cache_internal::kOnFlash | cache_internal::kDurable);
      s.nvme_used -= std::min<uint64_t>(s.nvme_used, e.size);
    }
    s.Doom(h, /*event=*/true);
    s.MaybeFree(h);
  }
  // The key's flash record goes durably, whatever the store knew of it: a record the store
  // dropped with a plain delete (an eviction from flash, a replaced copy) may still be waiting
  // its turn, or logged and not yet synced, and must not come back after a crash either.
  absl::Status st;
  if (s.nvme != nullptr) {
    (void)s.ClaimFlashKey(key);  // a delete waiting its turn is this one now
    s.mu.Unlock();
    st = s.nvme->Delete(key, /*durable=*/true);
    s.mu.Lock();
    const bool deleted = st.ok() || st.code() == absl::StatusCode::kNotFound;
    s.ReleaseFlashKey(key, /*wrote=*/false,
                      deleted ? std::nullopt : std::optional<bool>(/*durable=*/true));
    if (st.code() == absl::StatusCode::kNotFound) st = absl::OkStatus();
  }
  if (h == kNoEntry && st.ok()) {
    return absl::NotFoundError(absl::StrCat("block ", key.Hex(), " not found"));
  }
  return st;
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
    return absl::InvalidArgumentError(
        absl::StrCat("lease: ttl_us must be in [0, ", s.options.max_lease_ttl_us, "]"));
  }
  if (ttl_us == 0) ttl_us = s.options.lease_ttl_us;
  // A block replaced by a re-put while its lease was being made: lease the new one.
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<LeaseGrant> grant = s.LeaseOnce(keys, ttl_us);
    if (grant.ok() || grant.status().code() != absl::StatusCode::kAborted || attempt == 3) {
      return grant;
    }
  }
}

absl::StatusOr<LeaseGrant> BlockStore::Impl::LeaseOnce(std::span<const BlockKey> keys,
                                                       int64_t ttl_us) {
  Impl& s = *this;
  // One NVMe block brought up for this lease: read into `location` without the policy lock.
  struct Promotion {
    uint32_t handle;
    BlockKey key;
    uint32_t size;
    uint64_t checksum;
    uint32_t generation;
    uint64_t location;
    absl::StatusOr<uint64_t> sum = absl::UnknownError("not read");
  };
  std::vector<uint32_t> handles;
  std::vector<Promotion> promotions;
  uint64_t unleased = 0;  // bytes of the blocks no other lease holds
  absl::Status no_room;
  {
    MutexLock l(&s.mu);
    s.ReapLeases();
    handles.reserve(keys.size());
    absl::flat_hash_set<uint32_t> seen;
    for (size_t i = 0; i < keys.size(); ++i) {
      const uint32_t h = s.index.Find(keys[i]);
      if (h == kNoEntry) {
        Count(s.counters.lease_misses);
        return absl::NotFoundError(
            absl::StrCat("lease: block ", keys[i].Hex(), " (position ", i, ") not found"));
      }
      if (!seen.insert(h).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("lease: block ", keys[i].Hex(), " named twice"));
      }
      handles.push_back(h);
      if (s.E(h).leases == 0) unleased += s.E(h).size;  // a block under other leases counts once
    }
    if (s.leased_bytes + unleased > s.max_leased_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("lease: ", unleased, " more bytes would pass the leased-bytes cap of ",
                       s.max_leased_bytes, " (", s.leased_bytes, " leased)"));
    }
    // Leased blocks are neither evicted nor moved, so room made for one NVMe block cannot come
    // from another block of the same lease.
    for (uint32_t h : handles) {
      Entry& e = s.E(h);
      if (e.leases++ != 0) continue;
      s.leased_bytes += e.size;
      s.policy->Hide(h);
    }
    // Room in the host tier for each NVMe block; a pin keeps the entry from being freed while
    // the lock is dropped (a failed checksum elsewhere may doom it meanwhile).
    for (uint32_t h : handles) {
      Entry& e = s.E(h);
      if (e.tier != Tier::kNvme || e.state != EntryState::kCommitted) continue;
      absl::StatusOr<uint64_t> loc = s.ReserveSpace(Tier::kHost, e.size);
      if (!loc.ok()) {
        no_room = loc.status();
        break;
      }
      if (e.tier != Tier::kNvme || e.state != EntryState::kCommitted) {  // changed meanwhile
        s.host->Free(*loc, e.size);
        continue;
      }
      {
        auto& shard = s.ShardOf(e);
        MutexLock sl(&shard.mu);
        ++e.pins;
      }
      promotions.push_back({h, e.key, e.size, e.checksum, e.generation, *loc});
    }
    if (!no_room.ok()) {
      for (const Promotion& p : promotions) s.host->Free(p.location, p.size);
      for (uint32_t g : handles) s.ReleaseLeasePin(g);
    }
  }
  if (!no_room.ok()) {
    for (const Promotion& p : promotions) s.Unpin(p.handle);
    return no_room;
  }

  // The NVMe reads, in parallel and without the policy lock: other requests go on meanwhile.
  if (!promotions.empty()) {
    s.readers->ParallelFor(promotions.size(), [&](size_t i) {
      Promotion& p = promotions[i];
      p.sum = s.nvme->Read(p.key, std::span<uint8_t>(s.host->HostPointer(p.location), p.size));
    });
  }

  LeaseGrant grant;
  absl::Status failed;
  {
    MutexLock l(&s.mu);
    for (Promotion& p : promotions) {
      Entry& e = s.E(p.handle);
      const bool good = p.sum.ok() && *p.sum == p.checksum;
      const bool in_place = e.state == EntryState::kCommitted && e.generation == p.generation;
      if (!good || !in_place) s.host->Free(p.location, p.size);
      if (!good) {
        const bool corrupt = !p.sum.ok() ? p.sum.status().code() == absl::StatusCode::kDataLoss ||
                                               p.sum.status().code() == absl::StatusCode::kNotFound
                                         : true;
        if (corrupt && in_place) {
          Count(s.counters.checksum_failures);
          s.Drop(p.handle, /*corrupt=*/true);
        }
        if (failed.ok()) {
          failed = corrupt ? absl::DataLossError(absl::StrCat(
                                 "block ", p.key.Hex(), " is corrupt on NVMe and was dropped"))
                           : p.sum.status();
        }
        continue;
      }
      if (!in_place) continue;
      s.Promote(p.handle, p.location);
      ++grant.promoted;
    }
    for (uint32_t h : handles) {
      if (failed.ok() && s.E(h).state != EntryState::kCommitted) {  // dropped meanwhile
        failed =
            absl::AbortedError(absl::StrCat("lease: block ", s.E(h).key.Hex(),
                                            " was replaced or dropped while being leased; retry"));
      }
    }
    if (failed.ok()) {
      grant.expires_at_us = s.clock->NowMicros() + ttl_us;
      for (uint32_t h : handles) {
        const Entry& e = s.E(h);
        grant.blocks.push_back(
            BlockInfo{e.key, e.tier, e.size, e.checksum, e.location, e.generation});
      }
      grant.id = s.leases.Add({grant.expires_at_us, handles});
      Count(s.counters.leases_granted);
      // Each block is a hit of the tier the lease found it in: NVMe for those it brought up.
      uint64_t found[kNumTiers] = {};
      for (const BlockInfo& b : grant.blocks) ++found[static_cast<int>(b.tier)];
      found[static_cast<int>(Tier::kHost)] -= grant.promoted;
      found[static_cast<int>(Tier::kNvme)] += grant.promoted;
      for (int t = 0; t < kNumTiers; ++t) Count(s.counters.lease_hits[t], found[t]);
    } else {
      for (uint32_t h : handles) s.ReleaseLeasePin(h);
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
  std::optional<cache_internal::LeaseTable::Lease> lease = s.leases.Take(lease_id);
  if (!lease.has_value()) {
    return absl::NotFoundError(absl::StrCat("lease ", lease_id, " is unknown or expired"));
  }
  for (uint32_t h : lease->handles) s.ReleaseLeasePin(h);
  return absl::OkStatus();
}

size_t BlockStore::FirstChanged(std::span<const BlockInfo> seen) const {
  const Impl& s = *impl_;
  for (size_t i = 0; i < seen.size(); ++i) {
    auto& shard = s.index.ShardOf(seen[i].key);
    MutexLock l(&shard.mu);
    const uint32_t h = s.index.FindLocked(shard, seen[i].key);
    if (h == kNoEntry) return i;
    const Entry& e = s.E(h);
    if (e.tier != seen[i].tier || e.location != seen[i].location ||
        e.generation != seen[i].generation) {
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

void BlockStore::WaitForMover() {
  Impl& s = *impl_;
  MutexLock l(&s.mu);
  // Every mover has gone round twice since, finding nothing to do.
  const uint64_t until = s.idle_rounds + 2 * static_cast<uint64_t>(s.options.mover_threads);
  while (s.idle_rounds < until || !s.flash_deletes.empty() ||
         s.moves_out[0] + s.moves_out[1] + s.moves_out[2] > 0) {
    s.mover_wake.SignalAll();
    s.changed.WaitFor(&s.mu, 10'000);
  }
}

StoreStats BlockStore::Stats() const {
  const Impl& s = *impl_;
  const Counters& c = s.counters;
  StoreStats st;
  st.host_hugetlb = s.host_hugetlb;
  st.host_locked = s.host_locked;
  st.gets = Read(c.gets);
  st.get_misses = Read(c.get_misses);
  st.lookups = Read(c.lookups);
  st.lookup_blocks_hit = Read(c.lookup_blocks_hit);
  st.lookup_blocks_missed = Read(c.lookup_blocks_missed);
  st.puts = Read(c.puts);
  st.puts_noop = Read(c.puts_noop);
  st.puts_aborted = Read(c.puts_aborted);
  st.evictions = Read(c.evictions);
  st.demotions = Read(c.demotions);
  st.promotions = Read(c.promotions);
  st.sync_evictions = Read(c.sync_evictions);
  st.quota_evictions = Read(c.quota_evictions);
  st.nvme_bytes_written = Read(c.nvme_bytes_written);
  st.nvme_write_errors = Read(c.nvme_write_errors);
  st.checksum_failures = Read(c.checksum_failures);
  st.leases_granted = Read(c.leases_granted);
  st.leases_expired = Read(c.leases_expired);
  for (int t = 0; t < kNumTiers; ++t) {
    TierStats& ts = st.tiers[t];
    ts.hits = Read(c.hits[t]);
    ts.lookup_hits = Read(c.lookup_hits[t]);
    ts.lease_hits = Read(c.lease_hits[t]);
    ts.evictions = Read(c.evictions_from[t]);
    ts.evicted_bytes = Read(c.evicted_bytes[t]);
    ts.demotions = Read(c.demotions_from[t]);
    ts.demoted_bytes = Read(c.demoted_bytes[t]);
  }
  st.lease_misses = Read(c.lease_misses);
  st.promoted_bytes = Read(c.promoted_bytes);
  MutexLock l(&s.mu);
  st.nvme_admission_rejections = s.admission.rejections();
  auto memory = [&](Tier t, const MemoryTier* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    TierStats& ts = st.tiers[static_cast<int>(t)];
    ts.present = m != nullptr;
    ts.capacity_bytes = m != nullptr ? m->capacity_bytes() : 0;
    ts.used_bytes = m != nullptr ? m->used_bytes() : 0;
    ts.blocks = s.resident[static_cast<int>(t)];
  };
  memory(Tier::kHbm, s.hbm.get());
  memory(Tier::kHost, s.host.get());
  TierStats& nvme = st.tiers[static_cast<int>(Tier::kNvme)];
  nvme.present = s.nvme != nullptr;
  nvme.capacity_bytes = s.nvme != nullptr ? s.nvme->CapacityBytes() : 0;
  nvme.used_bytes = s.nvme_used;
  nvme.blocks = s.resident[static_cast<int>(Tier::kNvme)];
  st.leases_active = s.leases.active();
  st.leased_bytes = s.leased_bytes;
  st.leased_bytes_limit = s.max_leased_bytes;
  st.orphan_blocks = s.policy->orphans();
  st.index_bytes = s.IndexBytes();
  if (s.nvme != nullptr) {
    st.nvme_index_bytes = s.nvme->IndexMemoryBytes();
    const FlashStats f = s.nvme->Stats();
    st.nvme_disk_full_rejections = f.disk_full_rejections;
    st.nvme_compactions = f.compactions;
    st.nvme_bad_records = f.bad_records;
    st.nvme_lost_blocks = f.lost_blocks;
    st.nvme_metadata_recovered_with_loss = f.metadata_recovered_with_loss;
    st.nvme_damaged_tier_moved_aside = f.damaged_tier_moved_aside;
  }
  return st;
}

absl::Status BlockStore::CheckConsistency() const {
  const Impl& s = *impl_;
  MutexLock l(&s.mu);
  auto fail = [](const std::string& what) { return absl::InternalError("consistency: " + what); };
  KVTIER_RETURN_IF_ERROR(s.policy->Check());
  uint64_t per_tier[kNumTiers] = {0, 0, 0};
  uint64_t on_flash = 0, leased = 0;
  for (size_t i = 0; i < s.index.shard_count(); ++i) {
    auto& shard = s.index.shard(i);
    MutexLock sl(&shard.mu);
    for (uint32_t h : shard.set) {
      const Entry& e = s.E(h);
      if (e.state != EntryState::kCommitted) return fail("indexed block not committed");
      ++per_tier[static_cast<int>(e.tier)];
      if (e.flags & cache_internal::kOnFlash) on_flash += e.size;
      if (e.leases > 0) leased += e.size;
      if (e.tier == Tier::kNvme && (e.flags & cache_internal::kOnFlash) == 0) {
        return fail(absl::StrCat("block ", e.key.Hex(), " in the NVMe tier without a record"));
      }
      const bool held = e.leases > 0 || (e.flags & cache_internal::kMoving) || e.parked;
      if (!held && !s.policy->listed(h)) {
        return fail(absl::StrCat("block ", e.key.Hex(), " committed but not listed"));
      }
    }
  }
  for (int t = 0; t < kNumTiers; ++t) {
    if (per_tier[t] != s.resident[t]) {
      return fail(absl::StrCat(TierName(static_cast<Tier>(t)), " tier counts ", s.resident[t],
                               " blocks, holds ", per_tier[t]));
    }
  }
  const bool moving = s.moves_out[0] + s.moves_out[1] + s.moves_out[2] > 0;
  if (!moving && on_flash != s.nvme_used) {
    return fail(absl::StrCat("flash bytes counted ", s.nvme_used, ", held ", on_flash));
  }
  // Blocks removed while leased are out of the index but still counted until their leases end.
  if (leased > s.leased_bytes || (s.leases.active() == 0 && s.leased_bytes != 0)) {
    return fail(absl::StrCat("leased bytes counted ", s.leased_bytes, ", indexed blocks under "
                             "leases hold ", leased, " with ", s.leases.active(), " leases"));
  }
  return absl::OkStatus();
}

}  // namespace kvtier
