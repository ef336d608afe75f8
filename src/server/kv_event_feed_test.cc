#include "server/kv_event_feed.h"

#include <gtest/gtest.h>

namespace kvtier::server {
namespace {

using kvevents::BlockRemoved;
using kvevents::BlockStored;
using kvevents::EngineHash;

const BlockKey kKey{1, 2};
const BlockKey kParent{3, 4};

TEST(KvEventFeedTest, AStoreIsABlockStoredWithTheStoreKeys) {
  auto e = KvEventsOf({.key = kKey, .size = 10, .stored = true, .tier = Tier::kHost,
                       .parent = kParent});
  ASSERT_EQ(e.size(), 1u);
  const auto& s = std::get<BlockStored>(e[0]);
  EXPECT_EQ(s.block_hashes, (std::vector<EngineHash>{kKey.ByteString()}));
  EXPECT_EQ(s.parent_block_hash, EngineHash(kParent.ByteString()));
  EXPECT_TRUE(s.token_ids.empty());
  EXPECT_EQ(s.block_size, 0u);
  EXPECT_EQ(s.medium, "CPU");
  auto first = KvEventsOf({.key = kKey, .stored = true, .tier = Tier::kHbm});
  EXPECT_FALSE(std::get<BlockStored>(first[0]).parent_block_hash.has_value());
  EXPECT_EQ(std::get<BlockStored>(first[0]).medium, "GPU");
}

TEST(KvEventFeedTest, ARemovalNamesTheTierItLeft) {
  auto e = KvEventsOf({.key = kKey, .stored = false, .tier = Tier::kNvme});
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(std::get<BlockRemoved>(e[0]).medium, "DISK");
}

TEST(KvEventFeedTest, AMoveIsARemovalFromTheOldMediumThenAStoreInTheNew) {
  auto e = KvEventsOf(
      {.key = kKey, .stored = true, .tier = Tier::kNvme, .moved_from = Tier::kHost});
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(std::get<BlockRemoved>(e[0]).medium, "CPU");
  EXPECT_EQ(std::get<BlockStored>(e[1]).medium, "DISK");
}

}  // namespace
}  // namespace kvtier::server
