#pragma once
// BlockStore: kvtier's tiered KV block cache on one node (DESIGN.md, "Cache daemon").
//
// Blocks are immutable byte strings named by 128-bit chained prefix keys (common/block_key.h).
// Each lives in exactly one of HBM, host RAM or NVMe at a time (a host or HBM block may also keep
// a clean copy on NVMe). One index maps key -> entry (tier, location, size, XXH3-64 checksum,
// parent, leases, recency).
//
// Puts are two-phase: BeginPut reserves space, the caller writes, Commit makes the block visible
// only if complete (and, for PutOptions::durable, only after it is on NVMe and fsynced). A
// repeated put of a present key, or of a key whose put is in flight, is a no-op. Every read
// verifies the checksum; a corrupt block is dropped, counted and reported as DATA_LOSS.
//
// Eviction demotes HBM -> host -> NVMe -> gone, in this order within a tier: blocks whose parent
// is gone (they can never be a prefix hit), then chain tails (blocks with no cached child), then
// the rest; least recently used first within each class. An NVMe hit promotes the block to host.
// Flash admission is gated (StoreOptions::nvme_admission, nvme_write_bytes_per_s).
//
// Leases pin blocks in host or HBM memory for a TTL (remote readers copy them meanwhile); a leased
// block is never evicted, moved or freed, and every lease expires.
//
// Thread-safe. Reads (Get, Lookup) take only a shard lock of the index plus a short critical
// section to record recency; payload copies run outside every lock.

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

namespace kvtier {

enum class Tier : uint8_t { kHbm = 0, kHost = 1, kNvme = 2 };
inline constexpr int kNumTiers = 3;
const char* TierName(Tier tier);

struct PutOptions {
  // When set, the block's size must equal layout->BytesPerBlock().
  const KvLayout* layout = nullptr;
  // Acknowledge only once the block is on NVMe and fsynced: it survives a crash or kill -9.
  bool durable = false;
  // When set, Commit fails with DATA_LOSS unless the written bytes have this XXH3-64.
  std::optional<uint64_t> expected_checksum;
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
  int64_t expires_at_us = 0;     // on the store's clock
  std::vector<BlockInfo> blocks;  // in the order asked for
  uint32_t promoted = 0;          // blocks brought up from NVMe for this lease
};

struct TierStats {
  bool present = false;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;  // payload bytes resident (allocator chunks for host and HBM)
  uint64_t blocks = 0;
  uint64_t hits = 0;        // Get served from this tier
};

struct StoreStats {
  TierStats tiers[kNumTiers];
  uint64_t gets = 0, get_misses = 0;
  uint64_t lookups = 0, lookup_blocks_hit = 0, lookup_blocks_missed = 0;
  uint64_t puts = 0, puts_noop = 0, puts_aborted = 0;
  uint64_t evictions = 0;        // blocks dropped from the store by capacity pressure
  uint64_t demotions = 0;        // blocks moved one tier down
  uint64_t promotions = 0;       // NVMe -> host
  uint64_t nvme_admission_rejections = 0;
  uint64_t nvme_bytes_written = 0;
  uint64_t nvme_write_errors = 0;
  uint64_t checksum_failures = 0;
  uint64_t leases_active = 0, leases_granted = 0, leases_expired = 0;
  uint64_t leased_bytes = 0;
  uint64_t orphan_blocks = 0;  // present blocks whose parent is not
  uint64_t index_bytes = 0;    // RAM of the index and chain structures
  uint64_t nvme_index_bytes = 0;  // RAM RocksDB holds for its table indexes and filters
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
  // BeginPut + write + Commit.
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
  // REQUIRES: `pinned` came from PinHostBlock and is unpinned once. Any thread.
  void UnpinHostBlock(const PinnedBlock& pinned);

  // How many leading blocks of `chain` are present, and the tier of each.
  LookupResult Lookup(std::span<const BlockKey> chain) const;
  // Lookup of one piece of a chain, not counted in stats(): for a caller that looks a long chain
  // up in pieces (on several threads) and then counts it once with CountLookup.
  LookupResult LookupPiece(std::span<const BlockKey> piece) const;
  void CountLookup(size_t blocks, size_t matched) const;

  // Removes a block from every tier (durably from NVMe). NOT_FOUND if absent;
  // FAILED_PRECONDITION if leased.
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

// A reservation made by BeginPut. Write the payload (all of it), then Commit. Destroying an
// uncommitted handle aborts the put and frees its space. Movable, not copyable; one thread at a time.
class BlockStore::PutHandle {
 public:
  PutHandle() = default;
  PutHandle(PutHandle&& other) noexcept;
  PutHandle& operator=(PutHandle&& other) noexcept;
  ~PutHandle();

  // True when the key was already present or being put: writes are ignored, Commit is a no-op.
  bool noop() const { return noop_; }
  size_t size() const { return size_; }
  // Copies `data` to byte `offset` of the block. INVALID_ARGUMENT past the end.
  absl::Status Write(size_t offset, std::span<const uint8_t> data);
  // Direct pointer to the reserved host bytes, or nullptr when the block sits in HBM (use Write).
  uint8_t* host_data() const { return host_data_; }
  // Makes the block visible. DATA_LOSS if PutOptions::expected_checksum does not match; the
  // NVMe error for a durable put that could not be written. The handle is spent either way.
  absl::Status Commit();
  void Abort();

 private:
  friend class BlockStore;
  BlockStore::Impl* store_ = nullptr;
  uint32_t handle_ = 0;
  size_t size_ = 0;
  uint8_t* host_data_ = nullptr;
  bool noop_ = false;
  bool durable_ = false;
  std::optional<uint64_t> expected_checksum_;
};

}  // namespace kvtier
