#include "server/inflight.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

namespace kvtier::server {
namespace {

// A size near 2^64 from a client must not wrap past a limit: with G bytes held, 2^64 - G + 1
// made `held + n` small once.
TEST(InflightBytes, ASizeThatWouldWrapIsRefused) {
  InflightBytes b(/*total_limit=*/16 << 20, /*per_connection_limit=*/8 << 20,
                  /*per_tenant_limit=*/16 << 20);
  ASSERT_TRUE(b.Acquire("peer", 1, 1 << 20).ok());
  const uint64_t wrap = std::numeric_limits<uint64_t>::max() - (1 << 20) + 2;
  EXPECT_EQ(b.Acquire("peer", 1, wrap).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b.Acquire("other", 1, std::numeric_limits<uint64_t>::max()).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b.total(), uint64_t{1} << 20) << "a refused reservation holds nothing";
  ASSERT_TRUE(b.Acquire("other", 2, 8 << 20).ok());
  EXPECT_EQ(b.Acquire("third", 3, (7 << 20) + 1).code(), absl::StatusCode::kResourceExhausted)
      << "the total's limit";
  b.Release("peer", 1, 1 << 20);
  b.Release("other", 2, 8 << 20);
  EXPECT_EQ(b.total(), 0u);
}

// One tenant's reservations, on however many connections, stop at its own limit; another
// tenant's still pass.
TEST(InflightBytes, ATenantStopsAtItsOwnLimit) {
  InflightBytes b(/*total_limit=*/64 << 20, /*per_connection_limit=*/8 << 20,
                  /*per_tenant_limit=*/16 << 20);
  ASSERT_TRUE(b.Acquire("c1", 1, 8 << 20).ok());
  ASSERT_TRUE(b.Acquire("c2", 1, 8 << 20).ok());
  const absl::Status third = b.Acquire("c3", 1, 1);
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.message().find("limits.max_inflight_mib_per_tenant"), std::string::npos)
      << third;
  EXPECT_TRUE(b.Acquire("c3", 2, 8 << 20).ok()) << "another tenant is not held up";
  EXPECT_EQ(b.tenant_total(1), uint64_t{16} << 20);
  b.Release("c1", 1, 8 << 20);
  EXPECT_TRUE(b.Acquire("c4", 1, 1).ok());
  EXPECT_EQ(b.tenant_total(1), (uint64_t{8} << 20) + 1);
}

// The refusal of a connection's first reservation erases its entry; the error must not read the
// count from the erased entry (fuzz/corpus/put_stream_fuzzer/crash-7ebad923...: ASan reported a
// use-after-poison in Acquire).
TEST(InflightBytes, ANewConnectionsRefusalNamesWhatItHolds) {
  InflightBytes b(/*total_limit=*/12 << 20, /*per_connection_limit=*/8 << 20,
                  /*per_tenant_limit=*/64 << 20);
  EXPECT_EQ(b.Acquire("new", 1, (8 << 20) + 1).message(),
            "this connection has 0 bytes in flight; 8388609 more would pass the limit of 8388608 "
            "(limits.max_inflight_mib_per_connection)");
  ASSERT_TRUE(b.Acquire("first", 1, 8 << 20).ok());
  EXPECT_NE(b.Acquire("second", 1, (8 << 20) + 1).message().find("0 bytes in flight"),
            std::string::npos);
  EXPECT_NE(b.Acquire("third", 1, 5 << 20).message().find("the daemon has 8388608 bytes in flight"),
            std::string::npos);
  EXPECT_EQ(b.total(), uint64_t{8} << 20);
}

}  // namespace
}  // namespace kvtier::server
