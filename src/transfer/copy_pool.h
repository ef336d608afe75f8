#pragma once
// CopyPool: the copies of one read from a locally mapped region (UcxReader, when the daemon's
// arena is mapped into this process), shared between the calling thread and helper threads, so a
// single reader of a large batch is not held to one core's copy-and-checksum speed. The caller
// always works too: with every helper busy (many readers at once), it copies alone.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

namespace kvtier::transfer {

struct CopyOp {
  uint8_t* dst = nullptr;
  const uint8_t* src = nullptr;
  size_t length = 0;
  uint64_t* checksum = nullptr;  // set to the checksum of the copied bytes when not null
};

class CopyPool {
 public:
  // For one process: a helper per core beyond the first, at most 7.
  static CopyPool& Shared();
  // Batches smaller than this are copied by the caller alone (waking a helper costs more).
  static constexpr size_t kMinParallelBytes = 2 << 20;

  explicit CopyPool(int helpers);
  ~CopyPool();
  CopyPool(const CopyPool&) = delete;
  CopyPool& operator=(const CopyPool&) = delete;

  // Returns once every op is copied (and checksummed).
  void Run(std::span<const CopyOp> ops);
  int helpers() const { return static_cast<int>(threads_.size()); }

 private:
  struct Job;
  void Help();

  std::mutex mu_;
  std::condition_variable work_;
  std::deque<Job*> jobs_;  // with ops left to take; guarded by mu_
  bool stop_ = false;      // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace kvtier::transfer
