#include "transfer/copy_pool.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "common/checksum.h"

namespace kvtier::transfer {

struct CopyPool::Job {
  std::span<const CopyOp> ops;
  std::atomic<size_t> next{0};  // the next op to take
  std::mutex mu;
  std::condition_variable finished;
  bool helper_done = false;  // the helper that took this job touches it no more; guarded by mu

  // Takes and copies ops until none is left.
  void Work() {
    for (size_t i; (i = next.fetch_add(1)) < ops.size();) {
      const CopyOp& op = ops[i];
      if (op.checksum != nullptr) {
        *op.checksum = CopyWithChecksum(op.dst, op.src, op.length);
      } else {
        CopyBytes(op.dst, op.src, op.length);
      }
    }
  }
};

CopyPool& CopyPool::Shared() {
  static auto* pool = new CopyPool(
      static_cast<int>(std::min(7u, std::max(1u, std::thread::hardware_concurrency()) - 1)));
  return *pool;  // never destroyed: readers may run until exit
}

CopyPool::CopyPool(int helpers) {
  for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { Help(); });
}

CopyPool::~CopyPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_.notify_all();
  for (auto& t : threads_) t.join();
}

void CopyPool::Run(std::span<const CopyOp> ops) {
  size_t bytes = 0;
  for (const CopyOp& op : ops) bytes += op.length;
  Job job;
  job.ops = ops;
  const bool shared = !threads_.empty() && ops.size() > 1 && bytes >= kMinParallelBytes;
  if (shared) {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(&job);
    }
    work_.notify_one();
  }
  job.Work();
  if (!shared) return;
  bool taken = true;
  {
    std::lock_guard lock(mu_);
    auto it = std::find(jobs_.begin(), jobs_.end(), &job);
    if (it != jobs_.end()) {  // no helper came: every op was the caller's
      jobs_.erase(it);
      taken = false;
    }
  }
  if (!taken) return;
  // The helper may still be copying its last op.
  std::unique_lock lock(job.mu);
  job.finished.wait(lock, [&] { return job.helper_done; });
}

void CopyPool::Help() {
  std::unique_lock lock(mu_);
  for (;;) {
    work_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    Job* job = jobs_.front();
    jobs_.pop_front();  // one helper a job: the caller works on it too
    lock.unlock();
    job->Work();
    {
      std::lock_guard done(job->mu);
      job->helper_done = true;
      job->finished.notify_all();
    }  // the caller may now return and drop the job
    lock.lock();
  }
}

}  // namespace kvtier::transfer
