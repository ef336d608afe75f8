#include "cache/nvme_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checksum.h"
#include "common/internal/le_bytes.h"
#include "common/mutex.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace kvtier {
namespace {

constexpr uint8_t kMetaVersion = 2;
constexpr size_t kMetaBytes = 1 + 16 + 8 + 4 + 4 + 8;
constexpr size_t kAlign = 4096;  // O_DIRECT granularity for payload offsets, lengths, buffers
constexpr size_t kMinBlobFileBytes = size_t{4} << 20;
constexpr size_t kMaxBlobFileBytes = size_t{256} << 20;
constexpr size_t kMinWriteBufferBytes = size_t{1} << 20;
// Free disk space that RocksDB may need beyond its memtables (WAL preallocation, MANIFEST,
// OPTIONS, the output of a flush or compaction of the small metadata).
constexpr uint64_t kMetaSlackBytes = uint64_t{4} << 20;
constexpr char kByFileFamily[] = "by_file";

uint64_t RoundUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
bool Aligned(const void* p, size_t n) {
  return reinterpret_cast<uintptr_t>(p) % kAlign == 0 && n % kAlign == 0;
}

bool IsNoSpace(const rocksdb::Status& s) {
  return s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace;
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("NVMe tier: ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (IsNoSpace(s)) return absl::ResourceExhaustedError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  // I/O errors, busy, shutdown in progress: the caller may retry.
  return absl::UnavailableError(msg);
}

// Where a payload sits, besides what BlockMeta says about it.
struct Location {
  uint32_t file = 0;
  uint64_t offset = 0;
};

std::string EncodeMeta(const BlockMeta& m, const Location& loc) {
  uint8_t parent[16];
  m.parent.ToBytes(parent);
  internal::LeWriter w;
  w.U8(kMetaVersion);
  w.Raw(std::string_view(reinterpret_cast<const char*>(parent), 16));
  w.U64(m.checksum);
  w.U32(m.size);
  w.U32(loc.file);
  w.U64(loc.offset);
  return w.str();
}

absl::Status DecodeMeta(const rocksdb::Slice& s, BlockMeta* m, Location* loc) {
  if (s.size() != kMetaBytes || static_cast<uint8_t>(s[0]) != kMetaVersion) {
    return absl::DataLossError("NVMe tier: unreadable block metadata");
  }
  m->parent = BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(s.data() + 1));
  m->checksum = internal::LeRead(s.data() + 17, 8);
  m->size = static_cast<uint32_t>(internal::LeRead(s.data() + 25, 4));
  loc->file = static_cast<uint32_t>(internal::LeRead(s.data() + 29, 4));
  loc->offset = internal::LeRead(s.data() + 33, 8);
  if (m->size == 0 || loc->offset % kAlign != 0) {
    return absl::DataLossError("NVMe tier: impossible block metadata");
  }
  return absl::OkStatus();
}

// The key of a block in the by-file index: its blob file's number, big-endian so that one
// file's keys are one range, then the block key.
std::string FileKey(uint32_t file, const char* key16) {
  std::string out(4 + 16, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((file >> (24 - 8 * i)) & 0xff);
  std::memcpy(out.data() + 4, key16, 16);
  return out;
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

// RocksDB's informational log, sent to kvtier's log instead of a LOG file in the metadata
// directory: on a full disk RocksDB's own log writer fails and its next write aborts the process
// (an assertion in Debian's build), so the metadata directory holds nothing RocksDB writes
// without being asked.
class RocksLogger final : public rocksdb::Logger {
 public:
  RocksLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      spdlog::error("nvme: rocksdb: {}", line);
    } else {
      spdlog::warn("nvme: rocksdb: {}", line);
    }
  }
};

std::string Timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
  return buf;
}

// The number of a blob file's name ("00000012.blob"), or nullopt.
std::optional<uint32_t> BlobNumber(const std::string& name) {
  uint32_t number = 0;
  if (name.size() != 13 || name.substr(8) != ".blob" ||
      !absl::SimpleAtoi(name.substr(0, 8), &number)) {
    return std::nullopt;
  }
  return number;
}

}  // namespace

struct BlobFile {
  uint32_t number = 0;
  std::string path;
  std::unique_ptr<rocksdb::FSRandomAccessFile> reader;
  std::unique_ptr<rocksdb::FSWritableFile> writer;  // the active file only; guarded by write_mu
  uint64_t size = 0;                                // bytes appended; guarded by Impl::mu
  uint64_t live = 0;        // bytes referenced by metadata; guarded by Impl::mu
  bool compacting = false;  // removed by its compaction only; guarded by Impl::mu
};

struct NvmeTier::Impl {
  NvmeTierOptions options;
  std::shared_ptr<rocksdb::FileSystem> fs;
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::ColumnFamilyHandle* meta_cf = nullptr;     // key -> BlockMeta + Location
  rocksdb::ColumnFamilyHandle* by_file_cf = nullptr;  // FileKey(file, key) -> ""
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // owned; destroyed before db
  std::string blob_dir;
  std::unique_ptr<rocksdb::FSDirectory> blob_dir_handle;
  bool direct = false;
  size_t blob_file_bytes = kMaxBlobFileBytes;
  size_t write_buffer_bytes = 0;
  uint64_t kept_free = 0;
  std::atomic<uint64_t> capacity{0};

