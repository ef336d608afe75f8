#pragma once
// IdleWatchdog: cancels calls whose stream stopped moving. A Put stream that sends no message,
// or a Get whose client reads nothing (its writes stay blocked), for longer than the timeout is
// cancelled (grpc::ServerContext::TryCancel): its blocked Read or Write then returns and what it
// held (a reservation in the host tier, in-flight bytes) is given back. Without it, a client that
// stops mid-block holds those forever. One thread checks every watched call a few times per
// timeout. Thread-safe.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/container/flat_hash_set.h"

namespace kvtier::server {

class IdleWatchdog {
 public:
  // A zero timeout watches nothing.
  explicit IdleWatchdog(std::chrono::milliseconds timeout);
  ~IdleWatchdog();
  IdleWatchdog(const IdleWatchdog&) = delete;
  IdleWatchdog& operator=(const IdleWatchdog&) = delete;

  // One watched call, from Watch() until destroyed. Moving now and then is the caller's part:
  // Touch() when the stream moved; Pause() while it may rightly stay still (a session waiting
  // for its next request), until the next Touch().
  class Watch {
   public:
    Watch() = default;
    Watch(Watch&&) noexcept = default;
    Watch& operator=(Watch&&) = delete;
    ~Watch();
    void Touch();
    void Pause();
    // The watchdog cancelled the call.
    bool fired() const;

   private:
    friend class IdleWatchdog;
    struct State {
      grpc::ServerContext* ctx = nullptr;
      std::atomic<int64_t> idle_since_ns{0};  // kPaused: not checked
      std::atomic<bool> fired{false};
    };
    IdleWatchdog* owner_ = nullptr;
    std::unique_ptr<State> state_;
  };

  // Watches `ctx`'s call, idle from now.
  Watch Arm(grpc::ServerContext* ctx);
  std::chrono::milliseconds timeout() const { return timeout_; }
  // Calls cancelled so far.
  uint64_t cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  static constexpr int64_t kPaused = INT64_MAX;
  static int64_t NowNs();
  void Run();

  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                       // guarded by mu_
  absl::flat_hash_set<Watch::State*> watched_;  // guarded by mu_
  std::atomic<uint64_t> cancelled_{0};
  std::thread thread_;
};

}  // namespace kvtier::server
