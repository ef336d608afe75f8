#pragma once
// BlockStore: kvtier's tiered KV block cache on one node (DESIGN.md, "Cache daemon").
//
// Blocks are immutable byte strings named by 128-bit chained prefix keys (common/block_key.h).
// Each lives in exactly one of HBM, host RAM or NVMe at a time (a host or HBM block may also keep
// a clean copy on NVMe). The key index maps key -> entry (tier, location, size, XXH3-64 checksum,
// parent, leases, recency).
//
// Puts are two-phase: BeginPut reserves space, the caller writes, Commit makes the block visible
// only if complete and, for PutOptions::durable, only once it is on NVMe and fsynced. "Present"
// (PutResult::kPresent) is said only of a committed block: a put of a key whose block is
// committed meanwhile keeps that block (made durable first when the put asks for durability) or
// replaces it with its own verified bytes (when the committed copy is on NVMe only, or different
// and durable); a put of a key whose other put is in flight or was aborted stores its own bytes.
// Every read verifies the checksum; a corrupt block is dropped, counted and reported as DATA_LOSS.
//
// Eviction demotes HBM -> host -> NVMe -> gone, in this order within a tier: blocks whose parent
// is gone (they can never be a prefix hit), then chain tails (blocks with no cached child), then
// the rest; least recently used first within each class. An NVMe hit promotes the block to host.
// Flash admission is gated (StoreOptions::nvme_admission, nvme_write_bytes_per_s).
//
// Leases pin blocks in host or HBM memory for a TTL (remote readers copy them meanwhile); a leased
// block is never evicted, moved or freed, and every lease expires.
//
// Thread-safe. The locking contract (src/cache/README.md has the picture):
//   - A hit (Get, PinHostBlock, Stat, Lookup, FirstChanged) takes one index shard lock to pin or
//     read the entry, copies with no lock held, and records recency with an atomic store plus a
//     try-lock of the policy lock that it skips when taken. It never waits for the policy lock,
//     a disk or a device copy.
//   - The policy lock guards the eviction lists, chains, leases and flash bookkeeping, and is never
//     held across I/O: flash reads, writes and deletes, device copies and payload checksums run
//     outside it, with the entry marked moving (or pinned) meanwhile and the result committed
//     under it (a new generation for every new placement).
//   - A background mover keeps a reserve free in each memory tier by demoting ahead of need, does
//     flash deletes and compaction, and expires leases. A put or promotion that finds its tier
//     full waits for the mover's demotions in flight, else evicts one block itself (counted in
//     StoreStats::sync_evictions), with the same protocol.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/store_options.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "common/tier.h"

