#pragma once
// Options of the tiered block store. Plain struct: every field says its default and meaning;
// Validate() checks them once, at Open, and names the field it rejects.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/device_arena.h"
#include "cache/flash_admission.h"
#include "common/block_key.h"
#include "common/clock.h"
#include "common/tier.h"

namespace rocksdb {
class Env;
}

namespace kvtier {

// A block that became visible (stored), left the store, or moved between tiers while staying
// visible, for StoreOptions::on_block_event.
struct BlockEvent {
  BlockKey key;
  uint16_t tenant = 0;  // PutOptions::tenant of its put (0 for blocks recovered from NVMe)
  uint32_t size = 0;
  bool stored = false;  // true for a store and for a move
  Tier tier = Tier::kHost;  // where it was stored, left from, or moved to
  // Set for a move between tiers (demotion, promotion, a re-put into another tier): the block
  // left *moved_from for `tier` and was visible throughout. Consumers that count blocks in the
  // store, not per tier, skip these.
  std::optional<Tier> moved_from;
  BlockKey parent;  // its parent's key (zero: none), as its put named it
};

struct StoreOptions {
  // Host tier (pinned RAM).
  size_t host_bytes = size_t{1} << 30;  // Default: 1 GiB. Size of the host arena.
  bool host_hugepages = true;           // Default: true. Back the arena with 2 MiB pages.
  bool host_lock = true;                // Default: true. mlock the arena (warns if not permitted).
  // Default: none. Where the arena's memory comes from, when not from an anonymous mapping
  // (HostArenaOptions::provider): kvtierd lets its UCX data plane allocate it.
  std::function<absl::StatusOr<uint8_t*>(size_t bytes)> host_memory;
  // Default: none. Called when a block becomes visible (stored: its put committed) and when it
  // leaves the store (evicted from the last tier, deleted, dropped as corrupt), with the store's
  // policy lock held: it must be quick and must not call the store. A block replaced by a re-put
  // of its key stays visible and is not reported as stored again (a move, if the new copy is in
  // another tier). Moves between tiers are reported with BlockEvent::moved_from set. kvtierd queues these for
  // CacheService.WatchBlocks (the router's cache-aware index) and per-tenant usage.
  std::function<void(const BlockEvent& event)> on_block_event;
  // Largest block accepted; also the slab size of the tier allocators. Default: 8 MiB.
  size_t max_block_bytes = size_t{8} << 20;

  // HBM tier (one GPU). Used only where this build has CUDA and the machine has a GPU.
  size_t hbm_bytes = 0;  // Default: 0 (off). Bytes of device memory for blocks.
  int hbm_device = 0;    // Default: 0. CUDA device ordinal.
  // Default: none, meaning OpenDeviceArena (CUDA). Tests pass NewHostMemoryDeviceArena to run
  // the HBM tier's paths without a GPU.
  DeviceArenaFactory device_arena;

  // The background mover keeps this much free in a memory tier (for blocks of the size last
  // put there) by demoting blocks ahead of need, so puts and promotions find room without
  // evicting for themselves. -1 (the default): 1/32 of the tier, at least 2 blocks, at most
  // 1/8 of the tier and 256 MiB, and none in a host tier without an NVMe tier below (its victims
  // are dropped, which needs no I/O); 0: no reserve (each put evicts what it needs).
  int64_t host_reserve_bytes = -1;
  int64_t hbm_reserve_bytes = -1;
  // Most bytes of one tenant's blocks (PutOptions::tenant) in each memory tier, so one tenant
  // cannot take a whole tier. A put that would take its tenant past it first moves that
  // tenant's own least valuable blocks a tier down (or out), as eviction would; RESOURCE_EXHAUSTED
  // when none of them can move now (all leased or being read). Promotions and demotions may take
  // a tenant past it for a while; its next put there makes room. Default: 0 (no cap).
  uint64_t tenant_memory_bytes = 0;
  // Threads of the mover: demotions, flash deletes and compaction, lease expiry.
  int mover_threads = 2;  // Default: 2.

  // NVMe tier (O_DIRECT blob files for payloads, RocksDB for keys and metadata).
  std::string nvme_path;                     // Default: empty (no NVMe tier). Data directory.
  uint64_t nvme_bytes = uint64_t{64} << 30;  // Default: 64 GiB. Payload bytes kept on flash.
  NvmeAdmission nvme_admission = NvmeAdmission::kSeenTwice;  // Default: seen twice.
  // Flash write budget for demotions, bytes per second (durable puts are not limited).
  uint64_t nvme_write_bytes_per_s = 0;  // Default: 0 (unlimited).
  bool nvme_direct_io = true;           // Default: true. See NvmeTierOptions::direct_io.
  size_t nvme_write_buffer_bytes = size_t{16} << 20;  // Default: 16 MiB. Metadata memtable.
  rocksdb::Env* nvme_env = nullptr;  // Default: RocksDB's Env. Tests inject faults here.

  // Leases.
  int64_t lease_ttl_us = 30'000'000;       // Default: 30 s. TTL when a Lease names none.
  int64_t max_lease_ttl_us = 300'000'000;  // Default: 5 min. Longest TTL a caller may ask for.
  // Cap on bytes pinned by leases at once, each leased block counted once however many leases
  // hold it. Default: 0, meaning half of host_bytes.
  uint64_t max_leased_bytes = 0;
  size_t max_lease_blocks = 65'536;  // Default: 65,536. Blocks in one lease.

  size_t index_shards = 64;  // Default: 64. Lock shards of the key index (power of two).
  Clock* clock = nullptr;    // Default: SystemClock::Default(). Not owned.

  absl::Status Validate() const;
};

}  // namespace kvtier
