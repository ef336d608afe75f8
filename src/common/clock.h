#pragma once
// Time source for everything that expires (leases, admission budgets). Tests inject ManualClock so
// that expiry is exact and instant. Both implementations are thread-safe.

#include <atomic>
#include <chrono>
#include <cstdint>

namespace kvtier {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic microseconds from an arbitrary origin.
  virtual int64_t NowMicros() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t NowMicros() const override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static SystemClock* Default() {
    static SystemClock clock;
    return &clock;
  }
};

// A clock that moves only when told to.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_micros = 1'000'000) : now_(start_micros) {}
  int64_t NowMicros() const override { return now_.load(std::memory_order_relaxed); }
  void AdvanceMicros(int64_t delta) { now_.fetch_add(delta, std::memory_order_relaxed); }
  void AdvanceSeconds(double s) { AdvanceMicros(static_cast<int64_t>(s * 1e6)); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace kvtier