namespace kvtier {

// What a committed put did.
enum class PutResult : uint8_t {
  kStored,   // its bytes are the block now
  kPresent,  // the block was already committed (and is durable now, if the put asked)
};

struct PutOptions {
  // When set, the block's size must equal layout->BytesPerBlock().
  const KvLayout* layout = nullptr;
  // Acknowledge only once the block is on NVMe and fsynced: it survives a crash or kill -9.
  bool durable = false;
  // When set, Commit fails with DATA_LOSS unless the written bytes have this XXH3-64.
  std::optional<uint64_t> expected_checksum;
  // Whose block it is, as the caller numbers its tenants; told back in StoreOptions'
  // on_block_event, and held to StoreOptions::tenant_memory_bytes.
  uint16_t tenant = 0;
};

struct BlockInfo {
  BlockKey key;
  Tier tier = Tier::kHost;
  uint32_t size = 0;
  uint64_t checksum = 0;
  // Byte offset in the host arena (host tier) or the HBM arena (HBM tier).
  uint64_t location = 0;
  // Unique to this placement of the block: a new one whenever it is stored, moved or promoted,
  // so a remote reader can tell that a place was reused (see FirstChanged).
  uint32_t generation = 0;
};

struct LookupResult {
  size_t matched = 0;       // leading blocks of the chain that are present
  std::vector<Tier> tiers;  // tier of each matched block
};

struct LeaseGrant {
  uint64_t id = 0;
  int64_t expires_at_us = 0;      // on the store's clock
  std::vector<BlockInfo> blocks;  // in the order asked for
  uint32_t promoted = 0;          // blocks brought up from NVMe for this lease
};

struct TierStats {
  bool present = false;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;  // payload bytes resident (allocator chunks for host and HBM)
  uint64_t blocks = 0;
  uint64_t hits = 0;         // blocks a Get read from this tier
  uint64_t lookup_hits = 0;  // blocks a Lookup found in this tier
  uint64_t lease_hits = 0;   // blocks a Lease found in this tier (NVMe: brought up for it)
  uint64_t evictions = 0;    // blocks dropped out of the store from this tier
  uint64_t evicted_bytes = 0;
  uint64_t demotions = 0;  // blocks moved one tier down from this tier (HBM -> host -> NVMe)
  uint64_t demoted_bytes = 0;
};

struct StoreStats {
  TierStats tiers[kNumTiers];
  uint64_t gets = 0, get_misses = 0;
  uint64_t lookups = 0, lookup_blocks_hit = 0, lookup_blocks_missed = 0;
  uint64_t puts = 0;
  uint64_t puts_noop = 0;     // puts whose block was already committed (PutResult::kPresent)
  uint64_t puts_aborted = 0;  // reservations given up before their commit, or failing it
  uint64_t evictions = 0;     // blocks dropped from the store by capacity pressure
  uint64_t demotions = 0;     // blocks moved one tier down
  uint64_t promotions = 0;    // NVMe -> host
  uint64_t promoted_bytes = 0;
  uint64_t lease_misses = 0;  // Leases refused for an absent block (a Lease stops at the first)
  // Puts and promotions that found their tier full with no demotion under way, and evicted a
  // block themselves instead of taking the mover's reserve.
  uint64_t sync_evictions = 0;
  // Blocks a put moved down (or out) to keep its tenant within StoreOptions::tenant_memory_bytes.
  uint64_t quota_evictions = 0;
  uint64_t nvme_admission_rejections = 0;
  uint64_t nvme_bytes_written = 0;
  uint64_t nvme_write_errors = 0;
  uint64_t checksum_failures = 0;
  uint64_t leases_active = 0, leases_granted = 0, leases_expired = 0;
  uint64_t leased_bytes = 0;
  uint64_t leased_bytes_limit = 0;  // StoreOptions::max_leased_bytes as resolved
  uint64_t orphan_blocks = 0;     // present blocks whose parent is not
  uint64_t index_bytes = 0;       // RAM of the index and chain structures
  uint64_t nvme_index_bytes = 0;  // RAM RocksDB holds for its table indexes and filters
  // The flash tier's own counts (FlashStats): writes refused on a nearly full disk, compactions,
  // and what its recovery found at Open (damaged records, lost blocks, damaged metadata).
  uint64_t nvme_disk_full_rejections = 0;
  uint64_t nvme_compactions = 0;
  uint64_t nvme_bad_records = 0;
  uint64_t nvme_lost_blocks = 0;
  bool nvme_metadata_recovered_with_loss = false;
  bool nvme_damaged_tier_moved_aside = false;
  // The host arena is on reserved 2 MiB pages (MAP_HUGETLB), and locked in RAM (mlock).
  bool host_hugetlb = false;
  bool host_locked = false;
};

class BlockStore {
 public:
  class PutHandle;

  // Opens the tiers and, when an NVMe directory holds blocks from an earlier run, indexes them.
  // INVALID_ARGUMENT naming the field for bad options; UNAVAILABLE when the NVMe directory cannot
  // be used.
  static absl::StatusOr<std::unique_ptr<BlockStore>> Open(const StoreOptions& options);
  ~BlockStore();
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  // Phase one of a put: validates and reserves `size` bytes in the fastest tier. `parent` is the
  // previous block's key, or a zero key for the first block of a chain. INVALID_ARGUMENT for a zero
  // key, a key equal to its parent, size 0, size > max_block_bytes, a size that does not match
  // options.layout; FAILED_PRECONDITION for a durable put without an NVMe tier; RESOURCE_EXHAUSTED
  // when the tier is full of blocks that cannot be evicted (leased or in flight).
  absl::StatusOr<PutHandle> BeginPut(const BlockKey& key, const BlockKey& parent, size_t size,
                                     const PutOptions& options = {});
  // BeginPut + write + Commit, for callers that need not know whether the block was present.
  absl::Status Put(const BlockKey& key, const BlockKey& parent, std::span<const uint8_t> data,
                   const PutOptions& options = {});

  // Copies the block into `out` (at least its size) and returns its size, after verifying its
  // checksum. NOT_FOUND if absent; INVALID_ARGUMENT if `out` is too small; DATA_LOSS if corrupt
  // (the block is then dropped).
  absl::StatusOr<size_t> Get(const BlockKey& key, std::span<uint8_t> out);
  absl::StatusOr<std::vector<uint8_t>> Get(const BlockKey& key);

  // Size, tier and checksum of a present block, without reading it. NOT_FOUND if absent.
  absl::StatusOr<BlockInfo> Stat(const BlockKey& key) const;

  // Zero-copy reads of host-tier blocks: pins the block (it is not moved, evicted or freed until
  // UnpinHostBlock) and returns where its bytes are. Counts as a Get (recency, hit statistics);
  // the caller verifies `checksum` before using the bytes and, on a mismatch, calls Get (which
  // drops the block). NOT_FOUND if absent; FAILED_PRECONDITION if the block is not in host RAM
  // (use Get, which also promotes it).
  struct PinnedBlock {
    const uint8_t* data = nullptr;
    uint32_t size = 0;
    uint64_t checksum = 0;
    uint32_t handle = 0;
  };
  absl::StatusOr<PinnedBlock> PinHostBlock(const BlockKey& key);
  // Pins the block placement that a lease found (`seen`: key, location and generation of a
  // host-tier block), without counting a read: kvtierd's served reads hold the blocks they send
  // from in place with it, even past the lease's end. FAILED_PRECONDITION when the key's block
  // is no longer that placement (moved, replaced); NOT_FOUND when it is gone.
  absl::StatusOr<PinnedBlock> PinHostPlacement(const BlockInfo& seen);
  // REQUIRES: `pinned` came from PinHostBlock or PinHostPlacement and is unpinned once. Any
  // thread.
  void UnpinHostBlock(const PinnedBlock& pinned);

