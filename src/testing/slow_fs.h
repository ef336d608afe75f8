#pragma once
// A RocksDB FileSystem whose blob-file appends are slow: each append to a file named *.blob first
// calls an optional hook, then sleeps a set time. Benchmarks measure what a slow disk costs the
// store's hits with it; crash tests use the hook to stop a process in the middle of a flash write
// (a demotion or a compaction). Metadata (RocksDB's own files) is not slowed. Use with
// rocksdb::NewCompositeEnv.

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "testing/watched_fs.h"

namespace kvtier::testing {

class SlowFlashFs : public WatchedAppendFs {
 public:
  // Called before each blob append, with the file's path, on the appending thread.
  using Hook = std::function<void(const std::string& path)>;

  explicit SlowFlashFs(std::chrono::microseconds delay, Hook hook = nullptr)
      : delay_us_(delay.count()), hook_(std::move(hook)) {}
  const char* Name() const override { return "SlowFlashFs"; }

  void set_delay(std::chrono::microseconds delay) { delay_us_.store(delay.count()); }
  uint64_t blob_appends() const { return appends_.load(); }

 protected:
  bool Watches(const std::string& path) const override {
    return std::string_view(path).ends_with(".blob");
  }
  rocksdb::IOStatus BeforeAppend(const std::string& path, size_t) override {
    appends_.fetch_add(1);
    if (hook_) hook_(path);
    const int64_t us = delay_us_.load();
    if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
    return rocksdb::IOStatus::OK();
  }

 private:
  std::atomic<int64_t> delay_us_;
  Hook hook_;
  std::atomic<uint64_t> appends_{0};
};

}  // namespace kvtier::testing
