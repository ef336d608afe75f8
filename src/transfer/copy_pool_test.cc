// CopyPool: every byte copied and checksummed, whoever copies it, with callers at once.
#include "transfer/copy_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "common/checksum.h"

namespace kvtier::transfer {
namespace {

struct Batch {
  std::vector<uint8_t> src;
  std::vector<std::vector<uint8_t>> dst;
  std::vector<uint64_t> sums;
  std::vector<CopyOp> ops;

  // `count` ops of `length` bytes out of one source; every other op checksummed.
  Batch(size_t count, size_t length, uint8_t seed)
      : src(count * length), dst(count, std::vector<uint8_t>(length)), sums(count, 0) {
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(seed + i * 131);
    for (size_t i = 0; i < count; ++i) {
      ops.push_back({.dst = dst[i].data(),
                     .src = src.data() + i * length,
                     .length = length,
                     .checksum = i % 2 == 0 ? &sums[i] : nullptr});
    }
  }
  bool Right() const {
    for (size_t i = 0; i < dst.size(); ++i) {
      const uint8_t* from = src.data() + i * dst[i].size();
      if (std::memcmp(dst[i].data(), from, dst[i].size()) != 0) return false;
      if (i % 2 == 0 && sums[i] != Checksum(from, dst[i].size())) return false;
    }
    return true;
  }
};

TEST(CopyPool, LargeAndSmallBatchesAreCopiedWhole) {
  CopyPool pool(3);
  for (auto [count, length] : {std::pair<size_t, size_t>{64, 64 << 10},  // 4 MiB: shared
                               {3, 1 << 20},
                               {1, 3 << 20},   // one op: the caller's
                               {16, 4096}}) {  // small: the caller's
    Batch b(count, length, static_cast<uint8_t>(count));
    pool.Run(b.ops);
    EXPECT_TRUE(b.Right()) << count << " x " << length;
  }
  CopyPool none(0);
  Batch b(32, 128 << 10, 9);
  none.Run(b.ops);
  EXPECT_TRUE(b.Right());
}

TEST(CopyPool, ManyCallersAtOnce) {
  CopyPool pool(1);  // fewer helpers than callers: most batches are copied by their callers
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 6; ++t) {
    callers.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        Batch b(24, (128 << 10) + 64 * t, static_cast<uint8_t>(t * 20 + round));
        pool.Run(b.ops);
        if (!b.Right()) ++wrong;
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace kvtier::transfer
