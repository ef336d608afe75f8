#include "kvevents/kv_events.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

namespace kvtier::kvevents {
namespace {

std::string Golden(const std::string& name) {
  std::ifstream f(std::string(KVTIER_SOURCE_DIR) + "/tests/data/kv_events/" + name,
                  std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Msgpack(std::initializer_list<uint8_t> bytes) { return std::string(bytes.begin(), bytes.end()); }

TEST(KvEventsTest, DecodesArrayFormGoldenAndEncodesItByteForByte) {
  const std::string bytes = Golden("array_int.msgpack");
  ASSERT_FALSE(bytes.empty());
  absl::StatusOr<EventBatch> b = Decode(bytes);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->ts, 1700000000.5);
  EXPECT_EQ(b->data_parallel_rank, 1);
  ASSERT_EQ(b->events.size(), 3u);
  const auto& s = std::get<BlockStored>(b->events[0]);
  EXPECT_EQ(s.block_hashes,
            (std::vector<EngineHash>{uint64_t{0x1122334455667788}, ~uint64_t{0}}));
  EXPECT_FALSE(s.parent_block_hash.has_value());
  EXPECT_EQ(s.token_ids, (std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 70000}));
  EXPECT_EQ(s.block_size, 4u);
  EXPECT_EQ(s.lora_id, 7);
  EXPECT_EQ(s.medium, "GPU");
  EXPECT_EQ(s.lora_name, "sql-lora");
  ASSERT_TRUE(s.extra_keys.has_value());
  ASSERT_EQ(s.extra_keys->size(), 2u);
  absl::StatusOr<ExtraKeySummary> first = SummarizeExtraKeys(*(*s.extra_keys)[0]);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->strings, (std::vector<std::string>{"sql-lora", "salt-1"}));
  EXPECT_FALSE(first->has_non_strings);
  EXPECT_EQ(s.group_idx, 0);
  const auto& r = std::get<BlockRemoved>(b->events[1]);
  EXPECT_EQ(r.block_hashes, (std::vector<EngineHash>{~uint64_t{0}}));
  EXPECT_EQ(r.medium, "GPU");
  EXPECT_TRUE(std::holds_alternative<AllBlocksCleared>(b->events[2]));
  EXPECT_EQ(Encode(*b, WireForm::kArray), bytes);
}

TEST(KvEventsTest, DecodesMapFormGoldenAndEncodesItByteForByte) {
  const std::string bytes = Golden("map_bytes.msgpack");
  absl::StatusOr<EventBatch> b = Decode(bytes);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->data_parallel_rank.has_value());
  ASSERT_EQ(b->events.size(), 2u);
  const auto& s = std::get<BlockStored>(b->events[0]);
  std::string a(32, '\0'), c(32, '\0');
  for (int i = 0; i < 32; ++i) a[i] = static_cast<char>(i), c[i] = static_cast<char>(32 + i);
  EXPECT_EQ(s.block_hashes, (std::vector<EngineHash>{c}));
  EXPECT_EQ(s.parent_block_hash, EngineHash(a));
  EXPECT_EQ(s.medium, "CPU");
  EXPECT_FALSE(s.lora_id.has_value());
  EXPECT_FALSE(s.extra_keys.has_value());
  const auto& r = std::get<BlockRemoved>(b->events[1]);
  EXPECT_EQ(r.block_hashes, (std::vector<EngineHash>{a, c}));
  EXPECT_EQ(r.group_idx, 1);
  EXPECT_EQ(Encode(*b, WireForm::kMap), bytes);
}

TEST(KvEventsTest, OldSenderWithoutTrailingFields) {
  absl::StatusOr<EventBatch> b = Decode(Golden("old_sender.msgpack"));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->data_parallel_rank.has_value());
  ASSERT_EQ(b->events.size(), 2u);
  const auto& s = std::get<BlockStored>(b->events[0]);
  EXPECT_EQ(s.block_hashes, (std::vector<EngineHash>{uint64_t{11}, uint64_t{12}}));
  EXPECT_FALSE(s.medium.has_value());
  EXPECT_FALSE(s.lora_name.has_value());
  EXPECT_FALSE(std::get<BlockRemoved>(b->events[1]).medium.has_value());
}

TEST(KvEventsTest, NewSenderUnknownFieldsAndEventsAreSkipped) {
  absl::StatusOr<EventBatch> b = Decode(Golden("new_sender.msgpack"));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->data_parallel_rank, 0);
  EXPECT_EQ(b->unknown_events, 1u);
  ASSERT_EQ(b->events.size(), 2u);
  const auto& s = std::get<BlockStored>(b->events[0]);
  EXPECT_EQ(s.parent_block_hash, EngineHash(uint64_t{20}));
  EXPECT_EQ(s.kv_cache_spec_kind, "full_attention");
  EXPECT_TRUE(std::holds_alternative<AllBlocksCleared>(b->events[1]));
}

