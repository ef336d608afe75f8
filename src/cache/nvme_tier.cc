#include "cache/nvme_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/mutex.h"
#include "common/checksum.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace kvtier {
namespace {

constexpr uint8_t kMetaVersion = 2;
constexpr size_t kMetaBytes = 1 + 16 + 8 + 4 + 4 + 8;
constexpr size_t kAlign = 4096;  // O_DIRECT granularity for payload offsets, lengths, buffers

uint64_t RoundUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
bool Aligned(const void* p, size_t n) {
  return reinterpret_cast<uintptr_t>(p) % kAlign == 0 && n % kAlign == 0;
}

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

// Where a payload sits, besides what BlockMeta says about it.
struct Location {
  uint32_t file = 0;
  uint64_t offset = 0;
};

std::string EncodeMeta(const BlockMeta& m, const Location& loc) {
  std::string out(kMetaBytes, '\0');
  out[0] = static_cast<char>(kMetaVersion);
  m.parent.ToBytes(reinterpret_cast<uint8_t*>(out.data() + 1));
  PutLe(m.checksum, 8, out.data() + 17);
  PutLe(m.size, 4, out.data() + 25);
  PutLe(loc.file, 4, out.data() + 29);
  PutLe(loc.offset, 8, out.data() + 33);
  return out;
}

absl::Status DecodeMeta(const rocksdb::Slice& s, BlockMeta* m, Location* loc) {
  if (s.size() != kMetaBytes || static_cast<uint8_t>(s[0]) != kMetaVersion) {
    return absl::DataLossError("NVMe tier: unreadable block metadata");
  }
  m->parent = BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(s.data() + 1));
  m->checksum = GetLe(s.data() + 17, 8);
  m->size = static_cast<uint32_t>(GetLe(s.data() + 25, 4));
  loc->file = static_cast<uint32_t>(GetLe(s.data() + 29, 4));
  loc->offset = GetLe(s.data() + 33, 8);
  return absl::OkStatus();
}

// A 4 KiB-aligned scratch buffer, one per thread, grown on demand.
uint8_t* Bounce(size_t n) {
  struct Buf {
    uint8_t* p = nullptr;
    size_t cap = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
  if (buf.cap < n) {
    std::free(buf.p);
    buf.p = static_cast<uint8_t*>(std::aligned_alloc(kAlign, RoundUp(n)));
    buf.cap = buf.p != nullptr ? RoundUp(n) : 0;
  }
  return buf.p;
}

}  // namespace

struct BlobFile {
  uint32_t number = 0;
  std::string path;
  std::unique_ptr<rocksdb::FSRandomAccessFile> reader;
  std::unique_ptr<rocksdb::FSWritableFile> writer;  // the active file only; guarded by write_mu
  uint64_t size = 0;  // bytes appended; guarded by Impl::mu
  uint64_t live = 0;  // bytes referenced by metadata; guarded by Impl::mu
};

struct NvmeTier::Impl {
  NvmeTierOptions options;
  std::shared_ptr<rocksdb::FileSystem> fs;
  std::unique_ptr<rocksdb::DB> db;
  std::string blob_dir;
  bool direct = false;

  // Serializes payload appends and every metadata mutation (writes, deletes, compactions), so a
  // compaction never races an update of the same key. Readers never take it.
  Mutex write_mu;
  std::shared_ptr<BlobFile> active ABSL_GUARDED_BY(write_mu);

  mutable Mutex mu;  // the file table and the counters
  absl::flat_hash_map<uint32_t, std::shared_ptr<BlobFile>> files ABSL_GUARDED_BY(mu);
  uint32_t next_number ABSL_GUARDED_BY(mu) = 1;
  NvmeTierStats stats ABSL_GUARDED_BY(mu);

  rocksdb::FileOptions FileOpts() const {
    rocksdb::FileOptions fo;
    fo.use_direct_reads = direct;
    fo.use_direct_writes = direct;
    return fo;
  }
  std::string PathOf(uint32_t number) const {
    return absl::StrFormat("%s/%08u.blob", blob_dir, number);
  }

  std::shared_ptr<BlobFile> FileOf(uint32_t number) const {
    MutexLock l(&mu);
    auto it = files.find(number);
    return it == files.end() ? nullptr : it->second;
  }

