#include "cache/slab_allocator.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace kvtier {
namespace {

TEST(SlabAllocator, RoundsToAlignmentAndFillsSlabs) {
  SlabAllocator a(4 * 4096, 4096);
  EXPECT_EQ(a.capacity_bytes(), 4u * 4096);
  auto x = a.Allocate(1000);  // 1024-byte chunks: 4 per slab
  ASSERT_TRUE(x.has_value());
  EXPECT_EQ(*x % SlabAllocator::kAlignment, 0u);
  EXPECT_EQ(a.used_bytes(), 1024u);
  EXPECT_EQ(a.free_slabs(), 3u);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(a.Allocate(1024).has_value());
  EXPECT_EQ(a.free_slabs(), 3u) << "four 1 KiB chunks share one slab";
  ASSERT_TRUE(a.Allocate(1024).has_value());
  EXPECT_EQ(a.free_slabs(), 2u);
}

TEST(SlabAllocator, ExhaustsAndRecovers) {
  SlabAllocator a(3 * 8192, 8192);
  std::vector<uint64_t> got;
  while (auto o = a.Allocate(8192)) got.push_back(*o);
  EXPECT_EQ(got.size(), 3u);
  EXPECT_FALSE(a.Allocate(64).has_value()) << "no slab left for another class";
  a.Free(got[1], 8192);
  EXPECT_EQ(a.free_slabs(), 1u) << "an emptied slab returns to the pool";
  auto small = a.Allocate(64);
  ASSERT_TRUE(small.has_value()) << "and can serve another size class";
  EXPECT_EQ(*small, got[1]);
  EXPECT_FALSE(a.Allocate(0).has_value());
  EXPECT_FALSE(a.Allocate(8193).has_value());
}

TEST(SlabAllocator, RandomWorkloadNeverOverlaps) {
  SlabAllocator a(64 << 20, 1 << 20);
  std::mt19937 rng(42);
  const size_t sizes[] = {4096, 65536, 100000, 1 << 20};
  std::map<uint64_t, size_t> live;  // offset -> chunk bytes
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      size_t size = sizes[rng() % 4];
      const size_t chunk = SlabAllocator::ChunkBytes(size);
      const size_t available = a.AvailableBytes(size);
      ASSERT_EQ(available % chunk, 0u);
      auto o = a.Allocate(size);
      ASSERT_EQ(o.has_value(), available >= chunk) << "AvailableBytes foretells Allocate";
      if (!o) continue;
      ASSERT_EQ(a.AvailableBytes(size), available - chunk);
      auto next = live.lower_bound(*o);
      if (next != live.end()) {
        ASSERT_LE(*o + chunk, next->first) << "overlaps the next chunk";
      }
      if (next != live.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, *o) << "overlaps the previous chunk";
      }
      ASSERT_LE(*o + chunk, a.capacity_bytes());
      live.emplace(*o, chunk);
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      a.Free(it->first, it->second);
      live.erase(it);
    }
  }
  size_t used = 0;
  for (auto& [o, c] : live) used += c;
  EXPECT_EQ(a.used_bytes(), used);
  for (auto& [o, c] : live) a.Free(o, c);
  EXPECT_EQ(a.used_bytes(), 0u);
  EXPECT_EQ(a.free_slabs(), 64u);
}

}  // namespace
}  // namespace kvtier