EventBatch Sample() {
  EventBatch b;
  b.ts = 12.25;
  b.data_parallel_rank = 3;
  BlockStored s;
  s.block_hashes = {uint64_t{1}, std::string("\x00\xff\x10", 3)};
  s.parent_block_hash = uint64_t{99};
  s.token_ids = {0, 1, 4294967295u, 7};
  s.block_size = 2;
  s.medium = "DISK";
  s.lora_name = "x";
  s.extra_keys = std::vector<std::optional<std::string>>{std::nullopt,
                                                         Msgpack({0x91, 0xa1, 'y'})};
  s.kv_cache_spec_sliding_window = 128;
  b.events.push_back(s);
  b.events.push_back(BlockRemoved{.block_hashes = {uint64_t{1}}, .medium = "CPU", .group_idx = 2});
  b.events.push_back(AllBlocksCleared{});
  return b;
}

TEST(KvEventsTest, RoundTripsInBothForms) {
  for (WireForm form : {WireForm::kArray, WireForm::kMap}) {
    const EventBatch b = Sample();
    absl::StatusOr<EventBatch> back = Decode(Encode(b, form));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, b);
  }
  EventBatch empty;
  absl::StatusOr<EventBatch> back = Decode(Encode(empty));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, empty);
}

TEST(KvEventsTest, UnsetExtraKeysBeforeALaterFieldRoundTripAsNil) {
  // The array form writes every field up to the last set one; extra_keys goes as nil.
  BlockStored s{.block_hashes = {uint64_t{5}}, .token_ids = {1, 2}, .block_size = 2};
  s.kv_cache_spec_kind = "full_attention";
  const EventBatch b{.ts = 1, .events = {s}};
  for (WireForm form : {WireForm::kArray, WireForm::kMap}) {
    absl::StatusOr<EventBatch> back = Decode(Encode(b, form));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, b);
  }
}

void ExpectInvalid(const std::string& bytes, std::string_view says) {
  absl::StatusOr<EventBatch> b = Decode(bytes);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().ToString().find(says), std::string::npos) << b.status();
}

TEST(KvEventsTest, MalformedBatchesAreInvalidArgumentWithAReason) {
  ExpectInvalid("", "truncated");
  ExpectInvalid(Msgpack({0xc1}), "not msgpack");              // a reserved byte
  ExpectInvalid(Msgpack({0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x90, 0x00}), "trailing");
  ExpectInvalid(Msgpack({0x92, 0xa1, 'x', 0x90}), "batch.ts: want float");
  ExpectInvalid(Msgpack({0x91, 0x00}), "missing events");
  ExpectInvalid(Msgpack({0x92, 0x00, 0x91, 0x05}), "events[0]: want array or map");
  ExpectInvalid(Msgpack({0x92, 0x00, 0x91, 0x91, 0x07}), "tag: want str");
  ExpectInvalid(Msgpack({0x92, 0x00, 0x91, 0x81, 0xa1, 'x', 0x00}), "without a \"type\"");
  // ["BlockStored", [1]]: the fields after block_hashes are required.
  ExpectInvalid(Msgpack({0x92, 0x00, 0x91, 0x92, 0xab, 'B', 'l', 'o', 'c', 'k', 'S', 't', 'o',
                         'r', 'e', 'd', 0x91, 0x01}),
                "missing parent_block_hash");
  ExpectInvalid(Msgpack({0x92, 0x00, 0x91, 0x91, 0xac, 'B', 'l', 'o', 'c', 'k', 'R', 'e', 'm',
                         'o', 'v', 'e', 'd'}),
                "missing block_hashes");
  // A hash that is a string.
  ExpectInvalid(Msgpack({0x92, 0x00, 0x91, 0x92, 0xac, 'B', 'l', 'o', 'c', 'k', 'R', 'e', 'm',
                         'o', 'v', 'e', 'd', 0x91, 0xa1, 'h'}),
                "block_hashes[0]: want int or bin");
  // An array that claims 2^32-1 elements in a few bytes.
  ExpectInvalid(Msgpack({0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff}), "");
  ExpectInvalid(std::string(100, '\x91') + std::string(1, '\x00'), "deeper");
}

TEST(KvEventsTest, EveryTruncationAndByteFlipOfTheGoldensIsHandled) {
  for (const char* name : {"array_int.msgpack", "map_bytes.msgpack", "new_sender.msgpack"}) {
    const std::string g = Golden(name);
    for (size_t n = 0; n < g.size(); ++n) {
      EXPECT_FALSE(Decode(g.substr(0, n)).ok()) << name << " cut at " << n;
    }
    for (size_t i = 0; i < g.size(); ++i) {
      for (uint8_t x : {0x01, 0x10, 0x80, 0xff}) {
        std::string m = g;
        m[i] = static_cast<char>(m[i] ^ x);
        absl::StatusOr<EventBatch> b = Decode(m);  // ok or INVALID_ARGUMENT, never a crash
        if (!b.ok()) {
          EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvtier::kvevents
