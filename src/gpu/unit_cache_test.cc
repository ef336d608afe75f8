// UnitCache over host memory: what is copied, what is reused, what is dropped and when.
#include "gpu/unit_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

namespace kvtier::gpu {
namespace {

struct HostMemory {
  int* allocations;   // live
  size_t fail_above;  // Allocate fails for larger sizes
  void* Allocate(size_t bytes, std::string* error) {
    if (bytes > fail_above) {
      *error = "out of memory";
      return nullptr;
    }
    ++*allocations;
    return new uint8_t[bytes];
  }
  void Free(void* p) {
    if (p == nullptr) return;
    --*allocations;
    delete[] static_cast<uint8_t*>(p);
  }
  bool Copy(void* dst, const void* src, size_t bytes, std::string*) {
    std::memcpy(dst, src, bytes);
    return true;
  }
};

using Cache = UnitCache<HostMemory>;

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

bool Holds(const void* addr, const std::vector<uint8_t>& want) {
  return std::memcmp(addr, want.data(), want.size()) == 0;
}

TEST(UnitCache, CopiesOnceAndAgainOnlyForANewVersion) {
  int live = 0;
  {
    Cache cache(HostMemory{&live, SIZE_MAX}, 1 << 20);
    auto a = Bytes(1000, 1), b = Bytes(2000, 2);
    std::string error;
    std::vector<Cache::Source> src = {{1, 0, a.data(), a.size()}, {2, 0, b.data(), b.size()}};
    auto m1 = cache.Map(src, &error);
    ASSERT_NE(m1, nullptr) << error;
    EXPECT_EQ(m1->copied_bytes(), 3000u);
    EXPECT_TRUE(Holds(m1->addresses()[0], a));
    EXPECT_TRUE(Holds(m1->addresses()[1], b));
    m1.reset();
    auto m2 = cache.Map(src, &error);  // same versions: nothing copied
    ASSERT_NE(m2, nullptr);
    EXPECT_EQ(m2->copied_bytes(), 0u);
    EXPECT_TRUE(Holds(m2->addresses()[1], b));
    m2.reset();
    b[5] ^= 0xff;  // new bytes arrived in buffer 2
    src[1].version = 1;
    auto m3 = cache.Map(src, &error);
    ASSERT_NE(m3, nullptr);
    EXPECT_EQ(m3->copied_bytes(), 2000u);
    EXPECT_TRUE(Holds(m3->addresses()[1], b));
    // An id repeated in one call is one copy and one hold.
    const std::vector<Cache::Source> twice = {src[0], src[0]};
    auto m4 = cache.Map(twice, &error);
    ASSERT_NE(m4, nullptr);
    EXPECT_EQ(m4->addresses()[0], m4->addresses()[1]);
    EXPECT_EQ(m4->copied_bytes(), 0u);
    const Cache::Stats st = cache.stats();
    EXPECT_EQ(st.units, 2u);
    EXPECT_EQ(st.bytes, 3000u);
    EXPECT_EQ(st.copied_bytes, 5000u);
    EXPECT_EQ(st.reused_bytes, 5000u);  // m2 (3000), m3 (unit 1: 1000) and m4 (1000)
  }
  EXPECT_EQ(live, 0) << "the cache frees what it allocated";
}

TEST(UnitCache, DropsTheLeastRecentlyUsedButNeverWhatIsMapped) {
  int live = 0;
  Cache cache(HostMemory{&live, SIZE_MAX}, 3000);  // room for three 1000-byte units
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < 5; ++i) data.push_back(Bytes(1000, static_cast<uint8_t>(i)));
  auto source = [&](uint64_t i) { return Cache::Source{i, 0, data[i].data(), 1000}; };
  std::string error;
  for (uint64_t i : {0, 1, 2}) ASSERT_NE(cache.Map(std::vector{source(i)}, &error), nullptr);
  ASSERT_NE(cache.Map(std::vector{source(0)}, &error), nullptr);  // 0 is now the most recent
  ASSERT_NE(cache.Map(std::vector{source(3)}, &error), nullptr);  // drops 1, the oldest
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_EQ(cache.Map(std::vector{source(0)}, &error)->copied_bytes(), 0u);
  EXPECT_EQ(cache.Map(std::vector{source(1)}, &error)->copied_bytes(), 1000u);  // 2 goes
  // Held units stay, even past the capacity, and are dropped once let go.
  auto held = cache.Map(std::vector{source(0), source(1), source(3), source(4)}, &error);
  ASSERT_NE(held, nullptr);
  EXPECT_EQ(cache.stats().bytes, 4000u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(Holds(held->addresses()[i], data[i < 2 ? i : i + 1])) << i;
  }
  held.reset();
  EXPECT_EQ(cache.stats().bytes, 3000u);
  EXPECT_EQ(live, 3);
}

TEST(UnitCache, FailuresLeaveNothingHeldOrLeaked) {
  int live = 0;
  Cache cache(HostMemory{&live, 1500}, 10'000);
  auto small = Bytes(1000, 1), big = Bytes(2000, 2);
  std::string error;
  auto m = cache.Map(
      std::vector<Cache::Source>{{1, 0, small.data(), 1000}, {2, 0, big.data(), 2000}}, &error);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(error, "out of memory");
  EXPECT_EQ(cache.stats().bytes, 1000u);
  EXPECT_EQ(live, 1);
  // Unit 1 is not held: a cache that small drops it for the next.
  Cache tight(HostMemory{&live, SIZE_MAX}, 1000);
  ASSERT_NE(tight.Map(std::vector<Cache::Source>{{1, 0, small.data(), 1000}}, &error), nullptr);
  ASSERT_NE(tight.Map(std::vector<Cache::Source>{{2, 0, small.data(), 1000}}, &error), nullptr);
  EXPECT_EQ(tight.stats().units, 1u);
}

TEST(UnitCache, ConcurrentMappersSeeTheirBytes) {
  int live = 0;
  Cache cache(HostMemory{&live, SIZE_MAX}, 16 * 4096);
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < 64; ++i) data.push_back(Bytes(4096, static_cast<uint8_t>(i)));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::string error;
      for (int round = 0; round < 200; ++round) {
        std::vector<Cache::Source> src;
        for (int k = 0; k < 8; ++k) {
          const int i = (round * 5 + k * 3 + t) % 64;
          src.push_back({static_cast<uint64_t>(i), 0, data[i].data(), 4096});
        }
        auto m = cache.Map(src, &error);
        if (m == nullptr) {
          ++wrong;
          continue;
        }
        for (size_t k = 0; k < src.size(); ++k) {
          if (!Holds(m->addresses()[k], data[src[k].id])) ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(cache.stats().bytes, 16u * 4096);
}

}  // namespace
}  // namespace kvtier::gpu
