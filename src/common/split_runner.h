#pragma once
// SplitRunner: a thread kept for halving the latency of one large piece of work at a time.

#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/functional/function_ref.h"

namespace kvtier {

class SplitRunner {
 public:
  SplitRunner();
  ~SplitRunner();  // after the Run in progress, if any, has returned
  SplitRunner(const SplitRunner&) = delete;
  SplitRunner& operator=(const SplitRunner&) = delete;

  // Runs `mine` on the calling thread and `theirs` on the runner's thread at the same time, and
  // returns when both have. When the runner is busy with another caller's work, `theirs` runs
  // on the calling thread after `mine` instead: under load the split adds no waiting. Returns
  // whether `theirs` ran on the runner's thread. Any thread.
  bool Run(absl::FunctionRef<void()> mine, absl::FunctionRef<void()> theirs);

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;                               // a caller owns the runner (guarded by mu_)
  const absl::FunctionRef<void()>* job_ = nullptr;  // set until the runner has run it (mu_)
  bool stop_ = false;                               // guarded by mu_
  std::thread thread_;
};

}  // namespace kvtier
