#include "server/idle_watchdog.h"

#include <algorithm>

namespace kvtier::server {

IdleWatchdog::IdleWatchdog(std::chrono::milliseconds timeout) : timeout_(timeout) {
  if (timeout_.count() > 0) thread_ = std::thread([this] { Run(); });
}

IdleWatchdog::~IdleWatchdog() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t IdleWatchdog::NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

IdleWatchdog::Watch IdleWatchdog::Arm(grpc::ServerContext* ctx) {
  Watch w;
  if (timeout_.count() == 0) return w;
  w.owner_ = this;
  w.state_ = std::make_unique<Watch::State>();
  w.state_->ctx = ctx;
  w.state_->idle_since_ns.store(NowNs(), std::memory_order_relaxed);
  std::lock_guard l(mu_);
  watched_.insert(w.state_.get());
  return w;
}

IdleWatchdog::Watch::~Watch() {
  if (owner_ == nullptr || state_ == nullptr) return;
  std::lock_guard l(owner_->mu_);  // the checker holds it while it cancels
  owner_->watched_.erase(state_.get());
}

void IdleWatchdog::Watch::Touch() {
  if (state_ != nullptr) state_->idle_since_ns.store(NowNs(), std::memory_order_relaxed);
}

void IdleWatchdog::Watch::Pause() {
  if (state_ != nullptr) state_->idle_since_ns.store(kPaused, std::memory_order_relaxed);
}

bool IdleWatchdog::Watch::fired() const {
  return state_ != nullptr && state_->fired.load(std::memory_order_relaxed);
}

void IdleWatchdog::Run() {
  // A call is cancelled between one and 1.25 timeouts after it last moved.
  const auto period = std::clamp(timeout_ / 4, std::chrono::milliseconds(5),
                                 std::chrono::milliseconds(1000));
  const int64_t timeout_ns = std::chrono::nanoseconds(timeout_).count();
  std::unique_lock l(mu_);
  while (!cv_.wait_for(l, period, [this] { return stop_; })) {
    const int64_t now = NowNs();
    for (Watch::State* s : watched_) {
      const int64_t since = s->idle_since_ns.load(std::memory_order_relaxed);
      if (since == kPaused || now - since < timeout_ns || s->fired.load()) continue;
      s->fired.store(true);
      s->ctx->TryCancel();
      cancelled_.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

}  // namespace kvtier::server
