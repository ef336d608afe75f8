#include "cache/nvme_tier.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "common/checksum.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;

BlockMeta MetaOf(const std::vector<uint8_t>& data, BlockKey parent = {}) {
  return BlockMeta{parent, Checksum(data.data(), data.size()), static_cast<uint32_t>(data.size())};
}

size_t BlobFilesIn(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/blobs")) {
    n += e.path().extension() == ".blob";
  }
  return n;
}

TEST(NvmeTier, WriteReadDeleteAnySizeAndAlignment) {
  TempDir dir;
  auto tier = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(tier.ok()) << tier.status();
  const size_t sizes[] = {1, 4095, 4096, 4097, 100'000, 1 << 20};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    const auto data = TestBlock(i, sizes[i]);
    ASSERT_TRUE((*tier)->Write(TestKey(i), MetaOf(data), data, i % 2 == 0).ok()) << sizes[i];
  }
  for (size_t i = 0; i < std::size(sizes); ++i) {
    const auto expected = TestBlock(i, sizes[i]);
    // Unaligned destination (one byte into a buffer) and, for 4 KiB multiples, an aligned one.
    std::vector<uint8_t> buf(sizes[i] + 1);
    auto sum = (*tier)->Read(TestKey(i), std::span(buf).subspan(1));
    ASSERT_TRUE(sum.ok()) << sum.status();
    EXPECT_EQ(*sum, Checksum(expected.data(), expected.size()));
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), buf.begin() + 1)) << sizes[i];
    if (sizes[i] % 4096 == 0) {
      uint8_t* aligned = static_cast<uint8_t*>(std::aligned_alloc(4096, sizes[i]));
      auto s2 = (*tier)->Read(TestKey(i), std::span(aligned, sizes[i]));
      ASSERT_TRUE(s2.ok());
      EXPECT_EQ(*s2, *sum);
      EXPECT_EQ(std::memcmp(aligned, expected.data(), sizes[i]), 0);
      std::free(aligned);
    }
  }
  std::vector<uint8_t> wrong(10);
  EXPECT_EQ((*tier)->Read(TestKey(0), wrong).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ((*tier)->Read(TestKey(99), wrong).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*tier)->Delete(TestKey(2), true).ok());
  EXPECT_EQ((*tier)->Read(TestKey(2), wrong).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*tier)->Delete(TestKey(2), true).code(), absl::StatusCode::kNotFound);
}

TEST(NvmeTier, ReopenKeepsBlocksAndDropsUnreferencedFiles) {
  TempDir dir;
  NvmeTierOptions o{.path = dir.path(), .blob_file_bytes = 64 * 1024};
  {
    auto tier = NvmeTier::Open(o);
    ASSERT_TRUE(tier.ok());
    for (uint64_t n = 0; n < 40; ++n) {
      const auto data = TestBlock(n, 8192);
      ASSERT_TRUE((*tier)->Write(TestKey(n), MetaOf(data, TestKey(n + 100)), data, false).ok());
    }
    // Blocks 0..7 fill the first file: delete them all, the file must go.
    for (uint64_t n = 0; n < 8; ++n) ASSERT_TRUE((*tier)->Delete(TestKey(n), false).ok());
    EXPECT_EQ((*tier)->Stats().blob_files, 4u);
  }
  EXPECT_EQ(BlobFilesIn(dir.path()), 4u);
  auto tier = NvmeTier::Open(o);
  ASSERT_TRUE(tier.ok());
  size_t count = 0;
  ASSERT_TRUE((*tier)
                  ->ForEachMeta([&](const BlockKey& key, const BlockMeta& meta) {
                    ++count;
                    EXPECT_EQ(meta.size, 8192u);
                    EXPECT_FALSE(meta.parent.IsZero());
                    (void)key;
                  })
                  .ok());
  EXPECT_EQ(count, 32u);
  for (uint64_t n = 8; n < 40; ++n) {
    std::vector<uint8_t> buf(8192);
    auto sum = (*tier)->Read(TestKey(n), buf);
    ASSERT_TRUE(sum.ok()) << n << ": " << sum.status();
    EXPECT_EQ(buf, TestBlock(n, 8192));
  }
  const NvmeTierStats st = (*tier)->Stats();
  EXPECT_EQ(st.live_bytes, 32u * 8192);
}

TEST(NvmeTier, CompactionMovesLiveBlocksAndFreesSpace) {
  TempDir dir;
  NvmeTierOptions o{.path = dir.path(), .blob_file_bytes = 64 * 1024};  // 8 blocks a file
  auto tier = NvmeTier::Open(o);
  ASSERT_TRUE(tier.ok());
  for (uint64_t n = 0; n < 64; ++n) {
    const auto data = TestBlock(n, 8192);
    ASSERT_TRUE((*tier)->Write(TestKey(n), MetaOf(data), data, false).ok());
  }
  EXPECT_EQ((*tier)->Stats().file_bytes, 64u * 8192);
  // Delete six of every eight: every sealed file becomes mostly dead.
  for (uint64_t n = 0; n < 64; ++n) {
    if (n % 8 < 6) {
      ASSERT_TRUE((*tier)->Delete(TestKey(n), false).ok());
    }
  }
  const NvmeTierStats st = (*tier)->Stats();
  EXPECT_GT(st.compactions, 0u);
  EXPECT_GT(st.bytes_moved, 0u);
  EXPECT_EQ(st.live_bytes, 16u * 8192);
  EXPECT_LE(st.file_bytes, st.live_bytes + 2 * o.blob_file_bytes)
      << "dead space is bounded by compaction";
  for (uint64_t n = 0; n < 64; ++n) {
    std::vector<uint8_t> buf(8192);
    auto sum = (*tier)->Read(TestKey(n), buf);
    if (n % 8 < 6) {
      EXPECT_EQ(sum.status().code(), absl::StatusCode::kNotFound);
    } else {
      ASSERT_TRUE(sum.ok()) << n << ": " << sum.status();
      EXPECT_EQ(buf, TestBlock(n, 8192)) << n;
    }
  }
  tier->reset();
  auto reopened = NvmeTier::Open(o);
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened)->Stats().live_bytes, 16u * 8192);
  std::vector<uint8_t> buf(8192);
  ASSERT_TRUE((*reopened)->Read(TestKey(63), buf).ok());
  EXPECT_EQ(buf, TestBlock(63, 8192));
}

TEST(NvmeTier, RejectsBadOptions) {
  EXPECT_EQ(NvmeTier::Open({}).status().code(), absl::StatusCode::kInvalidArgument);
  TempDir dir;
  auto tier = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(tier.ok());
  const auto data = TestBlock(1, 100);
  BlockMeta meta = MetaOf(data);
  meta.size = 99;
  EXPECT_EQ((*tier)->Write(TestKey(1), meta, data, false).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