  // How many leading blocks of `chain` are present, and the tier of each.
  LookupResult Lookup(std::span<const BlockKey> chain) const;
  // Lookup of one piece of a chain, not counted in stats(): for a caller that looks a long chain
  // up in pieces (on several threads) and then counts it once with CountLookup (`found`: the
  // whole chain's result).
  LookupResult LookupPiece(std::span<const BlockKey> piece) const;
  void CountLookup(size_t blocks, const LookupResult& found) const;
  // Counts a Get of an absent block, for a caller that found it absent with Stat.
  void CountGetMiss() const;

  // Removes a block from every tier before it returns, from NVMe durably: a deleted key never
  // comes back after a crash, even one the store had evicted before the Delete. NOT_FOUND if
  // absent; FAILED_PRECONDITION if leased; the flash tier's error if its record could not be
  // deleted (the block is gone from memory either way).
  absl::Status Delete(const BlockKey& key);

  // Pins `keys` for ttl_us (0: the default TTL); NVMe blocks are first promoted to host.
  // NOT_FOUND names the first missing key; RESOURCE_EXHAUSTED when the leased-bytes cap would be
  // passed; INVALID_ARGUMENT for an empty, oversized or duplicated key list or a TTL over the max.
  absl::StatusOr<LeaseGrant> Lease(std::span<const BlockKey> keys, int64_t ttl_us = 0);
  // NOT_FOUND if the lease is unknown or already expired.
  absl::Status Release(uint64_t lease_id);
  // For blocks as a lease (or Stat) saw them: the index of the first that is no longer in the
  // same tier and place with the same generation (moved, evicted, dropped, stored again), or
  // seen.size() when none changed. A block that never left its place kept its bytes there, so
  // reads of it made meanwhile, under a lease or not, read the block.
  size_t FirstChanged(std::span<const BlockInfo> seen) const;
  // Ends leases whose TTL has passed; returns how many. Also runs on every put and lease.
  size_t ExpireLeases();

  // Flushes NVMe memtables to files (demoted blocks then survive a crash too).
  absl::Status Flush();
  // Waits until the mover has nothing left to do now (its reserve filled, flash deletes done):
  // for tests and benchmarks that need a quiet store.
  void WaitForMover();

  StoreStats Stats() const;
  // Walks every index structure and checks that they agree (eviction lists, chain links, space
  // accounting). O(blocks) under the store's lock: for tests and debugging, not for serving.
  absl::Status CheckConsistency() const;
  const StoreOptions& options() const;
  // The host arena, for registration with DMA engines and UCX (one-sided remote reads).
  uint8_t* host_arena_base() const;
  size_t host_arena_bytes() const;

 private:
  struct Impl;
  explicit BlockStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A reservation made by BeginPut: every put receives its bytes, so that its commit can verify
// them and decide with the block's state at that moment. Write the payload (all of it), then
// Commit. Destroying an uncommitted handle aborts the put and frees its space. Movable, not
// copyable; one thread at a time.
class BlockStore::PutHandle {
 public:
  PutHandle();
  PutHandle(PutHandle&& other) noexcept;
  PutHandle& operator=(PutHandle&& other) noexcept;
  ~PutHandle();

  size_t size() const { return size_; }
  // Copies `data` to byte `offset` of the block. INVALID_ARGUMENT past the end. Writes in order
  // from offset 0 are checksummed as they are copied (Commit then need not read them again).
  absl::Status Write(size_t offset, std::span<const uint8_t> data);
  // Direct pointer to the reserved host bytes, or nullptr when the block sits in HBM (use Write).
  // Bytes written through it are checksummed at Commit.
  uint8_t* host_data() const { return host_data_; }
  // Makes the block visible (see the class comment of BlockStore). DATA_LOSS if
  // PutOptions::expected_checksum does not match; the NVMe error for a durable put that could
  // not be written. The handle is spent either way.
  absl::StatusOr<PutResult> Commit();
  void Abort();

 private:
  friend class BlockStore;
  struct Hashing;
  BlockStore::Impl* store_ = nullptr;
  uint32_t handle_ = 0;
  size_t size_ = 0;
  uint8_t* host_data_ = nullptr;
  bool durable_ = false;
  std::optional<uint64_t> expected_checksum_;
  // The checksum of the bytes written in order so far, and how many; or none once a write came
  // out of order (or through host_data()).
  std::unique_ptr<Hashing> hashing_;
  size_t hashed_ = 0;
};

}  // namespace kvtier
