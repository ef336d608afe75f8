#include "common/task_pool.h"

#include <algorithm>

namespace kvtier {

struct TaskPool::Job {
  const std::function<void(size_t)>* fn;
  size_t n;
  std::atomic<size_t> next{0};
  size_t helpers = 0;  // pool threads inside Work; guarded by TaskPool::mu_
  CondVar done;

  void Work() {
    for (size_t i; (i = next.fetch_add(1)) < n;) (*fn)(i);
  }
};

TaskPool::TaskPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Help(); });
}

TaskPool::~TaskPool() {
  {
    MutexLock l(&mu_);
    stopping_ = true;
  }
  work_.SignalAll();
  for (std::thread& t : threads_) t.join();
}

void TaskPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  Job job{&fn, n};
  if (n > 1 && !threads_.empty()) {
    MutexLock l(&mu_);
    jobs_.push_back(&job);
  }
  work_.SignalAll();
  job.Work();
  MutexLock l(&mu_);
  jobs_.erase(std::remove(jobs_.begin(), jobs_.end(), &job), jobs_.end());
  while (job.helpers > 0) job.done.Wait(&mu_);
}

void TaskPool::Help() {
  mu_.Lock();
  for (;;) {
    while (!stopping_ && jobs_.empty()) work_.Wait(&mu_);
    if (stopping_) break;
    Job* job = jobs_.front();
    jobs_.pop_front();  // one helper per job at a time is enough to spread a few reads
    if (job->next.load() < job->n) jobs_.push_back(job);
    ++job->helpers;
    mu_.Unlock();
    job->Work();
    mu_.Lock();
    if (--job->helpers == 0) job->done.SignalAll();
  }
  mu_.Unlock();
}

}  // namespace kvtier
