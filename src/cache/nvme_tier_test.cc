#include "cache/nvme_tier.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/checksum.h"
#include "testing/small_disk.h"
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
  // Delete six of every eight: every sealed file becomes mostly dead. Deletes only count; the
  // compactions are Maintain's.
  for (uint64_t n = 0; n < 64; ++n) {
    if (n % 8 < 6) {
      ASSERT_TRUE((*tier)->Delete(TestKey(n), false).ok());
    }
  }
  EXPECT_EQ((*tier)->Stats().compactions, 0u);
  for (int i = 0; i < 100 && (*tier)->Maintain(); ++i) {
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

// ---- a full disk, and damage found at Open -----------------------------------------------------

// Writes durable blocks of `size` bytes (keys from `first`) until the tier refuses one; returns
// how many it stored. The refusal must be the disk-full one.
uint64_t FillWithDurableBlocks(NvmeTier& tier, uint64_t first, size_t size) {
  for (uint64_t n = first;; ++n) {
    const auto data = TestBlock(n, size);
    absl::Status st = tier.Write(TestKey(n), MetaOf(data), data, /*durable=*/true);
    if (!st.ok()) {
      EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
      return n - first;
    }
    if (n - first > 100'000) {
      ADD_FAILURE() << "the disk never filled";
      return n - first;
    }
  }
}

void ExpectBlocks(NvmeTier& tier, uint64_t first, uint64_t count, size_t size) {
  std::vector<uint8_t> buf(size);
  for (uint64_t n = first; n < first + count; ++n) {
    auto sum = tier.Read(TestKey(n), buf);
    ASSERT_TRUE(sum.ok()) << "block " << n << ": " << sum.status();
    ASSERT_EQ(buf, TestBlock(n, size)) << "block " << n;
  }
}

// The whole life of a tier on a disk it fills: writes are refused before RocksDB runs out of
// room, the tier closes and reopens with every block, and deleting half of them makes room for
// new durable writes without a restart.
void FullDiskLifecycle(const std::string& path, rocksdb::Env* env, size_t block) {
  NvmeTierOptions o{.path = path, .direct_io = false, .env = env};
  uint64_t stored = 0;
  {
    auto tier = NvmeTier::Open(o);
    ASSERT_TRUE(tier.ok()) << tier.status();
    stored = FillWithDurableBlocks(**tier, 0, block);
    ASSERT_GT(stored, 4u);
    EXPECT_GE((*tier)->Stats().disk_full_rejections, 1u);
    // Refused again, not crashed, while still full.
    const auto data = TestBlock(999'999, block);
    EXPECT_EQ((*tier)->Write(TestKey(999'999), MetaOf(data), data, true).code(),
              absl::StatusCode::kResourceExhausted);
  }
  auto tier = NvmeTier::Open(o);
  ASSERT_TRUE(tier.ok()) << "reopening a full disk: " << tier.status();
  ExpectBlocks(**tier, 0, stored, block);
  for (uint64_t n = 0; n < stored; n += 2) ASSERT_TRUE((*tier)->Delete(TestKey(n), true).ok());
  for (int i = 0; i < 1000 && (*tier)->Maintain(); ++i) {
  }
  const uint64_t more = FillWithDurableBlocks(**tier, 1'000'000, block);
  EXPECT_GE(more, stored / 4) << "deletes freed no usable space";
  for (uint64_t n = 1; n < stored; n += 2) ExpectBlocks(**tier, n, 1, block);
  ExpectBlocks(**tier, 1'000'000, more, block);
}

TEST(NvmeTierFullDisk, OnAnInjectedSmallDisk) {
  TempDir dir;
  auto fs = std::make_shared<testing::SmallDiskFs>(uint64_t{48} << 20);
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  FullDiskLifecycle(dir.path(), env.get(), 256 << 10);
}

TEST(NvmeTierFullDisk, OnARealTmpfs) {
  testing::TmpfsMount disk(uint64_t{64} << 20);
  if (!disk.mounted()) GTEST_SKIP() << "this process may not mount a tmpfs";
  FullDiskLifecycle(disk.path() + "/nvme", nullptr, 1 << 20);
}

// Blocks written to several small blob files, and the tier closed.
void WriteSeveralFiles(const std::string& path, uint64_t blocks) {
  auto tier = NvmeTier::Open({.path = path, .blob_file_bytes = 64 << 10, .direct_io = false});
  ASSERT_TRUE(tier.ok()) << tier.status();
  for (uint64_t n = 0; n < blocks; ++n) {
    const auto data = TestBlock(n, 8192);
    ASSERT_TRUE((*tier)->Write(TestKey(n), MetaOf(data), data, n % 2 == 0).ok());
  }
}

std::vector<std::string> BlobPaths(const std::string& path) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(path + "/blobs")) {
    if (e.path().extension() == ".blob") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(NvmeTierDamage, AMissingOrShortBlobFileCostsItsBlocksOnly) {
  TempDir dir;
  WriteSeveralFiles(dir.path(), 32);  // 8 blocks per file: files 1..4
  const std::vector<std::string> files = BlobPaths(dir.path());
  ASSERT_EQ(files.size(), 4u);
  std::filesystem::remove(files[1]);                       // blocks 8..15
  std::filesystem::resize_file(files[2], 3 * 8192 + 100);  // keeps blocks 16..18
  auto tier = NvmeTier::Open({.path = dir.path(), .blob_file_bytes = 64 << 10});
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_EQ((*tier)->Stats().lost_blocks, 8u + 5u);
  std::vector<uint8_t> buf(8192);
  for (uint64_t n = 0; n < 32; ++n) {
    const bool lost = (n >= 8 && n < 16) || (n >= 19 && n < 24);
    auto sum = (*tier)->Read(TestKey(n), buf);
    if (lost) {
      EXPECT_EQ(sum.status().code(), absl::StatusCode::kNotFound) << n;
    } else {
      ASSERT_TRUE(sum.ok()) << n << ": " << sum.status();
      EXPECT_EQ(buf, TestBlock(n, 8192));
    }
  }
  size_t recovered = 0;
  ASSERT_TRUE((*tier)->ForEachMeta([&](const BlockKey&, const BlockMeta&) { ++recovered; }).ok());
  EXPECT_EQ(recovered, 32u - 13u);
  // New writes go to new file numbers: never to the missing one, which old records named.
  for (uint64_t n = 100; n < 120; ++n) {
    const auto data = TestBlock(n, 8192);
    ASSERT_TRUE((*tier)->Write(TestKey(n), MetaOf(data), data, false).ok());
  }
  EXPECT_FALSE(std::filesystem::exists(files[1]));
  tier->reset();
  auto again = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Stats().lost_blocks, 0u) << "the damaged records were deleted";
}

TEST(NvmeTierDamage, UnreadableRecordsAreSkippedDeletedAndCounted) {
  TempDir dir;
  WriteSeveralFiles(dir.path(), 10);
  {
    rocksdb::DBOptions o;
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, {}}, {"by_file", {}}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, dir.path() + "/meta", families, &handles, &db).ok());
    uint8_t k[16];
    TestKey(3).ToBytes(k);
    ASSERT_TRUE(db->Put({}, rocksdb::Slice(reinterpret_cast<char*>(k), 16), "garbage").ok());
    ASSERT_TRUE(db->Put({}, "short key", "x").ok());
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    delete db;
  }
  auto tier = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(tier.ok()) << "one bad record must not stop the tier: " << tier.status();
  EXPECT_EQ((*tier)->Stats().bad_records, 2u);
  std::vector<uint8_t> buf(8192);
  EXPECT_EQ((*tier)->Read(TestKey(3), buf).status().code(), absl::StatusCode::kNotFound);
  for (uint64_t n : {0, 1, 2, 4, 9}) ExpectBlocks(**tier, n, 1, 8192);
  tier->reset();
  auto again = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Stats().bad_records, 0u);
}

