#pragma once
// NvmeTier: the flash tier (flash_tier.h). Payloads go to append-only blob files that kvtier
// writes itself with O_DIRECT, straight from the caller's (host arena) memory; RocksDB keeps keys
// and metadata (parent, size, checksum, blob file and offset) in SST files, and beside them an
// index of which keys each blob file holds, so a file is compacted without scanning the rest.
//
// Why not RocksDB's own blob files: they copy every payload into a memtable first, and Debian's
// RocksDB computes their CRC32c in software; together that held writes to a quarter of the disk's
// speed. Payloads here are checked end to end with their XXH3-64 instead.
//
// A write appends the payload (padded to 4 KiB), then commits its metadata; after a crash a block
// is therefore either wholly present or absent (an unreferenced payload is garbage that the next
// compaction of its file drops). Durable writes fsync the blob file (and, for a new file, its
// directory) and the metadata WAL before returning; cache writes do neither (Close() flushes
// them). Deletes always go to the WAL (synced when durable), so a delete never comes undone in a
// crash of the process. Maintain() compacts a sealed blob file that deletes left mostly dead: its
// live payloads are copied forward and the file is removed.
//
// A full disk: writes are refused with RESOURCE_EXHAUSTED while the free space is below what
// RocksDB needs to flush, recover and close (so it never meets ENOSPC itself), and blob files and
// RocksDB's memtable are sized after the tier, so deletes on a small disk free space soon.
// RocksDB's informational log goes to kvtier's log, not to a file on the same disk.
//
// Damage found at Open costs the damaged blocks, never the start: an unreadable record is skipped
// and deleted; a block whose blob file is missing or too short is dropped; a WAL cut short is
// recovered up to the cut; a metadata database RocksDB cannot open, or blob files without their
// metadata directory, are moved aside into `damaged-<time>/` (kept for inspection) and the tier
// starts empty. Each is logged once and counted in Stats(). File numbers that a record names are
// never reused.
//
// All file I/O goes through RocksDB's FileSystem (NvmeTierOptions::env), so tests can inject
// faults (and a small disk) into payload and metadata writes alike. Thread-safe.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/flash_tier.h"
#include "common/block_key.h"

namespace rocksdb {
class Env;
}  // namespace rocksdb

namespace kvtier {

struct NvmeTierOptions {
  std::string path;  // Required. Directory; created if missing.
  // Payload bytes the tier may hold (less where the disk has less room). Default: 64 GiB.
  uint64_t capacity_bytes = uint64_t{64} << 30;
  // Metadata memtable size; at most capacity_bytes / 64 (a small disk keeps a small one).
  // Default: 16 MiB.
  size_t write_buffer_bytes = size_t{16} << 20;
  // Size at which a blob file is sealed and a new one started. Default: 0, meaning
  // capacity_bytes / 16 within [4 MiB, 256 MiB].
  size_t blob_file_bytes = 0;
  bool direct_io = true;  // Default: true. O_DIRECT payload I/O: the host tier is the cache, the
                          // page cache would hold a second copy. Falls back when unsupported.
  rocksdb::Env* env = nullptr;  // Default: RocksDB's default Env. Tests inject faults here.
};

using NvmeTierStats = FlashStats;

class NvmeTier final : public FlashTier {
 public:
  // INVALID_ARGUMENT for an empty path; UNAVAILABLE (with the OS error) when the directory cannot
  // be created or written. Damaged contents are not an error (see above).
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Open(const NvmeTierOptions& options);
  ~NvmeTier() override;

  absl::Status Write(const BlockKey& key, const BlockMeta& meta, std::span<const uint8_t> data,
                     bool durable) override;
  // Fastest when `out` is 4 KiB aligned and a multiple of 4 KiB long (the read then lands in
  // `out` directly).
  absl::StatusOr<uint64_t> Read(const BlockKey& key, std::span<uint8_t> out,
                                std::span<uint8_t> copy = {}) override;
  absl::Status Delete(const BlockKey& key, bool durable) override;
  absl::Status ForEachMeta(
      const std::function<void(const BlockKey&, const BlockMeta&)>& fn) override;
  // Syncs the active blob file and flushes the metadata memtable to SST files.
  absl::Status Flush() override;
  bool Maintain() override;
  uint64_t CapacityBytes() const override;
  uint64_t IndexMemoryBytes() const override;
  FlashStats Stats() const override;

  bool direct_io() const;
  // Bytes left free on the disk for RocksDB: writes stop short of them.
  uint64_t kept_free_bytes() const;
  size_t blob_file_bytes() const;

 private:
  struct Impl;
  explicit NvmeTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
