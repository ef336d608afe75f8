#include "cache/nvme_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>

#include <malloc.h>

#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "spdlog/spdlog.h"

namespace kvtier {
namespace {

constexpr uint8_t kMetaVersion = 1;
constexpr size_t kMetaBytes = 1 + 16 + 8 + 4;

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("NVMe tier: ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace) {
    return absl::ResourceExhaustedError(msg);
  }
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  // I/O errors, busy, shutdown in progress: the caller may retry.
  return absl::UnavailableError(msg);
}

void PutLe(uint64_t v, int bytes, char* out) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
uint64_t GetLe(const char* in, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

std::string EncodeMeta(const BlockMeta& m) {
  std::string out(kMetaBytes, '\0');
  out[0] = static_cast<char>(kMetaVersion);
  m.parent.ToBytes(reinterpret_cast<uint8_t*>(out.data() + 1));
  PutLe(m.checksum, 8, out.data() + 17);
  PutLe(m.size, 4, out.data() + 25);
  return out;
}

absl::StatusOr<BlockMeta> DecodeMeta(const rocksdb::Slice& s) {
  if (s.size() != kMetaBytes || static_cast<uint8_t>(s[0]) != kMetaVersion) {
    return absl::DataLossError("NVMe tier: unreadable block metadata");
  }
  BlockMeta m;
  m.parent = BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(s.data() + 1));
  m.checksum = GetLe(s.data() + 17, 8);
  m.size = static_cast<uint32_t>(GetLe(s.data() + 25, 4));
  return m;
}

rocksdb::Slice KeySlice(const uint8_t (&buf)[16]) {
  return rocksdb::Slice(reinterpret_cast<const char*>(buf), 16);
}

}  // namespace

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Open(const NvmeTierOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("nvme.path: must be set");
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("nvme.path: cannot create '", options.path, "': ", ec.message()));
  }

  // With direct I/O RocksDB reads every blob into a freshly allocated aligned buffer. Under glibc's
  // default mmap threshold each 1 MiB buffer is a new mapping whose page faults cost as much as the
  // read itself; keep such buffers on the heap instead (process-wide, idempotent).
  static const bool malloc_tuned = [] {
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    return true;
  }();
  (void)malloc_tuned;

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.bytes_per_sync = 8 << 20;
  if (options.env != nullptr) db_options.env = options.env;

  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.compression = rocksdb::kNoCompression;
  meta_options.write_buffer_size = 8 << 20;

  rocksdb::ColumnFamilyOptions block_options;
  block_options.compression = rocksdb::kNoCompression;  // KV payloads do not compress
  block_options.write_buffer_size = options.write_buffer_bytes;
  block_options.max_write_buffer_number = 4;
  block_options.enable_blob_files = true;
  block_options.min_blob_size = 0;
  block_options.blob_file_size = options.blob_file_bytes;
  block_options.blob_compression_type = rocksdb::kNoCompression;
  block_options.enable_blob_garbage_collection = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"meta", meta_options},
      {"blocks", block_options}};

  std::unique_ptr<NvmeTier> tier(new NvmeTier());
  rocksdb::Status s;
  for (bool direct : {options.direct_io, false}) {
    db_options.use_direct_reads = direct;
    db_options.use_direct_io_for_flush_and_compaction = direct;
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    s = rocksdb::DB::Open(db_options, options.path, families, &handles, &db);
    if (s.ok()) {
      tier->db_.reset(db);
      // handles[0] is the default family; RocksDB owns it, and it stays unused.
      tier->meta_cf_ = handles[1];
      tier->blocks_cf_ = handles[2];
      tier->direct_io_ = direct;
      db->DestroyColumnFamilyHandle(handles[0]);
      break;
    }
    if (!direct || !s.IsInvalidArgument()) break;
    spdlog::warn("nvme: direct I/O not supported under {} ({}); using buffered I/O",
                 options.path, s.ToString());
  }
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("nvme.path: cannot open RocksDB in '", options.path, "': ", s.ToString()));
  }
  return tier;
}

