#pragma once
// NvmeTier: the flash tier. Payloads go to append-only blob files that kvtier writes itself with
// O_DIRECT, straight from the caller's (host arena) memory; RocksDB keeps keys and metadata
// (parent, size, checksum, blob file and offset) in SST files.
//
// Why not RocksDB's own blob files: they copy every payload into a memtable first, and Debian's
// RocksDB computes their CRC32c in software; together that held writes to a quarter of the disk's
// speed. Payloads here are checked end to end with their XXH3-64 instead.
//
// A write appends the payload (padded to 4 KiB), then commits its metadata; after a crash a block
// is therefore either wholly present or absent (an unreferenced payload is garbage that the next
// compaction of its file drops). Durable writes fsync the blob file and the metadata WAL before
// returning; cache writes do neither (Close() flushes them). When deletes leave a sealed blob
// file mostly dead, its live payloads are copied forward and the file is removed.
//
// All file I/O goes through RocksDB's FileSystem (NvmeTierOptions::env), so tests can inject
// faults into payload and metadata writes alike. Thread-safe.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/block_key.h"

namespace rocksdb {
class Env;
}  // namespace rocksdb

namespace kvtier {

struct NvmeTierOptions {
  std::string path;                             // Required. Directory; created if missing.
  size_t write_buffer_bytes = size_t{16} << 20; // Default: 16 MiB. Metadata memtable size.
  size_t blob_file_bytes = size_t{256} << 20;   // Default: 256 MiB. Size at which a blob file
                                                // is sealed and a new one started.
  bool direct_io = true;  // Default: true. O_DIRECT payload I/O: the host tier is the cache, the
                          // page cache would hold a second copy. Falls back when unsupported.
  rocksdb::Env* env = nullptr;  // Default: RocksDB's default Env. Tests inject faults here.
};

struct NvmeTierStats {
  uint64_t blob_files = 0;
  uint64_t file_bytes = 0;   // bytes of all blob files on disk
  uint64_t live_bytes = 0;   // of which referenced by a block (4 KiB padded)
  uint64_t compactions = 0;  // blob files rewritten and removed
  uint64_t bytes_moved = 0;  // live payload bytes copied forward by compactions
};

struct BlockMeta {
  BlockKey parent;        // zero for the first block of a chain
  uint64_t checksum = 0;  // XXH3-64 of the payload
  uint32_t size = 0;      // payload bytes
};

class NvmeTier {
 public:
  // INVALID_ARGUMENT for an empty path; UNAVAILABLE (with the OS error) when the directory cannot
  // be created or written.
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Open(const NvmeTierOptions& options);
  ~NvmeTier();

  // Appends the payload, then commits its metadata: readers see all of it or none. durable: the
  // blob file and the metadata WAL are fsynced before returning. meta.size must be data.size().
  // RESOURCE_EXHAUSTED when the disk is full; UNAVAILABLE for other I/O errors (retryable).
  absl::Status Write(const BlockKey& key, const BlockMeta& meta, std::span<const uint8_t> data,
                     bool durable);
  // Reads the payload into `out` and returns the checksum of what was read. NOT_FOUND if absent;
  // DATA_LOSS if the stored payload's size is not out.size(). Fastest when `out` is 4 KiB aligned
  // and a multiple of 4 KiB long (the read then lands in `out` directly).
  absl::StatusOr<uint64_t> Read(const BlockKey& key, std::span<uint8_t> out);
  absl::Status Delete(const BlockKey& key, bool durable);
  // Calls fn for every stored block's meta (in key order). Stops at the first error.
  absl::Status ForEachMeta(const std::function<void(const BlockKey&, const BlockMeta&)>& fn);
  // Syncs the active blob file and flushes the metadata memtable to SST files.
  absl::Status Flush();
  // RocksDB memory for index and filter blocks of open table files.
  uint64_t TableReaderMemoryBytes() const;
  NvmeTierStats Stats() const;
  bool direct_io() const { return direct_io_; }

 private:
  struct Impl;
  explicit NvmeTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  bool direct_io_ = false;
};

}  // namespace kvtier