enum class Damage { kNoCurrent, kManifestOverwritten, kSstTruncated, kSstFlipped, kNoMetaDir };
void PrintTo(Damage d, std::ostream* os) {
  constexpr const char* kNames[] = {"no_current", "manifest_overwritten", "sst_truncated",
                                    "sst_flipped", "no_meta_dir"};
  *os << kNames[static_cast<int>(d)];
}

class NvmeTierDamagedMetadata : public ::testing::TestWithParam<Damage> {};

TEST_P(NvmeTierDamagedMetadata, IsMovedAsideAndTheTierStartsEmpty) {
  TempDir dir;
  {
    auto tier = NvmeTier::Open({.path = dir.path()});
    ASSERT_TRUE(tier.ok());
    for (uint64_t n = 0; n < 50; ++n) {
      const auto data = TestBlock(n, 8192);
      ASSERT_TRUE((*tier)->Write(TestKey(n), MetaOf(data), data, true).ok());
    }
    ASSERT_TRUE((*tier)->Flush().ok());  // the metadata is in SST files now
  }
  const std::string meta = dir.path() + "/meta";
  std::string manifest, sst;
  for (const auto& e : std::filesystem::directory_iterator(meta)) {
    const std::string name = e.path().filename();
    if (name.rfind("MANIFEST-", 0) == 0) manifest = e.path();
    // The largest SST holds the metadata (the other, the by-file index).
    if (e.path().extension() == ".sst" &&
        (sst.empty() || std::filesystem::file_size(e.path()) > std::filesystem::file_size(sst))) {
      sst = e.path();
    }
  }
  ASSERT_FALSE(manifest.empty());
  ASSERT_FALSE(sst.empty());
  switch (GetParam()) {
    case Damage::kNoCurrent:
      std::filesystem::remove(meta + "/CURRENT");
      break;
    case Damage::kManifestOverwritten: {
      std::ofstream(manifest, std::ios::trunc) << std::string(300, 'x');
      break;
    }
    case Damage::kSstTruncated:
      std::filesystem::resize_file(sst, std::filesystem::file_size(sst) / 2);
      break;
    case Damage::kSstFlipped: {
      std::fstream f(sst, std::ios::in | std::ios::out | std::ios::binary);
      for (std::streamoff at : {100, 1000, 2000}) {
        f.seekg(at);
        const char c = static_cast<char>(f.get());
        f.seekp(at);
        f.put(static_cast<char>(c ^ 0x5a));
      }
      break;
    }
    case Damage::kNoMetaDir:
      std::filesystem::remove_all(meta);
      break;
  }
  auto tier = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(tier.ok()) << "damaged metadata must not stop the tier: " << tier.status();
  EXPECT_TRUE((*tier)->Stats().damaged_tier_moved_aside);
  size_t left = 0;
  ASSERT_TRUE((*tier)->ForEachMeta([&](const BlockKey&, const BlockMeta&) { ++left; }).ok());
  EXPECT_EQ(left, 0u);
  size_t aside = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    aside += e.path().filename().string().rfind("damaged-", 0) == 0;
  }
  EXPECT_EQ(aside, 1u) << "the damaged tier is kept for inspection";
  // And the tier works.
  const auto data = TestBlock(7, 8192);
  ASSERT_TRUE((*tier)->Write(TestKey(7), MetaOf(data), data, true).ok());
  ExpectBlocks(**tier, 7, 1, 8192);
}

INSTANTIATE_TEST_SUITE_P(NvmeTier, NvmeTierDamagedMetadata,
                         ::testing::Values(Damage::kNoCurrent, Damage::kManifestOverwritten,
                                           Damage::kSstTruncated, Damage::kSstFlipped,
                                           Damage::kNoMetaDir));

// Damage found again at once (a restart loop): each damaged tier goes to a directory of its own,
// though their names are made within one second.
TEST(NvmeTierDamage, DamageFoundTwiceInASecondIsMovedAsideTwice) {
  TempDir dir;
  for (int round = 0; round < 3; ++round) {
    {
      auto tier = NvmeTier::Open({.path = dir.path()});
      ASSERT_TRUE(tier.ok()) << "round " << round << ": " << tier.status();
      const auto data = TestBlock(round, 8192);
      ASSERT_TRUE((*tier)->Write(TestKey(round), MetaOf(data), data, true).ok());
    }
    std::filesystem::remove(dir.path() + "/meta/CURRENT");
  }
  auto tier = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(tier.ok()) << tier.status();
  size_t aside = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    aside += e.path().filename().string().rfind("damaged-", 0) == 0;
  }
  EXPECT_EQ(aside, 3u);
}

// A WAL cut short (a disk that lost its tail): the tier opens with what came before the cut and
// says that it lost something.
TEST(NvmeTierDamage, AWalCutShortIsRecoveredAndReported) {
  TempDir dir;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // writes durable blocks and ends without closing: they live in the WAL
    auto tier = NvmeTier::Open({.path = dir.path()});
    if (!tier.ok()) _exit(1);
    for (uint64_t n = 0; n < 20; ++n) {
      const auto data = TestBlock(n, 8192);
      if (!(*tier)->Write(TestKey(n), MetaOf(data), data, true).ok()) _exit(1);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::string wal;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/meta")) {
    if (e.path().extension() == ".log" && std::filesystem::file_size(e.path()) > 0) wal = e.path();
  }
  ASSERT_FALSE(wal.empty());
  std::filesystem::resize_file(wal, std::filesystem::file_size(wal) - 20);
  auto tier = NvmeTier::Open({.path = dir.path()});
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_TRUE((*tier)->Stats().metadata_recovered_with_loss);
  EXPECT_FALSE((*tier)->Stats().damaged_tier_moved_aside);
  ExpectBlocks(**tier, 0, 19, 8192);  // all but the record that was cut
}

}  // namespace
}  // namespace kvtier