  // Serializes payload appends and every metadata mutation (writes, deletes, compaction steps),
  // so a compaction never races an update of the same key. Readers never take it.
  Mutex write_mu;
  std::shared_ptr<BlobFile> active ABSL_GUARDED_BY(write_mu);
  // Deletes are logged in the WAL since its last sync (a delete of a block the store evicted):
  // the next durable delete syncs them, even of a key they removed already.
  bool unsynced_log ABSL_GUARDED_BY(write_mu) = false;

  mutable Mutex mu;  // the file table and the counters
  absl::flat_hash_map<uint32_t, std::shared_ptr<BlobFile>> files ABSL_GUARDED_BY(mu);
  uint32_t next_number ABSL_GUARDED_BY(mu) = 1;
  FlashStats stats ABSL_GUARDED_BY(mu);

  ~Impl() { CloseDb(); }

  void CloseDb() {
    if (db == nullptr) return;
    for (auto* h : handles) (void)db->DestroyColumnFamilyHandle(h);
    handles.clear();
    meta_cf = by_file_cf = nullptr;
    rocksdb::Status s = db->Close();
    if (!s.ok()) spdlog::warn("nvme: close failed: {}", s.ToString());
    db.reset();
  }

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

  uint64_t FreeDiskBytes() const {
    uint64_t free = 0;
    if (!fs->GetFreeSpace(blob_dir, rocksdb::IOOptions(), &free, nullptr).ok()) return UINT64_MAX;
    return free;
  }

  // Refuses a write of `bytes` that would leave less than `keep` bytes free on the disk.
  absl::Status CheckRoom(uint64_t bytes, uint64_t keep) {
    const uint64_t free = FreeDiskBytes();
    if (free >= bytes + keep) return absl::OkStatus();
    MutexLock l(&mu);
    ++stats.disk_full_rejections;
    return absl::ResourceExhaustedError(absl::StrCat("NVMe tier: disk full under ", options.path,
                                                     " (", free >> 20, " MiB free, ", keep >> 20,
                                                     " MiB kept free for the metadata)"));
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
    std::shared_ptr<BlobFile> sealed = std::move(active);
    active = nullptr;
    if (sealed != nullptr) MaybeRemove(sealed);
    auto f = std::make_shared<BlobFile>();
    {
      MutexLock l(&mu);
      f->number = next_number++;
    }
    f->path = PathOf(f->number);
    KVTIER_RETURN_IF_ERROR(FromRocks(fs->NewWritableFile(f->path, FileOpts(), &f->writer, nullptr),
                                     absl::StrCat("create ", f->path)));
    KVTIER_RETURN_IF_ERROR(OpenReader(f.get()));
    // The new name must survive a crash before a durable record points into the file.
    KVTIER_RETURN_IF_ERROR(FromRocks(blob_dir_handle->Fsync(rocksdb::IOOptions(), nullptr),
                                     absl::StrCat("sync ", blob_dir)));
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
    if (active == nullptr || size + padded > blob_file_bytes) {
      KVTIER_RETURN_IF_ERROR(Roll());
      size = 0;
    }
    rocksdb::IOStatus s = active->writer->Append(
        rocksdb::Slice(reinterpret_cast<const char*>(data), padded), rocksdb::IOOptions(), nullptr);
    if (s.ok() && sync) s = active->writer->Sync(rocksdb::IOOptions(), nullptr);
    if (!s.ok()) {
      // The file's tail is now unknown: seal it (its bytes so far stay valid) and start the next
      // write in a fresh file.
      absl::Status st = FromRocks(s, absl::StrCat("append to ", active->path));
      active->writer.reset();
      std::shared_ptr<BlobFile> sealed = std::move(active);
      active = nullptr;
      MaybeRemove(sealed);
      return st;
    }
    Location loc{active->number, size};
    MutexLock l(&mu);
    active->size += padded;
    stats.file_bytes += padded;
    return loc;
  }

