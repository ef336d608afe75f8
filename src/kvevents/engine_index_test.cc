#include "kvevents/engine_index.h"

#include <gtest/gtest.h>

#include <msgpack.hpp>

namespace kvtier::kvevents {
namespace {

struct RecordingSink : BlockKeySink {
  std::vector<BlockKey> stored, removed;
  int cleared = 0;
  void OnStored(std::span<const BlockKey> k) override { stored.insert(stored.end(), k.begin(), k.end()); }
  void OnRemoved(std::span<const BlockKey> k) override {
    removed.insert(removed.end(), k.begin(), k.end());
  }
  void OnCleared() override { ++cleared; }
};

constexpr uint64_t kFingerprint = 0x1234;

std::vector<BlockKey> Expected(std::vector<uint32_t> tokens, uint32_t block, std::string adapter = "",
                               std::string salt = "") {
  auto h = ChainHasher::Create({.tenant_salt = salt, .model_id = "llama-3-8b",
                                .layout_fingerprint = kFingerprint, .adapter_id = adapter},
                               block);
  EXPECT_TRUE(h.ok());
  return h->Keys(tokens);
}

std::string Pack(const std::vector<std::string>& strings) {
  msgpack::sbuffer buf;
  msgpack::pack(buf, strings);
  return std::string(buf.data(), buf.size());
}

class EngineBlockMapperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = EngineBlockMapper::Create(
        {.model_id = "llama-3-8b", .layout_fingerprint = kFingerprint, .max_blocks = 64}, &sink_);
    ASSERT_TRUE(m.ok());
    mapper_ = std::move(*m);
  }
  static BlockStored Stored(std::vector<EngineHash> hashes, std::optional<EngineHash> parent,
                            std::vector<uint32_t> tokens, uint32_t block) {
    BlockStored s;
    s.block_hashes = std::move(hashes);
    s.parent_block_hash = std::move(parent);
    s.token_ids = std::move(tokens);
    s.block_size = block;
    s.medium = "GPU";
    return s;
  }
  RecordingSink sink_;
  std::unique_ptr<EngineBlockMapper> mapper_;
};

TEST_F(EngineBlockMapperTest, KeysAreChainHasherKeysOverTheSameTokens) {
  const std::vector<uint32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  mapper_->Apply(Stored({uint64_t{100}, uint64_t{101}}, std::nullopt,
                        {tokens.begin(), tokens.begin() + 8}, 4));
  // The third block arrives later, naming its parent by the engine's hash.
  mapper_->Apply(Stored({std::string(32, 'c')}, uint64_t{101}, {9, 10, 11, 12}, 4));
  EXPECT_EQ(sink_.stored, Expected(tokens, 4));
  EXPECT_EQ(mapper_->size(), 3u);
  EXPECT_EQ(mapper_->counters().stored_blocks, 3u);
}

TEST_F(EngineBlockMapperTest, AdapterAndCacheSaltEnterTheNamespace) {
  BlockStored s = Stored({uint64_t{1}, uint64_t{2}}, std::nullopt, {1, 2, 3, 4}, 2);
  s.lora_name = "sql-lora";
  s.extra_keys = std::vector<std::optional<std::string>>{Pack({"sql-lora", "salt-1"}),
                                                         Pack({"sql-lora"})};
  mapper_->Apply(s);
  EXPECT_EQ(sink_.stored, Expected({1, 2, 3, 4}, 2, "sql-lora", "salt-1"));
  EXPECT_NE(sink_.stored, Expected({1, 2, 3, 4}, 2, "sql-lora"));
}

TEST_F(EngineBlockMapperTest, RemovalNamesTheKeysThroughTheMap) {
  mapper_->Apply(Stored({uint64_t{1}, uint64_t{2}}, std::nullopt, {1, 2, 3, 4}, 2));
  mapper_->Apply(BlockRemoved{.block_hashes = {uint64_t{2}, uint64_t{77}}, .medium = "GPU"});
  EXPECT_EQ(sink_.removed, (std::vector<BlockKey>{Expected({1, 2, 3, 4}, 2)[1]}));
  EXPECT_EQ(mapper_->counters().unknown_removed, 1u);
  EXPECT_EQ(mapper_->size(), 1u);
}

