// The client's retry loop against a fake that fails N times, on a ManualClock: no sleeping.
#include "client/retry.h"

#include <gtest/gtest.h>

#include <vector>

namespace kvtier::client_internal {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

// Fails its first `failures` calls with `code`, then succeeds; records each attempt's deadline.
struct FlakyCall {
  int failures = 0;
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  int calls = 0;
  std::vector<Deadline> deadlines;
  absl::Status operator()(Deadline d) {
    deadlines.push_back(d);
    return ++calls <= failures ? absl::Status(code, "flaky") : absl::OkStatus();
  }
};

class ClientRetryTest : public ::testing::Test {
 protected:
  ClientRetryTest() {
    env_.clock = &clock_;
    env_.sleep = [this](microseconds d) {
      sleeps_.push_back(d);
      clock_.AdvanceMicros(d.count());
    };
    env_.uniform = [this] { return uniform_; };
  }
  Deadline Now() const { return SteadyNow(clock_); }

  ManualClock clock_;
  RetryEnv env_;
  double uniform_ = 0.5;
  std::vector<microseconds> sleeps_;
};

TEST_F(ClientRetryTest, UnavailableIsRetriedUntilItSucceeds) {
  FlakyCall call{.failures = 3};
  const RetryPolicy p{.max_attempts = 4, .initial_backoff_ms = 100};
  EXPECT_TRUE(Retry(p, kNoDeadline, env_, std::ref(call)).ok());
  EXPECT_EQ(call.calls, 4);
  // Doubling waits, each half fixed and half jitter (uniform 0.5: three quarters of the backoff).
  EXPECT_EQ(sleeps_, (std::vector<microseconds>{microseconds(75'000), microseconds(150'000),
                                                microseconds(300'000)}));
}

TEST_F(ClientRetryTest, AttemptsRunOutWithTheLastStatus) {
  FlakyCall call{.failures = 10};
  const RetryPolicy p{.max_attempts = 3};
  absl::Status st = Retry(p, kNoDeadline, env_, std::ref(call));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(call.calls, 3);
  EXPECT_EQ(sleeps_.size(), 2u) << "no wait after the last attempt";
}

TEST_F(ClientRetryTest, OnlyUnavailableIsRetried) {
  for (absl::StatusCode code : {absl::StatusCode::kNotFound, absl::StatusCode::kDeadlineExceeded,
                                absl::StatusCode::kResourceExhausted, absl::StatusCode::kDataLoss,
                                absl::StatusCode::kUnauthenticated, absl::StatusCode::kInternal}) {
    FlakyCall call{.failures = 1, .code = code};
    EXPECT_EQ(Retry({}, kNoDeadline, env_, std::ref(call)).code(), code);
    EXPECT_EQ(call.calls, 1) << absl::StatusCodeToString(code);
  }
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(ClientRetryTest, JitterStaysWithinHalfAndAllOfTheBackoffAndIsCapped) {
  const RetryPolicy p{.initial_backoff_ms = 100, .max_backoff_ms = 1'000};
  EXPECT_EQ(Backoff(p, 1, 0.0), microseconds(50'000));
  EXPECT_EQ(Backoff(p, 1, 0.999999), microseconds(99'999));
  EXPECT_EQ(Backoff(p, 3, 0.0), microseconds(200'000));
  EXPECT_EQ(Backoff(p, 5, 0.0), microseconds(500'000)) << "1600 ms capped at 1000";
  EXPECT_EQ(Backoff(p, 60, 0.0), microseconds(500'000)) << "no overflow";
  // The real source of randomness spreads the waits.
  RetryEnv real;
  real.clock = &clock_;
  real.sleep = env_.sleep;
  FlakyCall call{.failures = 8};
  ASSERT_TRUE(
      Retry({.max_attempts = 9, .initial_backoff_ms = 100}, kNoDeadline, real, std::ref(call))
          .ok());
  ASSERT_EQ(sleeps_.size(), 8u);
  bool varied = false;
  for (size_t i = 0; i < sleeps_.size(); ++i) {
    const int64_t full = std::min<int64_t>(100'000 << i, 5'000'000);
    EXPECT_GE(sleeps_[i].count(), full / 2) << i;
    EXPECT_LE(sleeps_[i].count(), full) << i;
    varied |= sleeps_[i].count() != full * 3 / 4;
  }
  EXPECT_TRUE(varied);
}

TEST_F(ClientRetryTest, TheOverallDeadlineEndsRetriesAndCapsEachAttempt) {
  // Attempts of 1 s within a call of 1.2 s: the first runs to its own deadline, the second is cut
  // at the call's, and the waits (75 ms, 150 ms, 300 ms, ...) stop once the next attempt could
  // only start at or after it.
  FlakyCall call{.failures = 100};
  const RetryPolicy p{.max_attempts = 100, .attempt_ms = 1'000, .initial_backoff_ms = 100};
  const Deadline start = Now(), end = start + milliseconds(1'200);
  auto timed = [&](Deadline d) {
    absl::Status st = call(d);
    clock_.AdvanceMicros(200'000);  // each attempt takes 200 ms before failing
    return st;
  };
  absl::Status st = Retry(p, end, env_, timed);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << "the last attempt's status";
  // 0 ms: attempt (to 200), wait 75 -> 275: attempt (to 475), wait 150 -> 625: attempt (to 825),
  // wait 300 -> 1125: attempt (to 1325, cut at 1200 by its deadline); no more.
  ASSERT_EQ(call.calls, 4);
  EXPECT_EQ(call.deadlines[0], start + milliseconds(1'000));
  EXPECT_EQ(call.deadlines[3], end) << "capped by the call's deadline";
  EXPECT_LE(Now(), end + milliseconds(200));

  // A deadline already past: nothing is sent.
  FlakyCall never;
  EXPECT_EQ(Retry(p, Now(), env_, std::ref(never)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(never.calls, 0);
}

TEST_F(ClientRetryTest, EarlierOfNeverOverflows) {
  const Deadline now = Now();
  EXPECT_EQ(EarlierOf(now, 10, kNoDeadline), now + milliseconds(10));
  EXPECT_EQ(EarlierOf(now, 10, now + milliseconds(5)), now + milliseconds(5));
  EXPECT_EQ(EarlierOf(now, INT64_MAX / 2'000'000, kNoDeadline),
            now + milliseconds(INT64_MAX / 2'000'000));
}

}  // namespace
}  // namespace kvtier::client_internal
