#pragma once
// Mutex, MutexLock and CondVar: std::mutex with Abseil's thread-safety annotations, so
// ABSL_GUARDED_BY works on members. kvtier uses this instead of absl::Mutex because Debian's Abseil
// is built without ThreadSanitizer hooks, which makes every absl::Mutex-protected access a false
// report under -fsanitize=thread; pthread mutexes are understood by it.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace kvtier {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { m_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { m_.unlock(); }
  // Takes the lock only if no one holds it: for work that may be skipped rather than waited for.
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return m_.try_lock(); }

 private:
  friend class CondVar;
  std::mutex m_;
};

// A condition variable over a Mutex.
class CondVar {
 public:
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> l(mu->m_, std::adopt_lock);
    cv_.wait(l);
    l.release();
  }
  // False when `micros` passed without a signal.
  bool WaitFor(Mutex* mu, int64_t micros) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> l(mu->m_, std::adopt_lock);
    const bool signalled =
        cv_.wait_for(l, std::chrono::microseconds(micros)) == std::cv_status::no_timeout;
    l.release();
    return signalled;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* mu_;
};

}  // namespace kvtier