  // The metadata of `k16`, or NOT_FOUND.
  absl::Status GetMeta(const char* k16, BlockMeta* m, Location* loc) {
    std::string value;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), meta_cf, rocksdb::Slice(k16, 16), &value);
    if (!s.ok()) return FromRocks(s, "read metadata");
    return DecodeMeta(value, m, loc);
  }

  // How a metadata batch is committed.
  enum class Commit {
    kMemtable,  // a cache write: lost in a crash unless flushed first
    kLogged,    // in the WAL, which outlives the process; durable at the next sync
    kSynced,    // in the WAL, fsynced before returning (with every record logged before it)
  };
  // Commits a metadata batch. A write that meets RocksDB's background-error state (after a
  // failed flush) asks RocksDB to resume once, so the tier recovers when space returns.
  absl::Status WriteBatch(rocksdb::WriteBatch* batch, Commit how, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    rocksdb::WriteOptions wo;
    wo.sync = how == Commit::kSynced;
    wo.disableWAL = how == Commit::kMemtable;
    rocksdb::Status s = db->Write(wo, batch);
    if (!s.ok() && !IsNoSpace(s) && db->Resume().ok()) s = db->Write(wo, batch);
    if (s.ok() && how != Commit::kMemtable) unsynced_log = how == Commit::kLogged;
    return FromRocks(s, what);
  }

  // Drops `bytes` of live data from file `number`; removes the file when nothing in it is live.
  void Unreference(uint32_t number, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    std::shared_ptr<BlobFile> f;
    {
      MutexLock l(&mu);
      auto it = files.find(number);
      if (it == files.end()) return;
      f = it->second;
      f->live -= std::min(f->live, bytes);
      stats.live_bytes -= std::min(stats.live_bytes, bytes);
    }
    MaybeRemove(f);
  }

  // Removes a sealed file with nothing live in it (unless a compaction owns it).
  void MaybeRemove(const std::shared_ptr<BlobFile>& f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    {
      MutexLock l(&mu);
      if (f->live != 0 || f->compacting || !files.contains(f->number)) return;
    }
    if (active != nullptr && active->number == f->number) return;
    RemoveFile(f);
  }

  void RemoveFile(const std::shared_ptr<BlobFile>& f) {
    {
      MutexLock l(&mu);
      if (files.erase(f->number) == 0) return;
      stats.file_bytes -= std::min(stats.file_bytes, f->size);
      stats.live_bytes -= std::min(stats.live_bytes, f->live);
      --stats.blob_files;
    }
    // Readers holding the file keep reading it; the name goes now.
    rocksdb::IOStatus s = fs->DeleteFile(f->path, rocksdb::IOOptions(), nullptr);
    if (!s.ok()) spdlog::warn("nvme: removing {}: {}", f->path, s.ToString());
  }

  // The sealed file most worth compacting: at least half dead, while the dead bytes of all files
  // pass one file's size (so small amounts of garbage are not rewritten).
  std::shared_ptr<BlobFile> CompactionCandidate() {
    MutexLock wl(&write_mu);
    MutexLock l(&mu);
    if (stats.file_bytes - std::min(stats.file_bytes, stats.live_bytes) < blob_file_bytes / 2) {
      return nullptr;
    }
    std::shared_ptr<BlobFile> best;
    for (const auto& [number, f] : files) {
      if (active != nullptr && active->number == number) continue;
      if (f->compacting || f->live * 2 > f->size) continue;
      if (best == nullptr || f->size - f->live > best->size - best->live) best = f;
    }
    if (best != nullptr) best->compacting = true;
    return best;
  }

  // Copies the live payloads of sealed file `f` to the active file one by one (taking write_mu
  // for each, so writes go on meanwhile), repoints their metadata, makes the new places durable,
  // then removes `f`. The file's keys come from the by-file index.
  absl::Status Compact(const std::shared_ptr<BlobFile>& f) {
    char prefix[4];
    for (int i = 0; i < 4; ++i) prefix[i] = static_cast<char>((f->number >> (24 - 8 * i)) & 0xff);
    std::vector<std::string> keys;
    {
      std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), by_file_cf));
      for (it->Seek(rocksdb::Slice(prefix, 4)); it->Valid() && it->key().size() == 20 &&
                                                it->key().starts_with(rocksdb::Slice(prefix, 4));
           it->Next()) {
        keys.emplace_back(it->key().data() + 4, 16);
      }
      KVTIER_RETURN_IF_ERROR(FromRocks(it->status(), "compaction scan"));
    }
    uint64_t moved = 0;
    for (const std::string& k : keys) {
      BlockMeta m;
      Location loc;
      absl::Status st = GetMeta(k.data(), &m, &loc);
      if (!st.ok() || loc.file != f->number) {  // deleted or moved since the index said so
        MutexLock wl(&write_mu);
        rocksdb::WriteBatch batch;
        (void)batch.Delete(by_file_cf, FileKey(f->number, k.data()));
        (void)WriteBatch(&batch, Commit::kMemtable, "compaction index");
        continue;
      }
      const size_t padded = RoundUp(m.size);
      uint8_t* buf = Bounce(padded);
      if (buf == nullptr) return absl::ResourceExhaustedError("NVMe tier: out of memory");
      rocksdb::Slice got;
      KVTIER_RETURN_IF_ERROR(FromRocks(f->reader->Read(loc.offset, padded, rocksdb::IOOptions(),
                                                       &got, reinterpret_cast<char*>(buf), nullptr),
                                       absl::StrCat("compaction read of ", f->path)));
      if (got.size() != padded) return absl::DataLossError("NVMe tier: short blob read");
      if (got.data() != reinterpret_cast<const char*>(buf)) std::memmove(buf, got.data(), padded);
      MutexLock wl(&write_mu);
      BlockMeta now;
      Location now_loc;
      if (!GetMeta(k.data(), &now, &now_loc).ok() || now_loc.file != loc.file ||
          now_loc.offset != loc.offset) {
        continue;  // rewritten or deleted while being read
      }
      // Compaction frees space, so it may use half of what writes keep free.
      KVTIER_RETURN_IF_ERROR(CheckRoom(padded, kept_free / 2));
      KVTIER_ASSIGN_OR_RETURN(Location to, Append(buf, padded, /*sync=*/false));
      rocksdb::WriteBatch batch;
      (void)batch.Put(meta_cf, rocksdb::Slice(k.data(), 16), EncodeMeta(m, to));
      (void)batch.Delete(by_file_cf, FileKey(f->number, k.data()));
      (void)batch.Put(by_file_cf, FileKey(to.file, k.data()), rocksdb::Slice());
      rocksdb::WriteOptions wo;  // WAL on, synced below before the old file goes
      KVTIER_RETURN_IF_ERROR(FromRocks(db->Write(wo, &batch), "compaction commit"));
      moved += padded;
      MutexLock l(&mu);
      files[to.file]->live += padded;
      f->live -= std::min(f->live, padded);
    }
    {
      MutexLock wl(&write_mu);
      if (active != nullptr && active->writer != nullptr) {
        KVTIER_RETURN_IF_ERROR(
            FromRocks(active->writer->Sync(rocksdb::IOOptions(), nullptr), "compaction sync"));
      }
    }
    KVTIER_RETURN_IF_ERROR(FromRocks(db->SyncWAL(), "compaction WAL sync"));
    bool empty = false;
    {
      MutexLock l(&mu);
      stats.bytes_moved += moved;
      ++stats.compactions;
      f->compacting = false;
      empty = f->live == 0;
    }
    if (empty) {
      RemoveFile(f);
    } else {
      spdlog::warn("nvme: {} still holds live data after its compaction; kept", f->path);
    }
    return absl::OkStatus();
  }

  void RefreshCapacity() {
    uint64_t live = 0;
    {
      MutexLock l(&mu);
      live = stats.live_bytes;
    }
    const uint64_t free = FreeDiskBytes();
    const uint64_t room = free == UINT64_MAX ? UINT64_MAX : live + free - std::min(free, kept_free);
    capacity.store(std::min<uint64_t>(options.capacity_bytes, room), std::memory_order_relaxed);
  }

  // Moves the metadata and blob directories aside, for inspection, and logs why.
  absl::Status MoveAside(const std::string& why) {
    // A new directory each time, even for damage found twice within a second.
    std::string aside = absl::StrCat(options.path, "/damaged-", Timestamp());
    for (int n = 2; fs->FileExists(aside, rocksdb::IOOptions(), nullptr).ok(); ++n) {
      aside = absl::StrCat(options.path, "/damaged-", Timestamp(), "-", n);
    }
    spdlog::error(
        "nvme: {}: the flash tier under {} cannot be used; moving it to {} and starting empty "
        "(the blocks it held are lost to this daemon)",
        why, options.path, aside);
    KVTIER_RETURN_IF_ERROR(
        FromRocks(fs->CreateDirIfMissing(aside, rocksdb::IOOptions(), nullptr), "create " + aside));
    for (const char* sub : {"meta", "blobs"}) {
      const std::string from = absl::StrCat(options.path, "/", sub);
      if (fs->FileExists(from, rocksdb::IOOptions(), nullptr).ok()) {
        KVTIER_RETURN_IF_ERROR(FromRocks(
            fs->RenameFile(from, absl::StrCat(aside, "/", sub), rocksdb::IOOptions(), nullptr),
            "move " + from));
      }
    }
    {
      MutexLock l(&mu);
      stats.damaged_tier_moved_aside = true;
    }
    for (const char* sub : {"meta", "blobs"}) {
      const std::string dir = absl::StrCat(options.path, "/", sub);
      KVTIER_RETURN_IF_ERROR(
          FromRocks(fs->CreateDirIfMissing(dir, rocksdb::IOOptions(), nullptr), "create " + dir));
    }
    return absl::OkStatus();
  }

  rocksdb::Status TryOpenDb(rocksdb::WALRecoveryMode mode) {
    rocksdb::DBOptions db_options;
    db_options.create_if_missing = true;
    db_options.create_missing_column_families = true;
    db_options.max_background_jobs = 2;
    // The two families flush together, so a crash keeps both or neither of a cache write.
    db_options.atomic_flush = true;
    db_options.wal_recovery_mode = mode;
    db_options.info_log = std::make_shared<RocksLogger>();
    if (options.env != nullptr) db_options.env = options.env;
    rocksdb::ColumnFamilyOptions cf;
    cf.compression = rocksdb::kNoCompression;
    cf.write_buffer_size = write_buffer_bytes;
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, cf}, {kByFileFamily, cf}};
    rocksdb::DB* raw = nullptr;
    std::vector<rocksdb::ColumnFamilyHandle*> opened;
    rocksdb::Status s =
        rocksdb::DB::Open(db_options, options.path + "/meta", families, &opened, &raw);
    if (!s.ok()) return s;
    db.reset(raw);
    handles = opened;
    meta_cf = handles[0];
    by_file_cf = handles[1];
    return s;
  }

  // Opens the metadata, recovering what can be recovered (see nvme_tier.h).
  absl::Status OpenDb() {
    const std::string meta = options.path + "/meta";
    std::vector<std::string> children;
    (void)fs->GetChildren(meta, rocksdb::IOOptions(), &children, nullptr);
    const bool has_files = std::any_of(children.begin(), children.end(), [](const auto& c) {
      return c != "." && c != ".." && c != "LOCK";
    });
    if (has_files && std::find(children.begin(), children.end(), "CURRENT") == children.end()) {
      KVTIER_RETURN_IF_ERROR(MoveAside("the metadata directory has no CURRENT file"));
    }
    rocksdb::Status s = TryOpenDb(rocksdb::WALRecoveryMode::kAbsoluteConsistency);
    if (s.IsCorruption()) {
      const std::string damage = s.ToString();
      s = TryOpenDb(rocksdb::WALRecoveryMode::kPointInTimeRecovery);
      if (s.ok()) {
        spdlog::error(
            "nvme: the metadata under {} is damaged ({}); recovered what came before the damage, "
            "blocks written after it are lost",
            meta, damage);
        MutexLock l(&mu);
        stats.metadata_recovered_with_loss = true;
      }
    }
    if (!s.ok() && !IsNoSpace(s) && !s.IsIOError()) {
      KVTIER_RETURN_IF_ERROR(MoveAside(absl::StrCat("RocksDB cannot open it: ", s.ToString())));
      s = TryOpenDb(rocksdb::WALRecoveryMode::kAbsoluteConsistency);
    }
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("nvme.path: cannot open RocksDB in '", meta, "': ", s.ToString()));
    }
    return absl::OkStatus();
  }

  // Replaces the by-file index with one built from the metadata: a new column family, so
  // nothing of a damaged one is read again. REQUIRES: the metadata is readable.
  absl::Status RebuildIndex() {
    KVTIER_RETURN_IF_ERROR(FromRocks(db->DropColumnFamily(by_file_cf), "drop the by-file index"));
    (void)db->DestroyColumnFamilyHandle(by_file_cf);
    rocksdb::ColumnFamilyOptions cf;
    cf.compression = rocksdb::kNoCompression;
    cf.write_buffer_size = write_buffer_bytes;
    rocksdb::ColumnFamilyHandle* fresh = nullptr;
    KVTIER_RETURN_IF_ERROR(
        FromRocks(db->CreateColumnFamily(cf, kByFileFamily, &fresh), "create the by-file index"));
    by_file_cf = handles[1] = fresh;
    rocksdb::WriteBatch batch;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), meta_cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      BlockMeta m;
      Location loc;
      if (it->key().size() != 16 || !DecodeMeta(it->value(), &m, &loc).ok()) continue;
      (void)batch.Put(by_file_cf, FileKey(loc.file, it->key().data()), rocksdb::Slice());
      if (batch.Count() >= 4096) {
        KVTIER_RETURN_IF_ERROR(FromRocks(db->Write(rocksdb::WriteOptions(), &batch), "index"));
        batch.Clear();
      }
    }
    KVTIER_RETURN_IF_ERROR(FromRocks(it->status(), "rebuild the by-file index"));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return FromRocks(db->Write(wo, &batch), "rebuild the by-file index");
  }

  // Indexes what is on disk: live bytes per blob file, records that cannot be used (unreadable,
  // or pointing into a missing or short file) deleted, by-file index entries rebuilt where the
  // metadata predates the index, unreferenced blob files removed.
  absl::Status Recover() {
    // Blob files on disk, by number, with their sizes.
    std::vector<std::string> names;
    KVTIER_RETURN_IF_ERROR(FromRocks(
        fs->GetChildren(blob_dir, rocksdb::IOOptions(), &names, nullptr), "list blob files"));
    absl::flat_hash_map<uint32_t, uint64_t> on_disk;
    uint32_t highest = 0;
    for (const std::string& name : names) {
      const std::optional<uint32_t> number = BlobNumber(name);
      if (!number.has_value()) continue;
      uint64_t size = 0;
      KVTIER_RETURN_IF_ERROR(FromRocks(
          fs->GetFileSize(PathOf(*number), rocksdb::IOOptions(), &size, nullptr), "stat " + name));
      on_disk[*number] = size;
      highest = std::max(highest, *number);
    }
    // The by-file index must be readable and as long as the metadata; else it is rebuilt.
    uint64_t indexed = 0;
    bool index_readable = true;
    {
      std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), by_file_cf));
      for (it->SeekToFirst(); it->Valid(); it->Next()) ++indexed;
      index_readable = it->status().ok();
    }
    absl::flat_hash_map<uint32_t, uint64_t> live;
    rocksdb::WriteBatch drop;
    uint64_t bad = 0, lost = 0, records = 0;
    {
      std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), meta_cf));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        BlockMeta m;
        Location loc;
        if (it->key().size() != 16 || !DecodeMeta(it->value(), &m, &loc).ok()) {
          (void)drop.Delete(meta_cf, it->key());
          ++bad;
          continue;
        }
        highest = std::max(highest, loc.file);
        auto file = on_disk.find(loc.file);
        if (file == on_disk.end() || loc.offset + RoundUp(m.size) > file->second) {
          (void)drop.Delete(meta_cf, it->key());
          (void)drop.Delete(by_file_cf, FileKey(loc.file, it->key().data()));
          ++lost;
          continue;
        }
        live[loc.file] += RoundUp(m.size);
        ++records;
      }
      if (!it->status().ok()) {
        return absl::DataLossError(
            absl::StrCat("the metadata cannot be read: ", it->status().ToString()));
      }
    }
    if (bad > 0) {
      spdlog::error("nvme: {} unreadable metadata records under {}; skipped and deleted", bad,
                    options.path);
    }
    if (lost > 0) {
      spdlog::error(
          "nvme: {} blocks under {} point into blob files that are missing or too short; "
          "dropped",
          lost, options.path);
    }
    if (bad + lost > 0) {
      rocksdb::WriteOptions wo;
      wo.sync = true;
      KVTIER_RETURN_IF_ERROR(FromRocks(db->Write(wo, &drop), "drop damaged records"));
    }
    if (!index_readable || indexed != records + lost) {
      if (indexed != 0 || !index_readable) {
        spdlog::warn("nvme: the by-file index under {} {} ; rebuilt from the metadata",
                     options.path,
                     index_readable ? "does not match the metadata" : "is unreadable");
      }
      KVTIER_RETURN_IF_ERROR(RebuildIndex());
    }
    uint64_t unreferenced_files = 0, unreferenced_bytes = 0;
    MutexLock l(&mu);
    stats.bad_records = bad;
    stats.lost_blocks = lost;
    next_number = highest + 1;
    for (const auto& [number, size] : on_disk) {
      if (!live.contains(number)) {  // nothing in it is referenced
        ++unreferenced_files;
        unreferenced_bytes += size;
        (void)fs->DeleteFile(PathOf(number), rocksdb::IOOptions(), nullptr);
        continue;
      }
      auto f = std::make_shared<BlobFile>();
      f->number = number;
      f->path = PathOf(number);
      KVTIER_RETURN_IF_ERROR(OpenReader(f.get()));
      f->size = size;
      f->live = live[number];
      stats.file_bytes += size;
      stats.live_bytes += f->live;
      ++stats.blob_files;
      files[number] = std::move(f);
    }
    if (unreferenced_files > 0) {
      spdlog::info("nvme: removed {} blob files ({} MiB) that no block refers to",
                   unreferenced_files, unreferenced_bytes >> 20);
    }
    return absl::OkStatus();
  }
};