  absl::Status OpenReader(BlobFile* f) {
    return FromRocks(fs->NewRandomAccessFile(f->path, FileOpts(), &f->reader, nullptr),
                     absl::StrCat("open ", f->path));
  }

  // Starts a new active file, sealing the current one. REQUIRES write_mu.
  absl::Status Roll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    if (active != nullptr && active->writer != nullptr) {
      rocksdb::IOStatus s = active->writer->Sync(rocksdb::IOOptions(), nullptr);
      if (s.ok()) s = active->writer->Close(rocksdb::IOOptions(), nullptr);
      active->writer.reset();
      if (!s.ok()) spdlog::warn("nvme: sealing {}: {}", active->path, s.ToString());
    }
    active = nullptr;
    auto f = std::make_shared<BlobFile>();
    {
      MutexLock l(&mu);
      f->number = next_number++;
    }
    f->path = PathOf(f->number);
    KVTIER_RETURN_IF_ERROR(
        FromRocks(fs->NewWritableFile(f->path, FileOpts(), &f->writer, nullptr),
                  absl::StrCat("create ", f->path)));
    KVTIER_RETURN_IF_ERROR(OpenReader(f.get()));
    {
      MutexLock l(&mu);
      files[f->number] = f;
      ++stats.blob_files;
    }
    active = f;
    return absl::OkStatus();
  }

  // Appends a padded payload to the active file. REQUIRES write_mu; `data` aligned.
  absl::StatusOr<Location> Append(const uint8_t* data, size_t padded, bool sync)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    uint64_t size = 0;
    if (active != nullptr) {
      MutexLock l(&mu);
      size = active->size;
    }
    if (active == nullptr || size + padded > options.blob_file_bytes) {
      KVTIER_RETURN_IF_ERROR(Roll());
      size = 0;
    }
    rocksdb::IOStatus s = active->writer->Append(
        rocksdb::Slice(reinterpret_cast<const char*>(data), padded), rocksdb::IOOptions(),
        nullptr);
    if (s.ok() && sync) s = active->writer->Sync(rocksdb::IOOptions(), nullptr);
    if (!s.ok()) {
      // The file's tail is now unknown: start the next write in a fresh file.
      absl::Status st = FromRocks(s, absl::StrCat("append to ", active->path));
      active->writer.reset();
      active = nullptr;
      return st;
    }
    Location loc{active->number, size};
    MutexLock l(&mu);
    active->size += padded;
    stats.file_bytes += padded;
    return loc;
  }

  // Drops `bytes` of live data from file `number`; removes the file when nothing in it is live,
  // or compacts it when most of it is dead. REQUIRES write_mu.
  void Unreference(uint32_t number, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    std::shared_ptr<BlobFile> f;
    bool remove = false, compact = false;
    {
      MutexLock l(&mu);
      auto it = files.find(number);
      if (it == files.end()) return;
      f = it->second;
      f->live -= std::min(f->live, bytes);
      stats.live_bytes -= std::min(stats.live_bytes, bytes);
      const bool sealed = active == nullptr || active->number != number;
      remove = sealed && f->live == 0;
      compact = sealed && !remove && f->live * 2 < f->size &&
                stats.file_bytes - stats.live_bytes > options.blob_file_bytes;
    }
    if (remove) {
      RemoveFile(f);
    } else if (compact) {
      absl::Status st = Compact(f);
      if (!st.ok()) spdlog::warn("nvme: compaction of {} failed: {}", f->path, st.ToString());
    }
  }

  void RemoveFile(const std::shared_ptr<BlobFile>& f) {
    {
      MutexLock l(&mu);
      files.erase(f->number);
      stats.file_bytes -= std::min(stats.file_bytes, f->size);
      stats.live_bytes -= std::min(stats.live_bytes, f->live);
      --stats.blob_files;
    }
    // Readers holding the file keep reading it; the name goes now.
    rocksdb::IOStatus s = fs->DeleteFile(f->path, rocksdb::IOOptions(), nullptr);
    if (!s.ok()) spdlog::warn("nvme: removing {}: {}", f->path, s.ToString());
  }

  // Copies the live payloads of a sealed file to the active one, repoints their metadata, then
  // removes the file. REQUIRES write_mu.
  absl::Status Compact(const std::shared_ptr<BlobFile>& f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    rocksdb::WriteBatch batch;
    uint64_t moved = 0;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      BlockMeta m;
      Location loc;
      if (!DecodeMeta(it->value(), &m, &loc).ok() || loc.file != f->number) continue;
      const size_t padded = RoundUp(m.size);
      uint8_t* buf = Bounce(padded);
      if (buf == nullptr) return absl::ResourceExhaustedError("NVMe tier: out of memory");
      rocksdb::Slice got;
      KVTIER_RETURN_IF_ERROR(FromRocks(
          f->reader->Read(loc.offset, padded, rocksdb::IOOptions(), &got,
                          reinterpret_cast<char*>(buf), nullptr),
          absl::StrCat("compaction read of ", f->path)));
      if (got.size() != padded) return absl::DataLossError("NVMe tier: short blob read");
      if (got.data() != reinterpret_cast<const char*>(buf)) std::memmove(buf, got.data(), padded);
      KVTIER_ASSIGN_OR_RETURN(Location to, Append(buf, padded, /*sync=*/false));
      rocksdb::Status s = batch.Put(it->key(), EncodeMeta(m, to));
      if (!s.ok()) return FromRocks(s, "compaction batch");
      moved += padded;
      MutexLock l(&mu);
      files[to.file]->live += padded;
    }
    KVTIER_RETURN_IF_ERROR(FromRocks(it->status(), "compaction scan"));
    if (active != nullptr && active->writer != nullptr) {
      KVTIER_RETURN_IF_ERROR(
          FromRocks(active->writer->Sync(rocksdb::IOOptions(), nullptr), "compaction sync"));
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;  // the old file goes next: the new locations must be durable first
    KVTIER_RETURN_IF_ERROR(FromRocks(db->Write(wo, &batch), "compaction commit"));
    {
      MutexLock l(&mu);
      stats.live_bytes += moved;
      stats.bytes_moved += moved;
      ++stats.compactions;
    }
    RemoveFile(f);
    return absl::OkStatus();
  }
};