TEST_F(EngineBlockMapperTest, IntAndByteHashesAreKeptApart) {
  const std::string zeros(8, '\0');  // int 0's bits, as bytes: another hash
  const std::vector<BlockKey> keys = Expected({1, 2, 3, 4, 5, 6}, 2);
  mapper_->Apply(Stored({uint64_t{0}, zeros}, std::nullopt, {1, 2, 3, 4}, 2));
  mapper_->Apply(Stored({uint64_t{3}}, zeros, {5, 6}, 2));  // a bytes parent
  EXPECT_EQ(sink_.stored, keys);
  EXPECT_EQ(mapper_->size(), 3u);
  mapper_->Apply(BlockRemoved{.block_hashes = {zeros}, .medium = "GPU"});
  EXPECT_EQ(sink_.removed, (std::vector<BlockKey>{keys[1]}));
  mapper_->Apply(BlockRemoved{.block_hashes = {uint64_t{0}}, .medium = "GPU"});
  EXPECT_EQ(sink_.removed, (std::vector<BlockKey>{keys[1], keys[0]}));
  EXPECT_EQ(mapper_->size(), 1u);
  mapper_->Apply(AllBlocksCleared{});
  EXPECT_EQ(mapper_->size(), 0u);
}

TEST_F(EngineBlockMapperTest, ABlockHeldInTwoMediaGoesWhenBothLetItGo) {
  mapper_->Apply(Stored({uint64_t{1}}, std::nullopt, {1, 2}, 2));
  BlockStored offloaded = Stored({uint64_t{1}}, std::nullopt, {1, 2}, 2);
  offloaded.medium = "CPU";
  mapper_->Apply(offloaded);
  EXPECT_EQ(sink_.stored.size(), 1u);  // reported once
  mapper_->Apply(BlockRemoved{.block_hashes = {uint64_t{1}}, .medium = "GPU"});
  EXPECT_TRUE(sink_.removed.empty());
  mapper_->Apply(BlockRemoved{.block_hashes = {uint64_t{1}}, .medium = "CPU"});
  EXPECT_EQ(sink_.removed.size(), 1u);
}

TEST_F(EngineBlockMapperTest, UnknownParentIsCountedAndSkipped) {
  mapper_->Apply(Stored({uint64_t{5}}, uint64_t{4}, {1, 2}, 2));
  EXPECT_TRUE(sink_.stored.empty());
  EXPECT_EQ(mapper_->counters().unknown_parent, 1u);
  EXPECT_EQ(mapper_->size(), 0u);
}

TEST_F(EngineBlockMapperTest, ClearForgetsEverything) {
  mapper_->Apply(Stored({uint64_t{1}}, std::nullopt, {1, 2}, 2));
  mapper_->Apply(AllBlocksCleared{});
  EXPECT_EQ(sink_.cleared, 1);
  EXPECT_EQ(mapper_->size(), 0u);
  mapper_->Apply(Stored({uint64_t{2}}, uint64_t{1}, {3, 4}, 2));  // its parent was forgotten
  EXPECT_EQ(mapper_->counters().unknown_parent, 1u);
  mapper_->OnLost(7);  // a subscriber's loss clears too
  EXPECT_EQ(sink_.cleared, 2);
}

TEST_F(EngineBlockMapperTest, EventsThatTokensDoNotNameAreSkipped) {
  BlockStored mm = Stored({uint64_t{1}}, std::nullopt, {1, 2}, 2);
  msgpack::sbuffer buf;  // a multimodal key: (identifier, offset)
  msgpack::pack(buf, std::vector<std::tuple<std::string, int>>{{"img-1", 0}});
  mm.extra_keys = std::vector<std::optional<std::string>>{std::string(buf.data(), buf.size())};
  mapper_->Apply(mm);
  mapper_->Apply(Stored({uint64_t{1}}, std::nullopt, {1, 2, 3}, 2));  // 3 tokens for 1 block
  mapper_->Apply(Stored({uint64_t{1}}, std::nullopt, {}, 0));         // kvtierd's: no tokens
  BlockStored other = Stored({uint64_t{1}}, std::nullopt, {1, 2}, 2);
  other.group_idx = 1;
  mapper_->Apply(other);
  EXPECT_TRUE(sink_.stored.empty());
  const auto c = mapper_->counters();
  EXPECT_EQ(c.unsupported_extra_keys, 1u);
  EXPECT_EQ(c.malformed_events, 2u);
  EXPECT_EQ(c.other_group, 1u);
}

TEST_F(EngineBlockMapperTest, TheMapIsBounded) {
  std::vector<uint32_t> tokens;
  std::vector<EngineHash> hashes;
  for (uint32_t i = 0; i < 60; ++i) {
    tokens.push_back(i);
    hashes.push_back(uint64_t{i});
  }
  mapper_->Apply(Stored(hashes, std::nullopt, tokens, 1));
  mapper_->Apply(Stored({uint64_t{1000}, uint64_t{1001}, uint64_t{1002}, uint64_t{1003},
                         uint64_t{1004}},
                        std::nullopt, {9, 9, 9, 9, 9}, 1));
  EXPECT_EQ(mapper_->counters().overflows, 1u);
  EXPECT_EQ(sink_.cleared, 1);
  EXPECT_EQ(mapper_->size(), 5u);
}

}  // namespace
}  // namespace kvtier::kvevents
