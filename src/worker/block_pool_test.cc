#include "worker/block_pool.h"

#include <gtest/gtest.h>

#include <thread>

namespace kvtier::worker {
namespace {

BlockKey Key(uint64_t n) { return BlockKey{n, n * 7 + 1}; }

BlockPool::Need NeedOf(uint64_t n, uint32_t layer, std::vector<uint32_t> wanted) {
  return {.key = Key(n), .layer = layer, .unit_bytes = 400, .slices = 4, .wanted = wanted};
}

TEST(BlockPool, SlicesAreFetchedOnceThenServedFromThePool) {
  BlockPool pool(1 << 20);
  const BlockPool::Need needs[] = {NeedOf(1, 0, {0, 2})};
  auto first = pool.Acquire(needs);
  EXPECT_EQ(first[0].fetch, (std::vector<uint32_t>{0, 2}));
  EXPECT_EQ(first[0].present_bytes, 0u);
  pool.Settle(first, /*ok=*/true);
  const BlockPool::Need more[] = {NeedOf(1, 0, {0, 1, 2})};
  auto second = pool.Acquire(more);
  EXPECT_EQ(second[0].fetch, (std::vector<uint32_t>{1})) << "only the slice not there yet";
  EXPECT_EQ(second[0].present_bytes, 200u);
  EXPECT_EQ(second[0].unit, first[0].unit);
  pool.Settle(second, /*ok=*/false);
  auto third = pool.Acquire(more);
  EXPECT_EQ(third[0].fetch, (std::vector<uint32_t>{1})) << "a failed fetch leaves it absent";
}

// Units are named for copies kept elsewhere: a serial per unit, a version that grows when slices
// arrive (and not when a fetch fails or nothing was fetched).
TEST(BlockPool, UnitsHaveASerialAndAVersionThatFollowsArrivals) {
  BlockPool pool(1 << 20);
  const BlockPool::Need needs[] = {NeedOf(1, 0, {0}), NeedOf(2, 0, {0})};
  auto first = pool.Acquire(needs);
  EXPECT_NE(first[0].unit->serial, first[1].unit->serial);
  EXPECT_EQ(first[0].unit->version.load(), 0u);
  pool.Settle(first, true);
  EXPECT_EQ(first[0].unit->version.load(), 1u);
  const BlockPool::Need again[] = {NeedOf(1, 0, {0})};
  pool.Settle(pool.Acquire(again), true);  // present: nothing fetched
  EXPECT_EQ(first[0].unit->version.load(), 1u);
  const BlockPool::Need more[] = {NeedOf(1, 0, {1})};
  pool.Settle(pool.Acquire(more), false);
  EXPECT_EQ(first[0].unit->version.load(), 1u);
  pool.Settle(pool.Acquire(more), true);
  EXPECT_EQ(first[0].unit->version.load(), 2u);
}

int live_buffers = 0;
void* CountedAlloc(size_t bytes) {
  ++live_buffers;
  return ::operator new(bytes);
}
void CountedFree(void* p) {
  --live_buffers;
  ::operator delete(p);
}

TEST(BlockPool, UnitBuffersComeFromTheGivenMemory) {
  {
    BlockPool pool(1000, /*spare_bytes=*/0, {.alloc = CountedAlloc, .free = CountedFree});
    const BlockPool::Need a[] = {NeedOf(1, 0, {0}), NeedOf(2, 0, {0})};
    auto claims = pool.Acquire(a);
    EXPECT_EQ(live_buffers, 2);
    pool.Settle(claims, true);
  }
  EXPECT_EQ(live_buffers, 0) << "and go back to it";
}

TEST(BlockPool, TheLeastRecentUnitsGoPastCapacityButLiveOnInTheirClaims) {
  BlockPool pool(1000);  // two units of 400 bytes fit, a third does not
  const BlockPool::Need a[] = {NeedOf(1, 0, {0})}, b[] = {NeedOf(2, 0, {0})},
                        c[] = {NeedOf(3, 0, {0})};
  auto ca = pool.Acquire(a);
  pool.Settle(ca, true);
  pool.Settle(pool.Acquire(b), true);
  pool.Acquire(a);  // 1 is now the most recent
  auto cc = pool.Acquire(c);
  EXPECT_EQ(pool.stats().units, 2u);
  EXPECT_EQ(pool.stats().evictions, 1u);
  EXPECT_TRUE(pool.Acquire(a)[0].fetch.empty()) << "1 stayed";
  EXPECT_EQ(pool.Acquire(b)[0].fetch.size(), 1u) << "2 went";
  EXPECT_EQ(ca[0].unit->size, 400u) << "a claim keeps its unit";
}

TEST(BlockPool, ASecondRequestWaitsForTheFirstsFetchInsteadOfFetchingAgain) {
  BlockPool pool(1 << 20);
  const BlockPool::Need needs[] = {NeedOf(1, 0, {0, 1})};
  auto first = pool.Acquire(needs);
  auto second = pool.Acquire(needs);
  EXPECT_TRUE(second[0].fetch.empty());
  EXPECT_EQ(second[0].wait.size(), 2u);
  std::thread fetcher([&] {
    first[0].unit->data[0] = 42;
    pool.Settle(first, true);
  });
  ASSERT_TRUE(
      pool.AwaitOthers(second, std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  fetcher.join();
  EXPECT_TRUE(second[0].fetch.empty());
  EXPECT_EQ(second[0].present_bytes, 200u);
  EXPECT_EQ(second[0].unit->data[0], 42);
}

TEST(BlockPool, AFailedFetchHandsTheSlicesToTheWaiter) {
  BlockPool pool(1 << 20);
  const BlockPool::Need needs[] = {NeedOf(1, 0, {3})};
  auto first = pool.Acquire(needs);
  auto second = pool.Acquire(needs);
  pool.Settle(first, /*ok=*/false);
  ASSERT_TRUE(pool.AwaitOthers(second, std::chrono::steady_clock::now() + std::chrono::seconds(1)));
  EXPECT_EQ(second[0].fetch, (std::vector<uint32_t>{3})) << "now claimed by the waiter";
  EXPECT_EQ(pool.Acquire(needs)[0].wait.size(), 1u);
}

TEST(BlockPool, WaitingEndsAtTheDeadline) {
  BlockPool pool(1 << 20);
  const BlockPool::Need needs[] = {NeedOf(1, 0, {0})};
  auto first = pool.Acquire(needs);
  auto second = pool.Acquire(needs);
  EXPECT_FALSE(
      pool.AwaitOthers(second, std::chrono::steady_clock::now() + std::chrono::milliseconds(20)));
}

}  // namespace
}  // namespace kvtier::worker

namespace kvtier::worker {
namespace {

TEST(BlockPool, BuffersOfGoneUnitsAreReusedUpToTheSpareCap) {
  BlockPool pool(/*capacity_bytes=*/0, /*spare_bytes=*/800);
  const BlockPool::Need needs[] = {NeedOf(1, 0, {0}), NeedOf(2, 0, {0}), NeedOf(3, 0, {0})};
  {
    auto claims = pool.Acquire(needs);
    EXPECT_EQ(pool.stats().units, 0u) << "no capacity: nothing is kept as a unit";
  }
  EXPECT_EQ(pool.stats().spare_bytes, 800u) << "two of the three buffers fit the spare cap";
  auto again = pool.Acquire(std::span(needs).first(1));
  EXPECT_NE(again[0].unit->data.get(), nullptr);
  EXPECT_EQ(pool.stats().spare_bytes, 400u) << "one was taken again";
}

}  // namespace
}  // namespace kvtier::worker