NvmeTier::~NvmeTier() {
  if (db_ == nullptr) return;
  rocksdb::Status s = db_->Flush(rocksdb::FlushOptions(), {meta_cf_, blocks_cf_});
  if (!s.ok()) spdlog::warn("nvme: flush at close failed: {}", s.ToString());
  db_->DestroyColumnFamilyHandle(meta_cf_);
  db_->DestroyColumnFamilyHandle(blocks_cf_);
  s = db_->Close();
  if (!s.ok()) spdlog::warn("nvme: close failed: {}", s.ToString());
}

absl::Status NvmeTier::Write(const BlockKey& key, const BlockMeta& meta,
                             std::span<const uint8_t> data, bool durable) {
  uint8_t k[16];
  key.ToBytes(k);
  rocksdb::WriteBatch batch(kMetaBytes + data.size() + 64);
  rocksdb::Status s = batch.Put(meta_cf_, KeySlice(k), EncodeMeta(meta));
  if (s.ok()) {
    s = batch.Put(blocks_cf_, KeySlice(k),
                  rocksdb::Slice(reinterpret_cast<const char*>(data.data()), data.size()));
  }
  if (!s.ok()) return FromRocks(s, "write batch");
  rocksdb::WriteOptions wo;
  wo.sync = durable;
  wo.disableWAL = !durable;
  return FromRocks(db_->Write(wo, &batch), absl::StrCat("write ", key.Hex()));
}

absl::StatusOr<uint64_t> NvmeTier::Read(const BlockKey& key, std::span<uint8_t> out) {
  uint8_t k[16];
  key.ToBytes(k);
  rocksdb::PinnableSlice value;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  // The caller verifies the payload's XXH3-64 end to end; RocksDB's own CRC over the same bytes
  // would only repeat that check at a third of the speed.
  ro.verify_checksums = false;
  rocksdb::Status s = db_->Get(ro, blocks_cf_, KeySlice(k), &value);
  if (!s.ok()) return FromRocks(s, absl::StrCat("read ", key.Hex()));
  if (value.size() != out.size()) {
    return absl::DataLossError(absl::StrCat("NVMe tier: block ", key.Hex(), " holds ",
                                            value.size(), " bytes, expected ", out.size()));
  }
  return CopyWithChecksum(out.data(), value.data(), value.size());
}

absl::Status NvmeTier::Delete(const BlockKey& key, bool durable) {
  uint8_t k[16];
  key.ToBytes(k);
  rocksdb::WriteBatch batch;
  rocksdb::Status s = batch.Delete(meta_cf_, KeySlice(k));
  if (s.ok()) s = batch.Delete(blocks_cf_, KeySlice(k));
  if (!s.ok()) return FromRocks(s, "delete batch");
  rocksdb::WriteOptions wo;
  wo.sync = durable;
  wo.disableWAL = !durable;
  return FromRocks(db_->Write(wo, &batch), absl::StrCat("delete ", key.Hex()));
}

absl::Status NvmeTier::ForEachMeta(
    const std::function<void(const BlockKey&, const BlockMeta&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 16) return absl::DataLossError("NVMe tier: malformed key in meta");
    auto meta = DecodeMeta(it->value());
    if (!meta.ok()) return meta.status();
    fn(BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(it->key().data())), *meta);
  }
  return FromRocks(it->status(), "scan meta");
}

absl::Status NvmeTier::Flush() {
  return FromRocks(db_->Flush(rocksdb::FlushOptions(), {meta_cf_, blocks_cf_}), "flush");
}

uint64_t NvmeTier::TableReaderMemoryBytes() const {
  uint64_t total = 0, v = 0;
  for (auto* cf : {meta_cf_, blocks_cf_}) {
    if (db_->GetIntProperty(cf, "rocksdb.estimate-table-readers-mem", &v)) total += v;
  }
  return total;
}

}  // namespace kvtier
