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

// The refusal of a connection's first reservation erases its entry; the error must not read the
// count from the erased entry (fuzz/corpus/put_stream_fuzzer/crash-7ebad923...: ASan reported a
// use-after-poison in Acquire).
TEST(InflightBytes, ANewConnectionsRefusalNamesWhatItHolds) {
  InflightBytes b(/*total_limit=*/12 << 20, /*per_connection_limit=*/8 << 20);
  EXPECT_EQ(b.Acquire("new", (8 << 20) + 1).message(),
            "this connection has 0 bytes in flight; 8388609 more would pass the limit of 8388608 "
            "(limits.max_inflight_mib_per_connection)");
  ASSERT_TRUE(b.Acquire("first", 8 << 20).ok());
  EXPECT_NE(b.Acquire("second", (8 << 20) + 1).message().find("0 bytes in flight"),
            std::string::npos);
  EXPECT_NE(b.Acquire("third", 5 << 20).message().find("the daemon has 8388608 bytes in flight"),
            std::string::npos);
  EXPECT_EQ(b.total(), uint64_t{8} << 20);
}

}  // namespace
}  // namespace kvtier::server
