#include "cache/host_arena.h"

#include <gtest/gtest.h>

#include <cstring>

namespace kvtier {
namespace {

TEST(HostArena, MapsRoundedSizeAndIsUsable) {
  auto arena = HostArena::Create({.bytes = 3 << 20, .hugepages = true, .lock = true});
  ASSERT_TRUE(arena.ok()) << arena.status();
  EXPECT_EQ((*arena)->size(), 4u << 20) << "rounded up to whole 2 MiB pages";
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*arena)->base()) % 4096, 0u);
  std::memset((*arena)->base(), 0xab, (*arena)->size());
  EXPECT_EQ((*arena)->base()[(*arena)->size() - 1], 0xab);
  // Locking depends on privileges; either way the arena works, and the result is reported.
  SUCCEED() << "hugetlb=" << (*arena)->hugetlb() << " locked=" << (*arena)->locked();
}

TEST(HostArena, RejectsZeroBytes) {
  EXPECT_EQ(HostArena::Create({.bytes = 0}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostArena, ImpossibleSizeIsAnErrorNotACrash) {
  auto arena = HostArena::Create({.bytes = size_t{1} << 50, .hugepages = false, .lock = false});
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kResourceExhausted) << arena.status();
}

}  // namespace
}  // namespace kvtier