NvmeTier::NvmeTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Open(const NvmeTierOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("nvme.path: must be set");
  auto impl = std::make_unique<Impl>();
  Impl& t = *impl;
  t.options = options;
  t.fs = options.env != nullptr ? options.env->GetFileSystem() : rocksdb::FileSystem::Default();
  t.blob_dir = options.path + "/blobs";
  const rocksdb::IOOptions io;
  for (const std::string& dir : {options.path, options.path + "/meta"}) {
    rocksdb::IOStatus s = t.fs->CreateDirIfMissing(dir, io, nullptr);
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("nvme.path: cannot create '", dir, "': ", s.ToString()));
    }
  }
  // Blob files without their metadata directory's contents cannot be indexed: damage.
  std::vector<std::string> meta_files, blob_files;
  (void)t.fs->GetChildren(options.path + "/meta", io, &meta_files, nullptr);
  (void)t.fs->GetChildren(t.blob_dir, io, &blob_files, nullptr);
  const bool no_meta = std::none_of(meta_files.begin(), meta_files.end(),
                                    [](const auto& c) { return c != "." && c != ".."; });
  const bool has_blobs = std::any_of(blob_files.begin(), blob_files.end(),
                                     [](const auto& c) { return BlobNumber(c).has_value(); });
  if (no_meta && has_blobs) {
    KVTIER_RETURN_IF_ERROR(t.MoveAside("blob files are present but their metadata is missing"));
  }
  KVTIER_RETURN_IF_ERROR(FromRocks(t.fs->CreateDirIfMissing(t.blob_dir, io, nullptr),
                                   absl::StrCat("nvme.path: create ", t.blob_dir)));

  // Direct I/O where the file system has it (not on tmpfs, for one).
  if (options.direct_io) {
    const std::string probe = t.blob_dir + "/.direct-io-probe";
    std::unique_ptr<rocksdb::FSWritableFile> f;
    rocksdb::FileOptions fo;
    fo.use_direct_writes = true;
    t.direct = t.fs->NewWritableFile(probe, fo, &f, nullptr).ok();
    f.reset();
    (void)t.fs->DeleteFile(probe, io, nullptr);
    if (!t.direct) {
      spdlog::warn("nvme: direct I/O not supported under {}; using buffered I/O", options.path);
    }
  }

  // Sizes follow what the tier can hold on this disk: its blob files' bytes plus what is free.
  uint64_t ours = 0;
  for (const std::string& name : blob_files) {
    uint64_t size = 0;
    if (BlobNumber(name).has_value() &&
        t.fs->GetFileSize(t.blob_dir + "/" + name, io, &size, nullptr).ok()) {
      ours += size;
    }
  }
  const uint64_t free = t.FreeDiskBytes();
  const uint64_t basis =
      std::min<uint64_t>(options.capacity_bytes, free == UINT64_MAX ? UINT64_MAX : ours + free);
  t.write_buffer_bytes = std::clamp<size_t>(
      basis / 64, kMinWriteBufferBytes, std::max(options.write_buffer_bytes, kMinWriteBufferBytes));
  t.blob_file_bytes =
      options.blob_file_bytes != 0
          ? options.blob_file_bytes
          : RoundUp(std::clamp<uint64_t>(basis / 16, kMinBlobFileBytes, kMaxBlobFileBytes));
  // WAL preallocation (1.1 memtables), a memtable's flush output, and the rest.
  t.kept_free = 3 * t.write_buffer_bytes + kMetaSlackBytes;

  KVTIER_RETURN_IF_ERROR(t.OpenDb());
  absl::Status recovered = t.Recover();
  if (recovered.code() == absl::StatusCode::kDataLoss) {  // unreadable metadata files
    t.CloseDb();
    KVTIER_RETURN_IF_ERROR(t.MoveAside(std::string(recovered.message())));
    KVTIER_RETURN_IF_ERROR(t.OpenDb());
    recovered = t.Recover();
  }
  KVTIER_RETURN_IF_ERROR(recovered);
  KVTIER_RETURN_IF_ERROR(FromRocks(t.fs->NewDirectory(t.blob_dir, io, &t.blob_dir_handle, nullptr),
                                   "open " + t.blob_dir));
  t.RefreshCapacity();
  return std::unique_ptr<NvmeTier>(new NvmeTier(std::move(impl)));
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
  rocksdb::Status s = t.db->Flush(rocksdb::FlushOptions(), t.handles);
  if (!s.ok()) spdlog::warn("nvme: flush at close failed: {}", s.ToString());
}

