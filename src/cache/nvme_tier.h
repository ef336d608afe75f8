#pragma once
// NvmeTier: the flash tier, on RocksDB with integrated blob files. Two column families:
//   "meta"   key -> BlockMeta (parent key, size, checksum): small, in SST files, read at start to
//            rebuild the index without touching payloads;
//   "blocks" key -> payload bytes, stored in blob files (one sequential write per block, no
//            compaction rewrites of payloads).
// Meta and payload of a block are written in one WriteBatch, so after any crash a block is either
// wholly present or absent; readers verify the payload checksum on top of that.
// Writes are either durable (WAL, fsync before returning) or cache writes (no WAL: cheap, lost on
// a crash unless flushed; Close() flushes them). Thread-safe.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/block_key.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class Env;
}  // namespace rocksdb

namespace kvtier {

struct NvmeTierOptions {
  std::string path;                             // Required. Directory; created if missing.
  size_t write_buffer_bytes = size_t{64} << 20; // Default: 64 MiB. Memtable size before a flush.
  size_t blob_file_bytes = size_t{256} << 20;   // Default: 256 MiB. Target size of a blob file.
  bool direct_io = true;  // Default: true. O_DIRECT reads and flushes: the host tier is the cache,
                          // the page cache would hold a second copy. Falls back when unsupported.
  rocksdb::Env* env = nullptr;  // Default: RocksDB's default Env. Tests inject faults here.
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

  // Writes meta and payload atomically. durable: WAL + fsync before returning.
  // RESOURCE_EXHAUSTED when the disk is full; UNAVAILABLE for other I/O errors (retryable).
  absl::Status Write(const BlockKey& key, const BlockMeta& meta, std::span<const uint8_t> data,
                     bool durable);
  // Reads the payload into `out` and returns the checksum of what was read. NOT_FOUND if absent;
  // DATA_LOSS if the stored payload's size is not out.size().
  absl::StatusOr<uint64_t> Read(const BlockKey& key, std::span<uint8_t> out);
  absl::Status Delete(const BlockKey& key, bool durable);
  // Calls fn for every stored block's meta (in key order). Stops at the first error.
  absl::Status ForEachMeta(const std::function<void(const BlockKey&, const BlockMeta&)>& fn);
  // Flushes memtables to SST and blob files and waits.
  absl::Status Flush();
  // RocksDB memory for index and filter blocks of open table files.
  uint64_t TableReaderMemoryBytes() const;
  bool direct_io() const { return direct_io_; }

 private:
  NvmeTier() = default;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* meta_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* blocks_cf_ = nullptr;
  bool direct_io_ = false;
};

}  // namespace kvtier
