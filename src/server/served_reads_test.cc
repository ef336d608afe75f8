// Served reads' authorization against a real store: a lease handle covers the ranges of its own
// blocks and nothing else, and the blocks it reads stay pinned while the grant lives.
#include "server/served_reads.h"

#include <gtest/gtest.h>

#include "cache/block_store_test_util.h"

namespace kvtier::server {
namespace {

using ::kvtier::testing::kBlock;
using ::kvtier::testing::OpenOrDie;
using ::kvtier::testing::PutN;
using ::kvtier::testing::SmallOptions;
using ::kvtier::testing::TestKey;
using transfer::RegionRange;

class ServedReads : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = OpenOrDie(SmallOptions(8));
    for (uint64_t n = 0; n < 4; ++n) ASSERT_TRUE(PutN(*store_, n).ok());
  }
  // A handle for a lease of blocks `ns`, as the service issues it.
  uint64_t LeaseOf(std::vector<uint64_t> ns, const std::string& tenant,
                   std::vector<BlockInfo>* blocks = nullptr) {
    std::vector<BlockKey> keys;
    for (uint64_t n : ns) keys.push_back(TestKey(n));
    auto grant = store_->Lease(keys);
    EXPECT_TRUE(grant.ok()) << grant.status();
    if (blocks != nullptr) *blocks = grant->blocks;
    return handles_.Issue({.id = grant->id,
                           .expires_at_us = kNow + 1000,
                           .tenant = tenant,
                           .blocks = SortedByPlace(grant->blocks)},
                          kNow);
  }
  absl::Status Check(uint64_t handle, std::vector<RegionRange> ranges, int64_t now = kNow) {
    return AuthorizeServedRead(handles_, store_.get(), now, handle, ranges).status();
  }

  static constexpr int64_t kNow = 5'000'000;
  std::unique_ptr<BlockStore> store_;
  LeaseHandles handles_;
};

TEST_F(ServedReads, AHandleCoversTheRangesOfItsOwnBlocksOnly) {
  std::vector<BlockInfo> mine, theirs;
  const uint64_t a = LeaseOf({0, 1}, "alice", &mine);
  const uint64_t b = LeaseOf({2}, "bob", &theirs);
  const uint64_t at0 = mine[0].location, at1 = mine[1].location, other = theirs[0].location;
  EXPECT_TRUE(Check(a, {{at0, kBlock}, {at1 + 100, 200}, {at0 + kBlock - 1, 1}}).ok());
  EXPECT_TRUE(Check(b, {{other, kBlock}}).ok());
  // Another tenant's block, under one's own handle.
  EXPECT_EQ(Check(a, {{other, kBlock}}).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Check(a, {{other + 10, 1}}).code(), absl::StatusCode::kPermissionDenied);
  // A good range beside a bad one: the whole read is refused.
  EXPECT_EQ(Check(a, {{at0, kBlock}, {other, 1}}).code(), absl::StatusCode::kPermissionDenied);
  // Partly outside the block, and across two leased blocks even where they touch.
  EXPECT_EQ(Check(a, {{at0 + kBlock - 10, 20}}).code(), absl::StatusCode::kPermissionDenied);
  if (at1 == at0 + kBlock) {
    EXPECT_EQ(Check(a, {{at0 + kBlock - 10, 20}}).code(), absl::StatusCode::kPermissionDenied);
  }
  // Empty, wrapping, and far beyond anything.
  EXPECT_EQ(Check(a, {{at0, 0}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check(a, {{at0 + 8, ~uint64_t{0}}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check(a, {{~uint64_t{0} - 4, 4}}).code(), absl::StatusCode::kPermissionDenied);
  // Handles that are not a live lease: unknown, lapsed, released.
  EXPECT_EQ(Check(a ^ 1, {{at0, 1}}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Check(a, {{at0, 1}}, kNow + 1000).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(handles_.Take(a, "alice").has_value());
  EXPECT_EQ(Check(a, {{at0, 1}}).code(), absl::StatusCode::kNotFound);
}

TEST_F(ServedReads, AGrantPinsWhatItReadsAndAMovedBlockIsNotFound) {
  std::vector<BlockInfo> mine;
  const uint64_t a = LeaseOf({0}, "alice", &mine);
  auto grant = AuthorizeServedRead(handles_, store_.get(), kNow, a,
                                   std::vector<RegionRange>{{mine[0].location, 8}});
  ASSERT_TRUE(grant.ok()) << grant.status();
  // The lease ends and the block is deleted while its bytes are still being sent: its place is
  // not reused until the grant ends, however many blocks come.
  const auto lease = handles_.Take(a, "alice");
  ASSERT_TRUE(store_->Release(lease->id).ok());
  ASSERT_TRUE(store_->Delete(TestKey(0)).ok());
  for (uint64_t n = 10; n < 30; ++n) ASSERT_TRUE(PutN(*store_, n).ok());
  const uint8_t* at = store_->host_arena_base() + mine[0].location;
  EXPECT_EQ(std::vector<uint8_t>(at, at + kBlock), testing::TestBlock(0, kBlock));
  grant->reset();
  EXPECT_TRUE(store_->CheckConsistency().ok()) << store_->CheckConsistency();
  // A handle whose block was deleted meanwhile (the lease ended): nothing to pin.
  const uint64_t stale = handles_.Issue(
      {.id = 0, .expires_at_us = kNow + 1000, .tenant = "alice", .blocks = SortedByPlace(mine)}, kNow);
  EXPECT_EQ(Check(stale, {{mine[0].location, 8}}).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier::server