NvmeTier::NvmeTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Open(const NvmeTierOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("nvme.path: must be set");
  std::error_code ec;
  std::filesystem::create_directories(options.path + "/blobs", ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("nvme.path: cannot create '", options.path, "': ", ec.message()));
  }
  auto impl = std::make_unique<Impl>();
  Impl& t = *impl;
  t.options = options;
  t.fs = options.env != nullptr ? options.env->GetFileSystem() : rocksdb::FileSystem::Default();
  t.blob_dir = options.path + "/blobs";

  // Direct I/O where the file system has it (not on tmpfs, for one).
  t.direct = false;
  if (options.direct_io) {
    const std::string probe = t.blob_dir + "/.direct-io-probe";
    std::unique_ptr<rocksdb::FSWritableFile> f;
    rocksdb::FileOptions fo;
    fo.use_direct_writes = true;
    t.direct = t.fs->NewWritableFile(probe, fo, &f, nullptr).ok();
    f.reset();
    (void)t.fs->DeleteFile(probe, rocksdb::IOOptions(), nullptr);
    if (!t.direct) {
      spdlog::warn("nvme: direct I/O not supported under {}; using buffered I/O", options.path);
    }
  }

  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.max_background_jobs = 2;
  db_options.compression = rocksdb::kNoCompression;
  db_options.write_buffer_size = options.write_buffer_bytes;
  if (options.env != nullptr) db_options.env = options.env;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path + "/meta", &db);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("nvme.path: cannot open RocksDB in '", options.path, "/meta': ",
                     s.ToString()));
  }
  t.db.reset(db);

  // Live bytes per blob file, from the metadata.
  absl::flat_hash_map<uint32_t, uint64_t> live;
  {
    std::unique_ptr<rocksdb::Iterator> it(t.db->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      BlockMeta m;
      Location loc;
      if (DecodeMeta(it->value(), &m, &loc).ok()) live[loc.file] += RoundUp(m.size);
    }
    KVTIER_RETURN_IF_ERROR(FromRocks(it->status(), "scan metadata"));
  }
  std::vector<std::string> names;
  KVTIER_RETURN_IF_ERROR(FromRocks(
      t.fs->GetChildren(t.blob_dir, rocksdb::IOOptions(), &names, nullptr), "list blob files"));
  MutexLock l(&t.mu);
  for (const std::string& name : names) {
    uint32_t number = 0;
    if (name.size() != 13 || name.substr(8) != ".blob" ||
        !absl::SimpleAtoi(name.substr(0, 8), &number)) {
      continue;
    }
    t.next_number = std::max(t.next_number, number + 1);
    auto f = std::make_shared<BlobFile>();
    f->number = number;
    f->path = t.PathOf(number);
    if (!live.contains(number)) {  // nothing in it is referenced
      (void)t.fs->DeleteFile(f->path, rocksdb::IOOptions(), nullptr);
      continue;
    }
    uint64_t size = 0;
    KVTIER_RETURN_IF_ERROR(FromRocks(
        t.fs->GetFileSize(f->path, rocksdb::IOOptions(), &size, nullptr), "stat " + f->path));
    KVTIER_RETURN_IF_ERROR(t.OpenReader(f.get()));
    f->size = size;
    f->live = live[number];
    t.stats.file_bytes += size;
    t.stats.live_bytes += f->live;
    ++t.stats.blob_files;
    t.files[number] = std::move(f);
  }
  std::unique_ptr<NvmeTier> tier(new NvmeTier(std::move(impl)));
  tier->direct_io_ = tier->impl_->direct;
  return tier;
}

