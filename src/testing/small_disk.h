#pragma once
// Small disks for tests of the flash tier: a real tmpfs mounted in a temporary directory where the
// test may mount (root, or a user namespace that allows it), and a RocksDB FileSystem that fills
// at a set size everywhere else. Both report their free space honestly, as statvfs would.

#include <sys/mount.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>

#include "testing/test_util.h"
#include "testing/watched_fs.h"

namespace kvtier::testing {

// A tmpfs of `bytes` mounted on a new temporary directory, unmounted (and its contents gone) when
// this is destroyed. mounted() is false where the process may not mount.
class TmpfsMount {
 public:
  explicit TmpfsMount(size_t bytes) {
    const std::string opts = "size=" + std::to_string(bytes);
    mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& path() const { return dir_.path(); }

 private:
  TempDir dir_;
  bool mounted_ = false;
};

// A file system whose disk holds `capacity` bytes: appends past it fail with ENOSPC (RocksDB's
// NoSpace), GetFreeSpace says what is left, and deleting a file gives its bytes back. Bytes of
// files that existed before it was made do not count. Use with rocksdb::NewCompositeEnv.
class SmallDiskFs : public WatchedAppendFs {
 public:
  explicit SmallDiskFs(uint64_t capacity) : capacity_(capacity) {}
  const char* Name() const override { return "SmallDiskFs"; }

  uint64_t used() const { return used_.load(); }
  // Changes the disk's size (a test fills or frees it at once).
  void set_capacity(uint64_t bytes) { capacity_.store(bytes); }

  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* d) override {
    uint64_t size = 0;
    const bool sized = target()->GetFileSize(f, o, &size, d).ok();
    rocksdb::IOStatus s = target()->DeleteFile(f, o, d);
    if (s.ok() && sized) Release(size);
    return s;
  }
  rocksdb::IOStatus GetFreeSpace(const std::string&, const rocksdb::IOOptions&, uint64_t* free,
                                 rocksdb::IODebugContext*) override {
    const uint64_t used = used_.load(), capacity = capacity_.load();
    *free = used < capacity ? capacity - used : 0;
    return rocksdb::IOStatus::OK();
  }

 protected:
  rocksdb::IOStatus BeforeAppend(const std::string&, size_t bytes) override {
    uint64_t used = used_.load();
    do {
      if (used + bytes > capacity_.load()) {
        rocksdb::IOStatus s = rocksdb::IOStatus::NoSpace("No space left on device (test disk)");
        s.SetRetryable(false);
        return s;
      }
    } while (!used_.compare_exchange_weak(used, used + bytes));
    return rocksdb::IOStatus::OK();
  }

 private:
  void Release(uint64_t n) {
    uint64_t used = used_.load();
    while (!used_.compare_exchange_weak(used, used - std::min(used, n))) {
    }
  }

  std::atomic<uint64_t> capacity_;
  std::atomic<uint64_t> used_{0};
};

}  // namespace kvtier::testing