bool NvmeTier::direct_io() const { return impl_->direct; }
uint64_t NvmeTier::kept_free_bytes() const { return impl_->kept_free; }
size_t NvmeTier::blob_file_bytes() const { return impl_->blob_file_bytes; }

absl::Status NvmeTier::Write(const BlockKey& key, const BlockMeta& meta,
                             std::span<const uint8_t> data, bool durable) {
  Impl& t = *impl_;
  if (data.size() != meta.size || data.empty()) {
    return absl::InvalidArgumentError("NVMe tier: size mismatch");
  }
  const size_t padded = RoundUp(data.size());
  const uint8_t* src = data.data();
  if (!Aligned(src, data.size())) {
    uint8_t* buf = Bounce(padded);
    if (buf == nullptr) return absl::ResourceExhaustedError("NVMe tier: out of memory");
    CopyBytes(buf, src, data.size());
    std::memset(buf + data.size(), 0, padded - data.size());
    src = buf;
  }
  char k[16];
  key.ToBytes(reinterpret_cast<uint8_t*>(k));
  MutexLock l(&t.write_mu);
  KVTIER_RETURN_IF_ERROR(t.CheckRoom(padded, t.kept_free));
  BlockMeta old;
  Location old_loc;
  const bool replaces = t.GetMeta(k, &old, &old_loc).ok();
  KVTIER_ASSIGN_OR_RETURN(Location loc, t.Append(src, padded, durable));
  rocksdb::WriteBatch batch;
  if (replaces) (void)batch.Delete(t.by_file_cf, FileKey(old_loc.file, k));
  (void)batch.Put(t.meta_cf, rocksdb::Slice(k, 16), EncodeMeta(meta, loc));
  (void)batch.Put(t.by_file_cf, FileKey(loc.file, k), rocksdb::Slice());
  {
    MutexLock ml(&t.mu);
    t.files[loc.file]->live += padded;  // counted now, so the file is not removed meanwhile
    t.stats.live_bytes += padded;
  }
  absl::Status st = t.WriteBatch(&batch, durable ? Impl::Commit::kSynced : Impl::Commit::kMemtable,
                                 absl::StrCat("write ", key.Hex()));
  if (!st.ok()) {  // the appended payload stays unreferenced garbage
    t.Unreference(loc.file, padded);
    return st;
  }
  if (replaces) t.Unreference(old_loc.file, RoundUp(old.size));
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> NvmeTier::Read(const BlockKey& key, std::span<uint8_t> out,
                                        std::span<uint8_t> copy) {
  Impl& t = *impl_;
  if (!copy.empty() && copy.size() != out.size()) {
    return absl::InvalidArgumentError("NVMe tier: read: the copy's size is not the block's");
  }
  char k[16];
  key.ToBytes(reinterpret_cast<uint8_t*>(k));
  // A compaction may move the payload between the metadata read and the file lookup: look again.
  for (int attempt = 0; attempt < 3; ++attempt) {
    BlockMeta m;
    Location loc;
    absl::Status st = t.GetMeta(k, &m, &loc);
    if (st.code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(absl::StrCat("NVMe tier: block ", key.Hex(), " not found"));
    }
    KVTIER_RETURN_IF_ERROR(st);
    if (m.size != out.size()) {
      return absl::DataLossError(absl::StrCat("NVMe tier: block ", key.Hex(), " holds ", m.size,
                                              " bytes, expected ", out.size()));
    }
    std::shared_ptr<BlobFile> f = t.FileOf(loc.file);
    if (f == nullptr) {
      if (attempt < 2) continue;
      return absl::DataLossError(absl::StrCat("NVMe tier: block ", key.Hex(), " is in blob file ",
                                              loc.file, ", which is missing"));
    }
    const size_t padded = RoundUp(m.size);
    const bool direct_into_out = Aligned(out.data(), out.size());
    uint8_t* dst = direct_into_out ? out.data() : Bounce(padded);
    if (dst == nullptr) return absl::ResourceExhaustedError("NVMe tier: out of memory");
    rocksdb::Slice got;
    rocksdb::IOStatus io = f->reader->Read(loc.offset, padded, rocksdb::IOOptions(), &got,
                                           reinterpret_cast<char*>(dst), nullptr);
    if (io.IsPathNotFound() || io.IsNotFound()) {
      return absl::DataLossError(absl::StrCat("NVMe tier: ", f->path, " is gone"));
    }
    KVTIER_RETURN_IF_ERROR(FromRocks(io, absl::StrCat("read ", key.Hex(), " from ", f->path)));
    if (got.size() < m.size) {
      return absl::DataLossError(
          absl::StrCat("NVMe tier: block ", key.Hex(), " is truncated in ", f->path));
    }
    const bool copied = !copy.empty();  // of out's size, which is m.size
    if (direct_into_out && got.data() == reinterpret_cast<const char*>(dst)) {
      return copied ? CopyWithChecksum(copy.data(), out.data(), m.size, CopyTo::kCache)
                    : Checksum(out.data(), m.size);
    }
    const uint64_t sum = CopyWithChecksum(out.data(), got.data(), m.size, CopyTo::kCache);
    if (copied) CopyBytes(copy.data(), out.data(), m.size, CopyTo::kCache);
    return sum;
  }
  return absl::UnavailableError(absl::StrCat("NVMe tier: block ", key.Hex(), " kept moving"));
}

absl::Status NvmeTier::Delete(const BlockKey& key, bool durable) {
  Impl& t = *impl_;
  char k[16];
  key.ToBytes(reinterpret_cast<uint8_t*>(k));
  MutexLock l(&t.write_mu);
  BlockMeta m;
  Location loc;
  absl::Status found = t.GetMeta(k, &m, &loc);
  if (found.code() == absl::StatusCode::kNotFound) {
    // A logged delete may have removed it: a durable delete makes that one durable.
    if (durable && t.unsynced_log) {
      KVTIER_RETURN_IF_ERROR(FromRocks(t.db->SyncWAL(), "sync deletes"));
      t.unsynced_log = false;
    }
    return absl::NotFoundError(absl::StrCat("NVMe tier: block ", key.Hex(), " not found"));
  }
  rocksdb::WriteBatch batch;
  (void)batch.Delete(t.meta_cf, rocksdb::Slice(k, 16));
  if (found.ok()) (void)batch.Delete(t.by_file_cf, FileKey(loc.file, k));
  // A delete is always logged: one lost in a crash would bring back a record that was
  // persisted earlier (a durable put, a flush), though the store had dropped it.
  KVTIER_RETURN_IF_ERROR(t.WriteBatch(&batch,
                                      durable ? Impl::Commit::kSynced : Impl::Commit::kLogged,
                                      absl::StrCat("delete ", key.Hex())));
  if (found.ok()) t.Unreference(loc.file, RoundUp(m.size));
  return absl::OkStatus();
}

absl::Status NvmeTier::ForEachMeta(
    const std::function<void(const BlockKey&, const BlockMeta&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->meta_cf));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    BlockMeta m;
    Location loc;
    // Recover() deleted what does not decode; a record that still fails is skipped.
    if (it->key().size() != 16 || !DecodeMeta(it->value(), &m, &loc).ok()) continue;
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
  return FromRocks(t.db->Flush(rocksdb::FlushOptions(), t.handles), "flush");
}

bool NvmeTier::Maintain() {
  Impl& t = *impl_;
  t.RefreshCapacity();
  std::shared_ptr<BlobFile> f = t.CompactionCandidate();
  if (f == nullptr) return false;
  absl::Status st = t.Compact(f);
  if (!st.ok()) {
    spdlog::warn("nvme: compaction of {} failed: {}", f->path, st.ToString());
    MutexLock l(&t.mu);
    f->compacting = false;
    return false;
  }
  t.RefreshCapacity();
  return true;
}

uint64_t NvmeTier::CapacityBytes() const { return impl_->capacity.load(std::memory_order_relaxed); }

uint64_t NvmeTier::IndexMemoryBytes() const {
  uint64_t v = 0;
  return impl_->db->GetAggregatedIntProperty("rocksdb.estimate-table-readers-mem", &v) ? v : 0;
}

FlashStats NvmeTier::Stats() const {
  MutexLock l(&impl_->mu);
  return impl_->stats;
}

}  // namespace kvtier