NvmeTier::~NvmeTier() {
  Impl& t = *impl_;
  {
    MutexLock l(&t.write_mu);
    if (t.active != nullptr && t.active->writer != nullptr) {
      rocksdb::IOStatus s = t.active->writer->Sync(rocksdb::IOOptions(), nullptr);
      if (s.ok()) s = t.active->writer->Close(rocksdb::IOOptions(), nullptr);
      if (!s.ok()) spdlog::warn("nvme: closing {}: {}", t.active->path, s.ToString());
    }
  }
  // Cache writes skipped the WAL: flush their metadata so a clean restart keeps them.
  rocksdb::Status s = t.db->Flush(rocksdb::FlushOptions());
  if (!s.ok()) spdlog::warn("nvme: flush at close failed: {}", s.ToString());
  s = t.db->Close();
  if (!s.ok()) spdlog::warn("nvme: close failed: {}", s.ToString());
}

absl::Status NvmeTier::Write(const BlockKey& key, const BlockMeta& meta,
                             std::span<const uint8_t> data, bool durable) {
  Impl& t = *impl_;
  if (data.size() != meta.size) return absl::InvalidArgumentError("NVMe tier: size mismatch");
  const size_t padded = RoundUp(data.size());
  const uint8_t* src = data.data();
  if (!Aligned(src, data.size())) {
    uint8_t* buf = Bounce(padded);
    if (buf == nullptr) return absl::ResourceExhaustedError("NVMe tier: out of memory");
    std::memcpy(buf, src, data.size());
    std::memset(buf + data.size(), 0, padded - data.size());
    src = buf;
  }
  uint8_t k[16];
  key.ToBytes(k);
  MutexLock l(&t.write_mu);
  KVTIER_ASSIGN_OR_RETURN(Location loc, t.Append(src, padded, durable));
  rocksdb::WriteOptions wo;
  wo.sync = durable;
  wo.disableWAL = !durable;
  absl::Status st = FromRocks(
      t.db->Put(wo, rocksdb::Slice(reinterpret_cast<const char*>(k), 16), EncodeMeta(meta, loc)),
      absl::StrCat("write ", key.Hex()));
  if (!st.ok()) return st;  // the appended payload stays unreferenced garbage
  MutexLock ml(&t.mu);
  t.files[loc.file]->live += padded;
  t.stats.live_bytes += padded;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> NvmeTier::Read(const BlockKey& key, std::span<uint8_t> out) {
  Impl& t = *impl_;
  uint8_t k[16];
  key.ToBytes(k);
  // A compaction may move the payload between the metadata read and the file lookup: look again.
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::string value;
    rocksdb::Status s = t.db->Get(rocksdb::ReadOptions(),
                                  rocksdb::Slice(reinterpret_cast<const char*>(k), 16), &value);
    if (!s.ok()) return FromRocks(s, absl::StrCat("read ", key.Hex()));
    BlockMeta m;
    Location loc;
    KVTIER_RETURN_IF_ERROR(DecodeMeta(value, &m, &loc));
    if (m.size != out.size()) {
      return absl::DataLossError(absl::StrCat("NVMe tier: block ", key.Hex(), " holds ", m.size,
                                              " bytes, expected ", out.size()));
    }
    std::shared_ptr<BlobFile> f = t.FileOf(loc.file);
    if (f == nullptr) continue;
    const size_t padded = RoundUp(m.size);
    const bool direct_into_out = Aligned(out.data(), out.size());
    uint8_t* dst = direct_into_out ? out.data() : Bounce(padded);
    if (dst == nullptr) return absl::ResourceExhaustedError("NVMe tier: out of memory");
    rocksdb::Slice got;
    KVTIER_RETURN_IF_ERROR(FromRocks(f->reader->Read(loc.offset, padded, rocksdb::IOOptions(),
                                                     &got, reinterpret_cast<char*>(dst), nullptr),
                                     absl::StrCat("read ", key.Hex(), " from ", f->path)));
    if (got.size() < m.size) {
      return absl::DataLossError(absl::StrCat("NVMe tier: block ", key.Hex(), " is truncated in ",
                                              f->path));
    }
    if (direct_into_out && got.data() == reinterpret_cast<const char*>(dst)) {
      return Checksum(out.data(), m.size);
    }
    return CopyWithChecksum(out.data(), got.data(), m.size);
  }
  return absl::UnavailableError(absl::StrCat("NVMe tier: block ", key.Hex(), " kept moving"));
}

