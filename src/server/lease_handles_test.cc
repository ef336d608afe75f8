#include "server/lease_handles.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "testing/test_util.h"

namespace kvtier::server {
namespace {

TEST(LeaseHandles, AHandleNamesItsLeaseOnlyUnderItsTenant) {
  LeaseHandles h;
  const uint64_t a =
      h.Issue({.id = 7, .bytes = 4096, .expires_at_us = 1'000, .tenant = "alice"}, 0);
  EXPECT_EQ(h.Take(a, "mallory"), std::nullopt) << "another tenant's handle";
  const auto lease = h.Take(a, "alice");
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->id, 7u);
  EXPECT_EQ(lease->bytes, 4096u);
  EXPECT_EQ(h.Take(a, "alice"), std::nullopt) << "taken once";
}

// The attack on the masked sequential ids: from its own handles, a tenant steps to a neighbour's.
// Random handles have no neighbours.
TEST(LeaseHandles, NeighbouringHandlesNameNothing) {
  LeaseHandles h;
  std::set<uint64_t> issued;
  for (uint64_t id = 1; id <= 1000; ++id)
    issued.insert(h.Issue({.id = id, .expires_at_us = 10, .tenant = id % 2 ? "alice" : "bob"}, 0));
  EXPECT_EQ(issued.size(), 1000u);
  EXPECT_EQ(issued.count(0), 0u);
  size_t found = 0;
  for (uint64_t handle : issued) {
    for (uint64_t step : {uint64_t{1}, uint64_t{2}, ~uint64_t{0}}) {
      if (!issued.contains(handle + step) && h.Take(handle + step, "alice").has_value()) ++found;
      if (!issued.contains(handle ^ step) && h.Take(handle ^ step, "alice").has_value()) ++found;
    }
  }
  EXPECT_EQ(found, 0u);
  EXPECT_EQ(h.size(), 1000u);
}

TEST(LeaseHandles, HandlesOfLapsedLeasesAreDropped) {
  LeaseHandles h;
  for (uint64_t id = 0; id < 5000; ++id)
    h.Issue({.id = id, .expires_at_us = 100, .tenant = "t"}, 0);
  // The others lapsed at 100.
  const uint64_t live = h.Issue({.id = 9'999, .expires_at_us = 10'000, .tenant = "t"}, 200);
  for (uint64_t id = 10'000; id < 15'000; ++id) {
    h.Issue({.id = id, .expires_at_us = 100'000, .tenant = "t"}, 200);
  }
  EXPECT_EQ(h.size(), 5001u) << "the 5,000 lapsed handles were swept as new ones came";
  const auto lease = h.Take(live, "t");
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->id, 9'999u);
}

// Blocks `ns` of `size` bytes each, as a lease records them.
std::vector<BlockInfo> Blocks(std::vector<uint64_t> ns, uint32_t size) {
  std::vector<BlockInfo> out;
  for (uint64_t n : ns) out.push_back({.key = testing::TestKey(n), .size = size});
  return out;
}

TEST(LeaseHandles, EachTenantsLeasedBytesCountItsLiveLeasesOnly) {
  LeaseHandles h;
  const uint64_t a1 =
      h.Issue({.id = 1, .expires_at_us = 1'000, .tenant = "a", .blocks = Blocks({1, 2}, 50)}, 0);
  h.Issue({.id = 2, .expires_at_us = 5'000, .tenant = "a", .blocks = Blocks({3}, 50)}, 0);
  h.Issue({.id = 3, .expires_at_us = 5'000, .tenant = "b", .blocks = Blocks({4}, 7)}, 0);
  EXPECT_EQ(h.TenantBytes("a", 0), 150u);
  EXPECT_EQ(h.TenantBytes("b", 0), 7u);
  EXPECT_FALSE(h.Take(a1, "b").has_value());
  EXPECT_EQ(h.TenantBytes("a", 0), 150u) << "another tenant's Take changes nothing";
  ASSERT_TRUE(h.Take(a1, "a").has_value());
  EXPECT_EQ(h.TenantBytes("a", 0), 50u);
  uint64_t held = 0, adding = 0;
  EXPECT_FALSE(
      h.IssueWithin({.id = 4, .tenant = "a", .blocks = Blocks({5}, 51)}, 0, 100, &held, &adding)
          .has_value());
  EXPECT_EQ(held, 50u);
  EXPECT_EQ(adding, 51u);
  EXPECT_TRUE(h.IssueWithin({.id = 5, .expires_at_us = 5'000, .tenant = "a",
                             .blocks = Blocks({5}, 50)},
                            0, 100, &held, &adding)
                  .has_value());
  EXPECT_EQ(h.TenantBytes("a", 0), 100u);
  EXPECT_EQ(h.TenantBytes("a", 5'000), 0u) << "lapsed at 5,000";
  EXPECT_EQ(h.TenantBytes("b", 5'000), 0u);
  EXPECT_EQ(h.size(), 0u);
}

// A block under many of a tenant's leases pins its bytes once: leasing it again and again
// within a one-block limit succeeds, and it counts until the last of those leases ends.
TEST(LeaseHandles, ABlockUnderManyLeasesCountsOnceAgainstTheTenantsLimit) {
  LeaseHandles h;
  constexpr uint64_t kLimit = 100;
  uint64_t held = 0, adding = 0;
  std::vector<uint64_t> handles;
  for (int i = 0; i < 5; ++i) {
    const auto handle = h.IssueWithin(
        {.id = 1, .expires_at_us = 9'000, .tenant = "a", .blocks = Blocks({1}, 100)}, 0, kLimit,
        &held, &adding);
    ASSERT_TRUE(handle.has_value()) << "lease " << i;
    EXPECT_EQ(adding, i == 0 ? 100u : 0u);
    handles.push_back(*handle);
  }
  EXPECT_EQ(h.TenantBytes("a", 0), 100u);
  // Another block does not fit; the same block under another tenant counts for that tenant.
  EXPECT_FALSE(h.IssueWithin({.id = 2, .tenant = "a", .blocks = Blocks({2}, 1)}, 0, kLimit,
                             &held, &adding)
                   .has_value());
  EXPECT_TRUE(h.IssueWithin({.id = 3, .expires_at_us = 9'000, .tenant = "b",
                             .blocks = Blocks({1}, 100)},
                            0, kLimit, &held, &adding)
                  .has_value());
  for (size_t i = 0; i + 1 < handles.size(); ++i) ASSERT_TRUE(h.Take(handles[i], "a"));
  EXPECT_EQ(h.TenantBytes("a", 0), 100u) << "one lease still holds the block";
  ASSERT_TRUE(h.Take(handles.back(), "a"));
  EXPECT_EQ(h.TenantBytes("a", 0), 0u);
  EXPECT_TRUE(h.IssueWithin({.id = 4, .expires_at_us = 9'000, .tenant = "a",
                             .blocks = Blocks({2}, 100)},
                            0, kLimit, &held, &adding)
                  .has_value());
}

}  // namespace
}  // namespace kvtier::server
