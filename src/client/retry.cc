#include "client/retry.h"

#include <algorithm>
#include <random>
#include <thread>

namespace kvtier::client_internal {

bool IsRetryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable;
}

std::chrono::microseconds Backoff(const RetryPolicy& policy, int n, double uniform) {
  int64_t ms = std::max<int64_t>(policy.initial_backoff_ms, 0);
  for (int i = 1; i < n && ms < policy.max_backoff_ms; ++i) ms *= 2;
  ms = std::min(ms, policy.max_backoff_ms);
  const int64_t micros = ms * 1000;
  return std::chrono::microseconds(micros / 2 + static_cast<int64_t>(uniform * (micros / 2)));
}

namespace {

double Uniform() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return std::uniform_real_distribution<double>(0, 1)(rng);
}

}  // namespace

absl::Status Retry(const RetryPolicy& policy, Deadline end, const RetryEnv& env,
                   absl::FunctionRef<absl::Status(Deadline attempt_deadline)> attempt) {
  Deadline now = SteadyNow(*env.clock);
  if (now >= end) return absl::DeadlineExceededError("the call's deadline passed before it began");
  absl::Status last;
  for (int n = 1;; ++n) {
    last = attempt(EarlierOf(now, policy.attempt_ms, end));
    if (!IsRetryable(last) || n >= policy.max_attempts) return last;
    const auto wait = Backoff(policy, n, env.uniform ? env.uniform() : Uniform());
    now = SteadyNow(*env.clock);
    // No attempt that could only start at or after the call's deadline.
    if (end - now <= wait) return last;
    if (env.sleep) {
      env.sleep(wait);
    } else {
      std::this_thread::sleep_for(wait);
    }
    now = SteadyNow(*env.clock);
  }
}

}  // namespace kvtier::client_internal