absl::Status NvmeTier::Delete(const BlockKey& key, bool durable) {
  Impl& t = *impl_;
  uint8_t k[16];
  key.ToBytes(k);
  const rocksdb::Slice ks(reinterpret_cast<const char*>(k), 16);
  MutexLock l(&t.write_mu);
  std::string value;
  rocksdb::Status s = t.db->Get(rocksdb::ReadOptions(), ks, &value);
  if (!s.ok()) return FromRocks(s, absl::StrCat("delete ", key.Hex()));
  BlockMeta m;
  Location loc;
  const bool decoded = DecodeMeta(value, &m, &loc).ok();
  rocksdb::WriteOptions wo;
  wo.sync = durable;
  wo.disableWAL = !durable;
  KVTIER_RETURN_IF_ERROR(FromRocks(t.db->Delete(wo, ks), absl::StrCat("delete ", key.Hex())));
  if (decoded) t.Unreference(loc.file, RoundUp(m.size));
  return absl::OkStatus();
}

absl::Status NvmeTier::ForEachMeta(
    const std::function<void(const BlockKey&, const BlockMeta&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 16) return absl::DataLossError("NVMe tier: malformed key in meta");
    BlockMeta m;
    Location loc;
    KVTIER_RETURN_IF_ERROR(DecodeMeta(it->value(), &m, &loc));
    fn(BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(it->key().data())), m);
  }
  return FromRocks(it->status(), "scan meta");
}

absl::Status NvmeTier::Flush() {
  Impl& t = *impl_;
  {
    MutexLock l(&t.write_mu);
    if (t.active != nullptr && t.active->writer != nullptr) {
      KVTIER_RETURN_IF_ERROR(
          FromRocks(t.active->writer->Sync(rocksdb::IOOptions(), nullptr), "sync blob file"));
    }
  }
  return FromRocks(t.db->Flush(rocksdb::FlushOptions()), "flush");
}

uint64_t NvmeTier::TableReaderMemoryBytes() const {
  uint64_t v = 0;
  return impl_->db->GetIntProperty("rocksdb.estimate-table-readers-mem", &v) ? v : 0;
}

NvmeTierStats NvmeTier::Stats() const {
  MutexLock l(&impl_->mu);
  return impl_->stats;
}

}  // namespace kvtier
