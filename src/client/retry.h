#pragma once
// How CacheClient retries a call: which failures, how many attempts, how long it waits between
// them and how long a whole call may take (ClientOptions: max_attempts, initial_backoff_ms,
// max_backoff_ms, deadline_ms, total_deadline_ms). Internal to the client; tested on its own
// against a fake clock (retry_test.cc).

#include <chrono>
#include <cstdint>
#include <functional>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "common/clock.h"

namespace kvtier::client_internal {

// A point in time on the steady clock (or on a test's ManualClock, read through SteadyNow).
using Deadline = std::chrono::steady_clock::time_point;
inline constexpr Deadline kNoDeadline = Deadline::max();

// `clock`'s now as a steady_clock time point (exact for SystemClock, whose origin is
// steady_clock's).
inline Deadline SteadyNow(const Clock& clock) {
  return Deadline(std::chrono::microseconds(clock.NowMicros()));
}

// The earlier of `now + ms` and `cap`, without overflowing when `cap` is kNoDeadline.
inline Deadline EarlierOf(Deadline now, int64_t ms, Deadline cap) {
  const auto left = cap - now;
  const auto d = std::chrono::milliseconds(ms);
  return left <= d ? cap : now + d;
}

struct RetryPolicy {
  int max_attempts = 4;             // Default: 4. Attempts in all, the first included.
  int64_t attempt_ms = 30'000;      // Default: 30 s. Each attempt's own deadline.
  int64_t initial_backoff_ms = 50;  // Default: 50 ms. The first wait; doubled after each.
  int64_t max_backoff_ms = 5'000;   // Default: 5 s. No wait is longer.
};

// What a retry loop needs of the world. Tests pass a ManualClock and a sleep that advances it.
struct RetryEnv {
  const Clock* clock = SystemClock::Default();
  std::function<void(std::chrono::microseconds)> sleep;  // Default: sleep this thread.
  std::function<double()> uniform;                       // Default: uniform in [0, 1).
};

// Worth another attempt: UNAVAILABLE only (the daemon restarting or out of reach, a connection
// lost, a daemon shutting down). Every RPC of the client is idempotent, so an attempt may be
// repeated safely; everything else is the daemon's answer (or DEADLINE_EXCEEDED: an attempt
// that already spent its whole deadline) and is returned as it is.
bool IsRetryable(const absl::Status& status);

// The wait before attempt `n + 1` (n >= 1 attempts made): "equal jitter", half the backoff
// plus a random part of the other half, so that clients that failed together do not come back
// together, and none comes back at once. The backoff is initial_backoff_ms * 2^(n-1), capped at
// max_backoff_ms. `uniform` in [0, 1).
std::chrono::microseconds Backoff(const RetryPolicy& policy, int n, double uniform);

// Runs `attempt(attempt_deadline)` until it succeeds, fails with a status that is not
// retryable, max_attempts have been made, or `end` (the whole call's deadline) leaves no room
// for another attempt after the wait. Each attempt's deadline is the earlier of attempt_ms
// from its start and `end`. Returns the last attempt's status; DEADLINE_EXCEEDED when `end` had
// passed before the first.
absl::Status Retry(const RetryPolicy& policy, Deadline end, const RetryEnv& env,
                   absl::FunctionRef<absl::Status(Deadline attempt_deadline)> attempt);

}  // namespace kvtier::client_internal
