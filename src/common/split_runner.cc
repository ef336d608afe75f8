#include "common/split_runner.h"

namespace kvtier {

SplitRunner::SplitRunner() : thread_([this] { Loop(); }) {}

SplitRunner::~SplitRunner() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool SplitRunner::Run(absl::FunctionRef<void()> mine, absl::FunctionRef<void()> theirs) {
  bool split = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!busy_) {
      busy_ = true;
      job_ = &theirs;
      split = true;
    }
  }
  if (!split) {
    mine();
    theirs();
    return false;
  }
  cv_.notify_all();
  mine();
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [this] { return job_ == nullptr; });
  busy_ = false;
  return true;
}

void SplitRunner::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [this] { return stop_ || job_ != nullptr; });
    if (job_ == nullptr) return;  // stopping, and nothing left to run
    const absl::FunctionRef<void()>* job = job_;
    l.unlock();
    (*job)();
    l.lock();
    job_ = nullptr;
    cv_.notify_all();
  }
}

}  // namespace kvtier
