#pragma once
// TaskPool: a fixed set of threads that help callers run independent pieces of one request in
// parallel (a lease's NVMe reads, a worker request's reads from several nodes), so no request
// starts threads of its own. Thread-safe.

#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "common/mutex.h"

namespace kvtier {

class TaskPool {
 public:
  explicit TaskPool(int threads);
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Runs fn(i) for every i in [0, n) on the calling thread and idle pool threads; returns when
  // all have run.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  struct Job;
  void Help();

  Mutex mu_;
  CondVar work_;
  std::deque<Job*> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvtier
