#include "transfer/shm_sweep.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "testing/test_util.h"

namespace kvtier::transfer {
namespace {

using ::kvtier::testing::TempDir;

// A file of `bytes` bytes at `path`, last modified `age_s` seconds ago.
void Segment(const std::string& path, size_t bytes, int age_s) {
  std::ofstream(path) << std::string(bytes, 'x');
  const auto t = std::filesystem::last_write_time(path) - std::chrono::seconds(age_s);
  std::filesystem::last_write_time(path, t);
}

TEST(ShmSweep, RemovesOnlyOldSegmentsThatNoProcessHolds) {
  TempDir dir;
  const std::string dead = dir.Sub("ucx_shm_posix_dead"), held = dir.Sub("ucx_shm_posix_held"),
                    young = dir.Sub("ucx_shm_posix_young"), other = dir.Sub("other_segment");
  Segment(dead, 1000, 60);
  Segment(held, 10, 60);
  Segment(young, 10, 0);
  Segment(other, 10, 60);
  const int fd = open(held.c_str(), O_RDONLY);  // a live owner holds it open
  ASSERT_GE(fd, 0);
  const ShmSweep swept = RemoveOrphanShmSegments(dir.path(), "ucx_shm_posix_");
  close(fd);
  EXPECT_EQ(swept.removed, 1u);
  EXPECT_EQ(swept.bytes, 1000u);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(held));
  EXPECT_TRUE(std::filesystem::exists(young)) << "a segment being created is not yet mapped";
  EXPECT_TRUE(std::filesystem::exists(other)) << "not UCX's";
}

TEST(ShmSweep, FreeBytesOfAFileSystemOrNothing) {
  TempDir dir;
  const std::optional<uint64_t> free_bytes = SharedMemoryFreeBytes(dir.path());
  ASSERT_TRUE(free_bytes.has_value());
  EXPECT_GT(*free_bytes, 0u);
  EXPECT_FALSE(SharedMemoryFreeBytes(dir.Sub("absent")).has_value());
}

}  // namespace
}  // namespace kvtier::transfer
