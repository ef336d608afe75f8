#include "server/inflight.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

namespace kvtier::server {
namespace {

// A size near 2^64 from a client must not wrap past a limit: with G bytes held, 2^64 - G + 1
// made `held + n` small once.
TEST(InflightBytes, ASizeThatWouldWrapIsRefused) {
  InflightBytes b(/*total_limit=*/16 << 20, /*per_connection_limit=*/8 << 20);
  ASSERT_TRUE(b.Acquire("peer", 1 << 20).ok());
  const uint64_t wrap = std::numeric_limits<uint64_t>::max() - (1 << 20) + 2;
  EXPECT_EQ(b.Acquire("peer", wrap).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b.Acquire("other", std::numeric_limits<uint64_t>::max()).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b.total(), uint64_t{1} << 20) << "a refused reservation holds nothing";
  ASSERT_TRUE(b.Acquire("other", 8 << 20).ok());
  EXPECT_EQ(b.Acquire("third", (7 << 20) + 1).code(), absl::StatusCode::kResourceExhausted)
      << "the total's limit";
  b.Release("peer", 1 << 20);
  b.Release("other", 8 << 20);
  EXPECT_EQ(b.total(), 0u);
}

}  // namespace
}  // namespace kvtier::server
