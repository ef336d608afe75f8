#pragma once
// FlashTier: what the block store needs of its flash tier (nvme_tier.h is the implementation; a
// test or benchmark may wrap one to slow or fail it). Blocks are stored whole under their key,
// with the metadata recovery needs (parent, checksum, size); a write of a stored key replaces it.
//
// The store calls Write, Read and Delete outside its own locks, and never for one key from two
// threads at once; different keys may be written, read and deleted concurrently. Maintain does the
// tier's background work (compaction of blob files that deletes left mostly dead) and is called by
// the store's mover, never under a store lock.

#include <cstdint>
#include <functional>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/block_key.h"

namespace kvtier {

struct BlockMeta {
  BlockKey parent;        // zero for the first block of a chain
  uint64_t checksum = 0;  // XXH3-64 of the payload
  uint32_t size = 0;      // payload bytes
};

struct FlashStats {
  uint64_t blob_files = 0;
  uint64_t file_bytes = 0;            // bytes of all blob files on disk
  uint64_t live_bytes = 0;            // of which referenced by a block (4 KiB padded)
  uint64_t compactions = 0;           // blob files rewritten and removed
  uint64_t bytes_moved = 0;           // live payload bytes copied forward by compactions
  uint64_t disk_full_rejections = 0;  // writes refused because the disk was nearly full
  // What recovery found at Open, once per process: metadata records that could not be read
  // (skipped and deleted), blocks whose payload was missing or cut short (dropped), and whether
  // the metadata was damaged (a WAL cut short: recovered up to the damage; a database RocksDB
  // could not open, or a missing metadata directory beside payload files: moved aside, started
  // empty).
  uint64_t bad_records = 0;
  uint64_t lost_blocks = 0;
  bool metadata_recovered_with_loss = false;
  bool damaged_tier_moved_aside = false;
};

class FlashTier {
 public:
  virtual ~FlashTier() = default;

  // Stores the payload and its metadata: readers see all of it or none. durable: on stable
  // storage (fsynced) before returning. meta.size must be data.size(). RESOURCE_EXHAUSTED when the
  // disk is (nearly) full; UNAVAILABLE for other I/O errors (retryable).
  virtual absl::Status Write(const BlockKey& key, const BlockMeta& meta,
                             std::span<const uint8_t> data, bool durable) = 0;
  // Reads the payload into `out` and returns the checksum of what was read. NOT_FOUND if absent;
  // DATA_LOSS if the stored payload's size is not out.size(), or its file is missing or short.
  // `copy`, when not empty, receives the payload too, hashed as it is copied (a promotion's read
  // lands in host memory and in the reader's buffer); INVALID_ARGUMENT unless it is as long as
  // `out`.
  virtual absl::StatusOr<uint64_t> Read(const BlockKey& key, std::span<uint8_t> out,
                                        std::span<uint8_t> copy = {}) = 0;
  // NOT_FOUND if absent. Every delete survives a crash of the process; durable: also of the
  // machine, and so do the deletes before it (of this key too, when it finds the key absent).
  virtual absl::Status Delete(const BlockKey& key, bool durable) = 0;
  // Calls fn for every stored block's metadata (in key order). Stops at the first error.
  virtual absl::Status ForEachMeta(
      const std::function<void(const BlockKey&, const BlockMeta&)>& fn) = 0;
  // Makes every write so far survive a crash.
  virtual absl::Status Flush() = 0;
  // One step of background work, if any is due; true when it did some (call again).
  virtual bool Maintain() = 0;
  // Payload bytes the tier may hold: its configured size, or less where the disk has less room.
  virtual uint64_t CapacityBytes() const = 0;
  // RAM the tier holds for its indexes (RocksDB's table readers).
  virtual uint64_t IndexMemoryBytes() const = 0;
  virtual FlashStats Stats() const = 0;
};

}  // namespace kvtier
