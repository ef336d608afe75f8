#include "cache/block_store.h"

#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <atomic>
#include <fstream>
#include <random>
#include <thread>

#include "cache/block_store_test_util.h"
#include "cache/nvme_tier.h"
#include "common/checksum.h"
#include "common/mutex.h"
#include "testing/small_disk.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::ExpectBlock;
using ::kvtier::testing::Has;
using ::kvtier::testing::kBlock;
using ::kvtier::testing::kNoParent;
using ::kvtier::testing::OpenOrDie;
using ::kvtier::testing::PutN;
using ::kvtier::testing::SmallOptions;
using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;
using ::kvtier::testing::WithNvme;

TEST(BlockStore, PutGetStatRoundTrip) {
  auto s = OpenOrDie(SmallOptions(8));
  ASSERT_TRUE(PutN(*s, 1).ok());
  ExpectBlock(*s, 1);
  auto info = s->Stat(TestKey(1));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->tier, Tier::kHost);
  EXPECT_EQ(info->size, kBlock);
  EXPECT_EQ(info->checksum, Checksum(TestBlock(1, kBlock).data(), kBlock));
  StoreStats st = s->Stats();
  EXPECT_EQ(st.tiers[1].blocks, 1u);
  EXPECT_EQ(st.tiers[1].hits, 1u);
  EXPECT_GT(st.index_bytes, 0u);
}

TEST(BlockStore, RepeatedPutIsANoOp) {
  auto s = OpenOrDie(SmallOptions(8));
  ASSERT_TRUE(PutN(*s, 1).ok());
  // Same key, other bytes: the stored block is immutable.
  ASSERT_TRUE(s->Put(TestKey(1), kNoParent, TestBlock(99, kBlock)).ok());
  ExpectBlock(*s, 1);
  EXPECT_EQ(s->Stats().puts_noop, 1u);
  EXPECT_EQ(s->Stats().tiers[1].blocks, 1u);
}

TEST(BlockStore, BlockIsInvisibleUntilCommitted) {
  auto s = OpenOrDie(SmallOptions(8));
  auto h = s->BeginPut(TestKey(1), kNoParent, kBlock);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_NE(h->host_data(), nullptr);
  const auto data = TestBlock(1, kBlock);
  ASSERT_TRUE(h->Write(0, std::span(data).first(100)).ok());
  const BlockKey chain[] = {TestKey(1)};
  EXPECT_EQ(s->Lookup(chain).matched, 0u);
  EXPECT_EQ(s->Get(TestKey(1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s->Lease(chain).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(h->Write(100, std::span(data).subspan(100)).ok());
  EXPECT_EQ(h->Write(kBlock, data).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(h->Commit().ok());
  EXPECT_EQ(s->Lookup(chain).matched, 1u);
  ExpectBlock(*s, 1);
  EXPECT_EQ(h->Commit().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(BlockStore, AbortedPutLeavesNothing) {
  auto s = OpenOrDie(SmallOptions(8));
  {
    auto h = s->BeginPut(TestKey(1), kNoParent, kBlock);
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(s->Stats().tiers[1].used_bytes, kBlock);
  }  // dropped without Commit: a writer that went away
  EXPECT_FALSE(Has(*s, 1));
  EXPECT_EQ(s->Stats().tiers[1].used_bytes, 0u);
  EXPECT_EQ(s->Stats().puts_aborted, 1u);
  // A declared checksum that does not match aborts too.
  const auto data = TestBlock(2, kBlock);
  EXPECT_EQ(s->Put(TestKey(2), kNoParent, data, {.expected_checksum = 12345}).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_FALSE(Has(*s, 2));
  ASSERT_TRUE(
      s->Put(TestKey(2), kNoParent, data, {.expected_checksum = Checksum(data.data(), kBlock)})
          .ok());
  ExpectBlock(*s, 2);
}

TEST(BlockStore, ConcurrentPutsOfOneKeyStoreItOnce) {
  auto s = OpenOrDie(SmallOptions(64));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (uint64_t n = 0; n < 50; ++n) {
        if (!PutN(*s, n).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (uint64_t n = 0; n < 50; ++n) ExpectBlock(*s, n);
  EXPECT_EQ(s->Stats().tiers[1].blocks, 50u);
  s->WaitForMover();
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST(BlockStore, BadInputIsAClearErrorAndLosesNothing) {
  auto s = OpenOrDie(SmallOptions(8));
  ASSERT_TRUE(PutN(*s, 1).ok());
  const KvLayout layout = KvLayout::SmallMla();  // 2,560 bytes per block
  const auto block = TestBlock(5, kBlock);
  struct Case {
    std::string name;
    absl::Status status;
    absl::StatusCode code;
  };
  std::vector<uint8_t> small(10);
  const BlockKey missing[] = {TestKey(1), TestKey(77)};
  const BlockKey twice[] = {TestKey(1), TestKey(1)};
  std::vector<Case> cases = {
      {"zero key", s->Put(BlockKey{}, kNoParent, block), absl::StatusCode::kInvalidArgument},
      {"own parent", s->Put(TestKey(5), TestKey(5), block), absl::StatusCode::kInvalidArgument},
      {"empty block", s->Put(TestKey(5), kNoParent, {}), absl::StatusCode::kInvalidArgument},
      {"oversized block", s->Put(TestKey(5), kNoParent, TestBlock(5, kBlock + 1)),
       absl::StatusCode::kInvalidArgument},
      {"size does not match layout", s->Put(TestKey(5), kNoParent, block, {.layout = &layout}),
       absl::StatusCode::kInvalidArgument},
      {"durable without NVMe", s->Put(TestKey(5), kNoParent, block, {.durable = true}),
       absl::StatusCode::kFailedPrecondition},
      {"buffer too small", s->Get(TestKey(1), std::span(small)).status(),
       absl::StatusCode::kInvalidArgument},
      {"get missing", s->Get(TestKey(9)).status(), absl::StatusCode::kNotFound},
      {"lease missing", s->Lease(missing).status(), absl::StatusCode::kNotFound},
      {"lease nothing", s->Lease({}).status(), absl::StatusCode::kInvalidArgument},
      {"lease a key twice", s->Lease(twice).status(), absl::StatusCode::kInvalidArgument},
      {"lease too long", s->Lease(std::span(missing).first(1), int64_t{1} << 40).status(),
       absl::StatusCode::kInvalidArgument},
      {"release unknown", s->Release(424242), absl::StatusCode::kNotFound},
      {"delete missing", s->Delete(TestKey(9)), absl::StatusCode::kNotFound},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.code(), c.code) << c.name << ": " << c.status;
    EXPECT_FALSE(c.status.message().empty()) << c.name;
  }
  EXPECT_NE(s->Lease(missing).status().message().find("position 1"), std::string::npos);
  EXPECT_FALSE(Has(*s, 5));
  ExpectBlock(*s, 1);
  // A matching layout is accepted.
  EXPECT_TRUE(s->Put(TestKey(6), kNoParent, TestBlock(6, 2560), {.layout = &layout}).ok());
}

TEST(BlockStore, OptionsAreValidatedByName) {
  auto expect_field = [](StoreOptions o, const std::string& field) {
    auto s = BlockStore::Open(o);
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(field), std::string::npos) << s.status();
  };
  StoreOptions o = SmallOptions(8);
  o.host_bytes = kBlock / 2;  // a tier too small for one block
  expect_field(o, "host_bytes");
  o = SmallOptions(8);
  o.max_block_bytes = 0;
  expect_field(o, "max_block_bytes");
  o = SmallOptions(8);
  o.index_shards = 3;
  expect_field(o, "index_shards");
  o = SmallOptions(8);
  o.nvme_path = "/tmp/unused";
  o.nvme_bytes = 1;
  expect_field(o, "nvme_bytes");
  o = SmallOptions(8);
  o.max_lease_ttl_us = 1;
  expect_field(o, "max_lease_ttl_us");
  o = SmallOptions(8);
  o.tenant_memory_bytes = kBlock - 1;
  expect_field(o, "tenant_memory_bytes");
}

TEST(BlockStore, LookupCountsTheLeadingPresentBlocks) {
  auto s = OpenOrDie(SmallOptions(8));
  for (uint64_t n = 0; n < 5; ++n) {
    ASSERT_TRUE(PutN(*s, n, n == 0 ? std::nullopt : std::optional<uint64_t>(n - 1)).ok());
  }
  ASSERT_TRUE(s->Delete(TestKey(3)).ok());
  std::vector<BlockKey> chain;
  for (uint64_t n = 0; n < 5; ++n) chain.push_back(TestKey(n));
  LookupResult r = s->Lookup(chain);
  EXPECT_EQ(r.matched, 3u);
  ASSERT_EQ(r.tiers.size(), 3u);
  for (Tier t : r.tiers) EXPECT_EQ(t, Tier::kHost);
  EXPECT_EQ(s->Lookup({}).matched, 0u);
}

// Long chains are looked up in runs of keys (64, 128, ... 1024): a block missing at or around a
// run's edges ends the match there, whatever the number of index shards.
TEST(BlockStore, LookupOfALongChainStopsAtTheFirstMissingBlock) {
  constexpr uint64_t kChain = 3000;
  for (size_t shards : {1, 8, 4096}) {
    StoreOptions o = SmallOptions(kChain);
    o.index_shards = shards;
    auto s = OpenOrDie(o);
    auto put = [&](uint64_t n) {
      return PutN(*s, n, n == 0 ? std::nullopt : std::optional<uint64_t>(n - 1));
    };
    std::vector<BlockKey> chain;
    for (uint64_t n = 0; n < kChain; ++n) {
      ASSERT_TRUE(put(n).ok());
      chain.push_back(TestKey(n));
    }
    EXPECT_EQ(s->Lookup(chain).matched, kChain) << shards << " shards";
    for (uint64_t missing : {0, 1, 63, 64, 65, 191, 192, 1000, 2047, 2048, 2999}) {
      ASSERT_TRUE(s->Delete(TestKey(missing)).ok());
      const LookupResult r = s->Lookup(chain);
      EXPECT_EQ(r.matched, missing) << shards << " shards";
      EXPECT_EQ(r.tiers.size(), missing) << shards << " shards";
      ASSERT_TRUE(put(missing).ok());
    }
  }
}

// Host tier of 8 blocks; two chains of four fill it.
class EvictionOrder : public ::testing::Test {
 protected:
  void SetUp() override {
    s_ = OpenOrDie(SmallOptions(8));
    for (uint64_t chain : {0u, 10u}) {
      for (uint64_t i = 0; i < 4; ++i) {
        ASSERT_TRUE(
            PutN(*s_, chain + i, i == 0 ? std::nullopt : std::optional<uint64_t>(chain + i - 1))
                .ok());
      }
    }
  }
  std::unique_ptr<BlockStore> s_;
};

TEST_F(EvictionOrder, ChainTailsGoBeforeHeads) {
  // Plain LRU would evict block 0, the head of the oldest chain, making 1-3 useless.
  ASSERT_TRUE(PutN(*s_, 100).ok());
  EXPECT_FALSE(Has(*s_, 3)) << "the oldest tail goes first";
  EXPECT_TRUE(Has(*s_, 0));
  ASSERT_TRUE(PutN(*s_, 101).ok());
  EXPECT_FALSE(Has(*s_, 2)) << "then the block that became a tail";
  for (uint64_t n : {0u, 1u, 10u, 11u, 12u, 13u}) EXPECT_TRUE(Has(*s_, n)) << n;
  EXPECT_EQ(s_->Stats().evictions, 2u);
}

TEST_F(EvictionOrder, OrphansGoFirst) {
  // Touch chain 0 so that by recency alone chain 10 would go first.
  for (uint64_t n = 0; n < 4; ++n) ExpectBlock(*s_, n);
  ASSERT_TRUE(s_->Delete(TestKey(0)).ok());  // 1..3 can no longer be prefix hits
  EXPECT_EQ(s_->Stats().orphan_blocks, 1u) << "block 1 lost its parent";
  ASSERT_TRUE(PutN(*s_, 100).ok());  // fills the freed slot
  ASSERT_TRUE(PutN(*s_, 101).ok());
  EXPECT_FALSE(Has(*s_, 1)) << "the orphan goes before any tail";
  ASSERT_TRUE(PutN(*s_, 102).ok());
  EXPECT_FALSE(Has(*s_, 2)) << "its child became an orphan and goes next";
  ASSERT_TRUE(PutN(*s_, 103).ok());
  EXPECT_FALSE(Has(*s_, 3));
  for (uint64_t n : {10u, 11u, 12u, 13u}) EXPECT_TRUE(Has(*s_, n)) << n;
  EXPECT_EQ(s_->Stats().orphan_blocks, 0u);
  EXPECT_TRUE(s_->CheckConsistency().ok()) << s_->CheckConsistency();
}

TEST_F(EvictionOrder, RecencyDecidesWithinAClass) {
  ExpectBlock(*s_, 3);  // chain 0's tail is now more recent than chain 10's
  ASSERT_TRUE(PutN(*s_, 100).ok());
  EXPECT_FALSE(Has(*s_, 13));
  EXPECT_TRUE(Has(*s_, 3));
}

TEST_F(EvictionOrder, AParentArrivingAfterItsChildAdoptsIt) {
  ASSERT_TRUE(s_->Delete(TestKey(10)).ok());
  EXPECT_EQ(s_->Stats().orphan_blocks, 1u);
  ASSERT_TRUE(PutN(*s_, 10).ok());  // the parent comes back
  EXPECT_EQ(s_->Stats().orphan_blocks, 0u);
}

class NvmeStore : public ::testing::Test {
 protected:
  StoreOptions Options(size_t host_blocks, NvmeAdmission admission = NvmeAdmission::kAll) {
    return WithNvme(SmallOptions(host_blocks), dir_.Sub("nvme"), 1 << 20, admission);
  }
  TempDir dir_;
};

TEST_F(NvmeStore, DemotesToFlashAndPromotesOnHit) {
  StoreOptions o = Options(5);
  o.host_reserve_bytes = kBlock;  // the mover keeps a chunk free for promotions
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 10; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  s->WaitForMover();
  StoreStats st = s->Stats();
  EXPECT_EQ(st.tiers[1].blocks, 4u);
  EXPECT_EQ(st.tiers[2].blocks, 6u);
  EXPECT_EQ(st.demotions, 6u);
  EXPECT_EQ(st.evictions, 0u);
  EXPECT_EQ(st.nvme_bytes_written, 6 * kBlock);
  EXPECT_EQ(s->Stat(TestKey(0))->tier, Tier::kNvme);
  ExpectBlock(*s, 0);  // served from flash, verified, promoted into the free chunk
  EXPECT_EQ(s->Stat(TestKey(0))->tier, Tier::kHost);
  EXPECT_EQ(s->Stats().promotions, 1u);
  EXPECT_EQ(s->Stats().tiers[2].hits, 1u);
  s->WaitForMover();  // frees a chunk again: demotes 6, the least recent
  EXPECT_EQ(s->Stat(TestKey(6))->tier, Tier::kNvme);
  EXPECT_EQ(s->Stats().nvme_bytes_written, 7 * kBlock);
  // New blocks push out 7, 8, 9 (written) and then 0, whose flash copy the promotion kept: its
  // second demotion writes nothing.
  for (uint64_t n = 20; n < 24; ++n) {
    ASSERT_TRUE(PutN(*s, n).ok());
    s->WaitForMover();
  }
  EXPECT_EQ(s->Stat(TestKey(0))->tier, Tier::kNvme);
  EXPECT_EQ(s->Stats().demotions, 11u);
  EXPECT_EQ(s->Stats().nvme_bytes_written, 10 * kBlock);
  for (uint64_t n = 0; n < 10; ++n) ExpectBlock(*s, n);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

// Demotions and promotions are reported as moves (the block stays visible), each naming the tier
// it left and the one it reached; a store and a removal name their tier.
TEST_F(NvmeStore, MovesBetweenTiersAreReportedAsMoves) {
  std::vector<BlockEvent> events;  // appended under the store's policy lock
  StoreOptions o = Options(5);
  o.host_reserve_bytes = kBlock;
  o.on_block_event = [&events](const BlockEvent& e) { events.push_back(e); };
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 10; ++n) {
    ASSERT_TRUE(PutN(*s, n, n > 0 ? std::optional<uint64_t>(n - 1) : std::nullopt).ok());
  }
  s->WaitForMover();
  ExpectBlock(*s, 0);  // promoted from flash
  s->WaitForMover();
  ASSERT_TRUE(s->Delete(TestKey(9)).ok());
  s.reset();
  size_t stores = 0, demotions = 0, promotions = 0, removals = 0;
  for (const BlockEvent& e : events) {
    if (!e.stored) {
      ++removals;
      EXPECT_EQ(e.key, TestKey(9));
    } else if (!e.moved_from.has_value()) {
      ++stores;
      EXPECT_EQ(e.tier, Tier::kHost);
    } else if (*e.moved_from == Tier::kHost) {
      ++demotions;
      EXPECT_EQ(e.tier, Tier::kNvme);
    } else {
      ++promotions;
      EXPECT_EQ(e.key, TestKey(0));
      EXPECT_EQ(e.tier, Tier::kHost);
    }
  }
  EXPECT_EQ(stores, 10u);
  EXPECT_EQ(demotions, 7u);  // 0-5, then 6 to make room after 0's promotion
  EXPECT_EQ(promotions, 1u);
  EXPECT_EQ(removals, 1u);
  EXPECT_EQ(events[1].parent, TestKey(0));
}

TEST_F(NvmeStore, TailsAreCountedPerTier) {
  // Chain 0-1-2-3 then chain 10-11: host holds 4. Demoting 3 to flash makes 2 the host tier's
  // tail of that chain, so it goes next (not chain 10's head).
  auto s = OpenOrDie(Options(4));
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(PutN(*s, i, i == 0 ? std::nullopt : std::optional<uint64_t>(i - 1)).ok());
  }
  ASSERT_TRUE(PutN(*s, 10).ok());
  EXPECT_EQ(s->Stat(TestKey(3))->tier, Tier::kNvme);
  ASSERT_TRUE(PutN(*s, 11, 10).ok());
  EXPECT_EQ(s->Stat(TestKey(2))->tier, Tier::kNvme);
  EXPECT_EQ(s->Stat(TestKey(10))->tier, Tier::kHost);
  ExpectBlock(*s, 3);  // promoted back: 1 and 2 are on flash now or soon
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(NvmeStore, SeenTwiceAdmissionKeepsOneHitBlocksOffFlash) {
  auto s = OpenOrDie(Options(4, NvmeAdmission::kSeenTwice));
  for (uint64_t n = 0; n < 4; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  ExpectBlock(*s, 0);
  ExpectBlock(*s, 1);
  for (uint64_t n = 10; n < 14; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  StoreStats st = s->Stats();
  EXPECT_EQ(st.nvme_admission_rejections, 2u) << "blocks 2 and 3 were never read";
  EXPECT_EQ(st.nvme_bytes_written, 2 * kBlock);
  EXPECT_EQ(s->Stat(TestKey(0))->tier, Tier::kNvme);
  EXPECT_FALSE(Has(*s, 2));
}

TEST_F(NvmeStore, WriteBudgetLimitsFlashWrites) {
  ManualClock clock;
  StoreOptions o = Options(2);
  o.clock = &clock;
  o.nvme_write_bytes_per_s = 2 * kBlock;
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 7; ++n) ASSERT_TRUE(PutN(*s, n).ok());  // five demotions
  EXPECT_EQ(s->Stats().nvme_bytes_written, 2 * kBlock);
  EXPECT_EQ(s->Stats().nvme_admission_rejections, 3u);
  clock.AdvanceSeconds(1);
  ASSERT_TRUE(PutN(*s, 7).ok());
  EXPECT_EQ(s->Stats().nvme_bytes_written, 3 * kBlock);
}

TEST_F(NvmeStore, FlashCapacityEvictsFromFlash) {
  StoreOptions o = Options(2);
  o.nvme_bytes = 3 * kBlock;
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 8; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  StoreStats st = s->Stats();
  EXPECT_LE(st.tiers[2].used_bytes, 3 * kBlock);
  EXPECT_EQ(st.tiers[2].blocks, 3u);
  EXPECT_EQ(st.evictions, 3u);
  EXPECT_FALSE(Has(*s, 0));
  EXPECT_TRUE(Has(*s, 5));
}

TEST_F(NvmeStore, DurableAndFlushedBlocksSurviveReopen) {
  {
    auto s = OpenOrDie(Options(4));
    for (uint64_t n = 0; n < 3; ++n) {
      ASSERT_TRUE(
          PutN(*s, n, n == 0 ? std::nullopt : std::optional<uint64_t>(n - 1), {.durable = true})
              .ok());
    }
    for (uint64_t n = 10; n < 16; ++n) ASSERT_TRUE(PutN(*s, n).ok());  // some demoted
    EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  }  // clean close flushes what was demoted
  auto s = OpenOrDie(Options(4));
  for (uint64_t n = 0; n < 3; ++n) ExpectBlock(*s, n);
  const BlockKey chain[] = {TestKey(0), TestKey(1), TestKey(2)};
  EXPECT_EQ(s->Lookup(chain).matched, 3u);
  EXPECT_EQ(s->Stats().orphan_blocks, 0u) << "chain links are rebuilt from stored parents";
  size_t demoted = 0;
  for (uint64_t n = 10; n < 16; ++n) {
    if (Has(*s, n)) {
      ExpectBlock(*s, n);
      ++demoted;
    }
  }
  EXPECT_EQ(demoted, 2u) << "blocks 10 and 11 were demoted (after the durable chain, whose flash\n"
                            "copies made demoting it free); the rest were only in RAM";
  EXPECT_EQ(s->Stats().checksum_failures, 0u);
}

TEST_F(NvmeStore, CorruptFlashBlockIsDroppedNotServed) {
  {
    auto tier = NvmeTier::Open({.path = dir_.Sub("nvme")});
    ASSERT_TRUE(tier.ok()) << tier.status();
    const auto good = TestBlock(1, kBlock);
    auto bad = good;
    bad[100] ^= 1;
    ASSERT_TRUE(
        (*tier)
            ->Write(TestKey(1), {kNoParent, Checksum(good.data(), kBlock), kBlock}, bad, true)
            .ok());
    ASSERT_TRUE(
        (*tier)
            ->Write(TestKey(2), {TestKey(1), Checksum(good.data(), kBlock), kBlock}, good, true)
            .ok());
  }
  auto s = OpenOrDie(Options(4));
  EXPECT_EQ(s->Get(TestKey(1)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(Has(*s, 1));
  EXPECT_EQ(s->Stats().checksum_failures, 1u);
  auto ok = s->Get(TestKey(2));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, TestBlock(1, kBlock));
  EXPECT_EQ(s->Stats().orphan_blocks, 1u) << "block 2's parent is gone";
  s.reset();
  auto reopened = OpenOrDie(Options(4));
  EXPECT_FALSE(Has(*reopened, 1)) << "the corrupt block was deleted from flash too";
}

TEST_F(NvmeStore, UnwritableDirectoryIsAClearError) {
  std::ofstream(dir_.Sub("file")) << "x";
  StoreOptions o = Options(4);
  o.nvme_path = dir_.Sub("file") + "/nvme";
  auto s = BlockStore::Open(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("nvme.path"), std::string::npos) << s.status();
}

TEST_F(NvmeStore, FullDiskFailsTheDurablePutAndKeepsEverythingElse) {
  auto fs = std::make_shared<testing::SmallDiskFs>(uint64_t{1} << 30);
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  StoreOptions o = Options(8);
  o.nvme_env = env.get();
  o.nvme_direct_io = false;
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 3; ++n) ASSERT_TRUE(PutN(*s, n, std::nullopt, {.durable = true}).ok());
  fs->set_capacity(fs->used());  // the disk is full from now on
  absl::Status st = PutN(*s, 3, std::nullopt, {.durable = true});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_FALSE(Has(*s, 3)) << "an unacknowledged durable put is not visible";
  for (uint64_t n = 0; n < 3; ++n) ExpectBlock(*s, n);
  // Cache puts still work in RAM, and so does everything already stored.
  ASSERT_TRUE(PutN(*s, 4).ok());
  ExpectBlock(*s, 4);
  s.reset();
}

TEST(BlockStoreLeases, LeasedBlocksAreNeverEvictedAndLeasesExpire) {
  ManualClock clock;
  StoreOptions o = SmallOptions(4);
  o.clock = &clock;
  o.lease_ttl_us = 1'000'000;
  o.max_leased_bytes = o.host_bytes;
  auto s = OpenOrDie(o);
  std::vector<BlockKey> keys;
  for (uint64_t n = 0; n < 4; ++n) {
    ASSERT_TRUE(PutN(*s, n).ok());
    keys.push_back(TestKey(n));
  }
  auto lease = s->Lease(keys);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(lease->blocks.size(), 4u);
  EXPECT_EQ(lease->blocks[2].key, TestKey(2));
  EXPECT_EQ(lease->blocks[2].tier, Tier::kHost);
  EXPECT_EQ(s->Stats().leased_bytes, 4 * kBlock);
  EXPECT_EQ(PutN(*s, 10).code(), absl::StatusCode::kResourceExhausted)
      << "every block is leased: nothing may be evicted";
  EXPECT_EQ(s->Delete(TestKey(1)).code(), absl::StatusCode::kFailedPrecondition);
  clock.AdvanceSeconds(0.5);
  EXPECT_EQ(s->ExpireLeases(), 0u);
  clock.AdvanceSeconds(0.6);
  ASSERT_TRUE(PutN(*s, 10).ok()) << "the lease expired, capacity came back";
  EXPECT_EQ(s->Stats().leases_expired, 1u);
  EXPECT_EQ(s->Stats().leases_active, 0u);
  EXPECT_EQ(s->Release(lease->id).code(), absl::StatusCode::kNotFound);
}

TEST(BlockStoreLeases, GenerationsTellWhetherALeasedBlockStayedPut) {
  // Every placement gets a new generation: a block seen unchanged after its lease ended never
  // left its place; one dropped, stored again (even at the same place) or moved is caught.
  ManualClock clock;
  StoreOptions o = SmallOptions(2);
  o.clock = &clock;
  o.lease_ttl_us = 1'000'000;
  o.max_leased_bytes = o.host_bytes;
  auto s = OpenOrDie(o);
  ASSERT_TRUE(PutN(*s, 1).ok());
  ASSERT_TRUE(PutN(*s, 2).ok());
  const BlockKey keys[] = {TestKey(1), TestKey(2)};
  auto lease = s->Lease(keys);
  ASSERT_TRUE(lease.ok());
  EXPECT_NE(lease->blocks[0].generation, lease->blocks[1].generation);
  clock.AdvanceSeconds(2);
  s->ExpireLeases();  // or the mover did, at its last tick
  EXPECT_EQ(s->Stats().leases_expired, 1u);
  EXPECT_EQ(s->FirstChanged(lease->blocks), 2u) << "expired, but nothing moved";

  ASSERT_TRUE(s->Delete(TestKey(2)).ok());
  EXPECT_EQ(s->FirstChanged(lease->blocks), 1u) << "block 2 is gone";
  ASSERT_TRUE(PutN(*s, 2).ok());  // back, most likely in the same place
  auto again = s->Stat(TestKey(2));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->location, lease->blocks[1].location);
  EXPECT_EQ(s->FirstChanged(lease->blocks), 1u) << "stored again: a new generation";
  ASSERT_TRUE(PutN(*s, 3).ok());  // evicts block 1 (no NVMe tier)
  EXPECT_EQ(s->FirstChanged(std::span(lease->blocks).first(1)), 0u);
}

TEST(BlockStoreTenants, APutPastItsTenantsQuotaEvictsThatTenantsOwnBlocks) {
  StoreOptions o = SmallOptions(8);
  o.tenant_memory_bytes = 3 * kBlock;
  o.max_leased_bytes = o.host_bytes;
  auto s = OpenOrDie(o);
  PutOptions one, two;
  one.tenant = 1;
  two.tenant = 2;
  ASSERT_TRUE(PutN(*s, 100, std::nullopt, two).ok());
  ASSERT_TRUE(PutN(*s, 101, std::nullopt, two).ok());
  // The tier has room for eight, yet tenant 1 keeps at most three: its own oldest go.
  for (uint64_t n = 0; n < 6; ++n) ASSERT_TRUE(PutN(*s, n, std::nullopt, one).ok());
  for (uint64_t n = 0; n < 3; ++n) EXPECT_FALSE(Has(*s, n)) << n;
  for (uint64_t n = 3; n < 6; ++n) ExpectBlock(*s, n);
  ExpectBlock(*s, 100);
  ExpectBlock(*s, 101);
  EXPECT_EQ(s->Stats().quota_evictions, 3u);
  EXPECT_EQ(s->Stats().tiers[1].blocks, 5u);

  // All of tenant 1's blocks leased: its put is refused, naming the quota; tenant 2 still puts.
  const BlockKey mine[] = {TestKey(3), TestKey(4), TestKey(5)};
  auto lease = s->Lease(mine);
  ASSERT_TRUE(lease.ok()) << lease.status();
  absl::Status refused = PutN(*s, 6, std::nullopt, one);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("quota of the host tier"), std::string::npos) << refused;
  ASSERT_TRUE(PutN(*s, 102, std::nullopt, two).ok());
  ASSERT_TRUE(s->Release(lease->id).ok());
  ASSERT_TRUE(PutN(*s, 6, std::nullopt, one).ok());
  EXPECT_FALSE(Has(*s, 3));

  // Deletes and aborted puts give the tenant's share back: three fresh blocks need no eviction.
  for (uint64_t n = 4; n < 7; ++n) ASSERT_TRUE(s->Delete(TestKey(n)).ok());
  {
    auto h = s->BeginPut(TestKey(7), kNoParent, kBlock, one);
    ASSERT_TRUE(h.ok());
  }
  const uint64_t before = s->Stats().quota_evictions;
  for (uint64_t n = 10; n < 13; ++n) ASSERT_TRUE(PutN(*s, n, std::nullopt, one).ok());
  EXPECT_EQ(s->Stats().quota_evictions, before);
  for (uint64_t n = 10; n < 13; ++n) ExpectBlock(*s, n);
  EXPECT_TRUE(s->CheckConsistency().ok());
}

TEST(BlockStoreLeases, ReleaseAndCap) {
  StoreOptions o = SmallOptions(8);
  o.max_leased_bytes = 3 * kBlock;
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 4; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  const BlockKey two[] = {TestKey(0), TestKey(1)};
  const BlockKey other_two[] = {TestKey(2), TestKey(3)};
  auto a = s->Lease(two);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(s->Lease(other_two).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(s->Release(a->id).ok());
  EXPECT_TRUE(s->Lease(other_two).ok());
  EXPECT_EQ(s->Stats().leased_bytes, 2 * kBlock);
}

TEST(BlockStoreLeases, ABlockUnderManyLeasesCountsOnceAgainstTheCap) {
  StoreOptions o = SmallOptions(8);
  o.max_leased_bytes = kBlock;  // room for one block
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 2; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  const BlockKey one[] = {TestKey(0)};
  std::vector<uint64_t> ids;
  for (int i = 0; i < 5; ++i) {
    auto lease = s->Lease(one);
    ASSERT_TRUE(lease.ok()) << "lease " << i << ": " << lease.status();
    ids.push_back(lease->id);
  }
  EXPECT_EQ(s->Stats().leased_bytes, kBlock);
  const BlockKey other[] = {TestKey(1)};
  EXPECT_EQ(s->Lease(other).status().code(), absl::StatusCode::kResourceExhausted);
  // The block stays counted until its last lease ends.
  for (size_t i = 0; i + 1 < ids.size(); ++i) ASSERT_TRUE(s->Release(ids[i]).ok());
  EXPECT_EQ(s->Stats().leased_bytes, kBlock);
  EXPECT_EQ(s->Lease(other).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(s->Release(ids.back()).ok());
  EXPECT_EQ(s->Stats().leased_bytes, 0u);
  EXPECT_TRUE(s->Lease(other).ok());
  EXPECT_TRUE(s->CheckConsistency().ok());
}

TEST_F(NvmeStore, LeasePromotesFlashBlocksToHost) {
  auto s = OpenOrDie(Options(4));
  for (uint64_t n = 0; n < 8; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  ASSERT_EQ(s->Stat(TestKey(0))->tier, Tier::kNvme);
  const BlockKey keys[] = {TestKey(0), TestKey(7)};
  auto lease = s->Lease(keys);
  ASSERT_TRUE(lease.ok()) << lease.status();
  for (const BlockInfo& b : lease->blocks) {
    EXPECT_EQ(b.tier, Tier::kHost);
    const uint8_t* p = s->host_arena_base() + b.location;
    EXPECT_EQ(Checksum(p, b.size), b.checksum);
  }
  EXPECT_EQ(std::vector<uint8_t>(s->host_arena_base() + lease->blocks[0].location,
                                 s->host_arena_base() + lease->blocks[0].location + kBlock),
            TestBlock(0, kBlock));
}

TEST_F(NvmeStore, LeasesPromoteInParallelWithGetsOfTheSameBlocks) {
  // Leases read their NVMe blocks outside the store's lock while Gets promote the same blocks
  // and evict others: every lease still sees its blocks' own bytes, in the host tier.
  auto s = OpenOrDie(Options(12));
  constexpr uint64_t kBlocks = 32;
  for (uint64_t n = 0; n < kBlocks; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 60; ++i) {
        const uint64_t first = rng() % (kBlocks - 3);
        const BlockKey keys[] = {TestKey(first), TestKey(first + 1), TestKey(first + 2)};
        auto lease = s->Lease(keys);
        if (!lease.ok()) {  // the host tier may be all leased by the others right now
          if (lease.status().code() != absl::StatusCode::kResourceExhausted) ++bad;
          continue;
        }
        for (size_t b = 0; b < 3; ++b) {
          const BlockInfo& info = lease->blocks[b];
          const uint8_t* p = s->host_arena_base() + info.location;
          if (info.tier != Tier::kHost ||
              std::vector<uint8_t>(p, p + info.size) != TestBlock(first + b, kBlock)) {
            ++bad;
          }
        }
        if (!s->Release(lease->id).ok()) ++bad;
      }
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      for (int i = 0; i < 200; ++i) {
        const uint64_t n = rng() % kBlocks;
        auto got = s->Get(TestKey(n));
        if (!got.ok() || *got != TestBlock(n, kBlock)) ++bad;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(s->Stats().promotions, 0u);
  EXPECT_EQ(s->Stats().leases_active, 0u);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST(BlockStorePins, PinnedHostBlocksStayPutUntilUnpinned) {
  auto s = OpenOrDie(SmallOptions(2));
  ASSERT_TRUE(PutN(*s, 1).ok());
  ASSERT_TRUE(PutN(*s, 2).ok());
  auto a = s->PinHostBlock(TestKey(1));
  auto b = s->PinHostBlock(TestKey(2));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(std::vector<uint8_t>(a->data, a->data + a->size), TestBlock(1, kBlock));
  EXPECT_EQ(a->checksum, Checksum(a->data, a->size));
  EXPECT_EQ(PutN(*s, 3).code(), absl::StatusCode::kResourceExhausted)
      << "both blocks are pinned: nothing can be evicted";
  s->UnpinHostBlock(*a);
  ASSERT_TRUE(PutN(*s, 3).ok());
  EXPECT_FALSE(Has(*s, 1)) << "unpinned, it could go";
  EXPECT_TRUE(Has(*s, 2));
  s->UnpinHostBlock(*b);
  EXPECT_EQ(s->PinHostBlock(TestKey(9)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

// Served reads pin the placement their lease found, so a block cannot leave while its bytes are
// being sent, even once the lease is over; a placement that changed is not pinned.
TEST(BlockStorePins, APlacementPinnedOutlivesItsLeaseAndAMovedOneIsRefused) {
  auto s = OpenOrDie(SmallOptions(2));
  ASSERT_TRUE(PutN(*s, 1).ok());
  ASSERT_TRUE(PutN(*s, 2).ok());
  const BlockKey keys[] = {TestKey(1)};
  auto lease = s->Lease(keys);
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto two = s->Stat(TestKey(2));
  ASSERT_TRUE(two.ok());
  const uint64_t gets = s->Stats().gets;
  auto a = s->PinHostPlacement(lease->blocks[0]);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(std::vector<uint8_t>(a->data, a->data + a->size), TestBlock(1, kBlock));
  EXPECT_EQ(s->Stats().gets, gets) << "not a read of the block";
  ASSERT_TRUE(s->Release(lease->id).ok());
  ASSERT_TRUE(PutN(*s, 3).ok());
  EXPECT_TRUE(Has(*s, 1)) << "pinned: block 2 went instead";
  EXPECT_FALSE(Has(*s, 2));
  EXPECT_EQ(s->PinHostPlacement(*two).status().code(), absl::StatusCode::kNotFound);
  s->UnpinHostBlock(*a);
  ASSERT_TRUE(s->Delete(TestKey(1)).ok());
  ASSERT_TRUE(PutN(*s, 1).ok());  // a new placement, wherever it lands
  EXPECT_EQ(s->PinHostPlacement(lease->blocks[0]).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(NvmeStore, PinningAFlashBlockAsksForAGet) {
  StoreOptions o = Options(3);
  o.host_reserve_bytes = kBlock;
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 4; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  s->WaitForMover();
  ASSERT_EQ(s->Stat(TestKey(0))->tier, Tier::kNvme);
  EXPECT_EQ(s->PinHostBlock(TestKey(0)).status().code(), absl::StatusCode::kFailedPrecondition);
  ExpectBlock(*s, 0);  // promotes it
  auto p = s->PinHostBlock(TestKey(0));
  ASSERT_TRUE(p.ok()) << p.status();
  s->UnpinHostBlock(*p);
}

TEST(BlockStoreCorruption, CorruptHostBlockIsDroppedAndCounted) {
  auto s = OpenOrDie(SmallOptions(8));
  ASSERT_TRUE(PutN(*s, 1).ok());
  ASSERT_TRUE(PutN(*s, 2, 1).ok());
  const BlockKey key[] = {TestKey(1)};
  auto lease = s->Lease(key);
  ASSERT_TRUE(lease.ok());
  s->host_arena_base()[lease->blocks[0].location + 17] ^= 0x40;  // a bit flips in RAM
  ASSERT_TRUE(s->Release(lease->id).ok());
  auto got = s->Get(TestKey(1));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_FALSE(Has(*s, 1));
  EXPECT_EQ(s->Stats().checksum_failures, 1u);
  EXPECT_EQ(s->Stats().orphan_blocks, 1u);
  ExpectBlock(*s, 2);
}

TEST(BlockStoreHbm, AbsentWithoutAGpuElseUsed) {
  StoreOptions o = SmallOptions(8);
  o.hbm_bytes = 1 << 20;
  auto s = OpenOrDie(o);
  ASSERT_TRUE(PutN(*s, 1).ok());
  ExpectBlock(*s, 1);
  const TierStats hbm = s->Stats().tiers[static_cast<int>(Tier::kHbm)];
  if (hbm.present) {
    EXPECT_EQ(hbm.capacity_bytes, 1u << 20);
    EXPECT_EQ(s->Stat(TestKey(1))->tier, Tier::kHbm);
  } else {
    EXPECT_EQ(hbm.capacity_bytes, 0u);
    EXPECT_EQ(hbm.blocks, 0u);
    EXPECT_EQ(s->Stat(TestKey(1))->tier, Tier::kHost) << "never an imitation in host memory";
  }
}

TEST(BlockStoreConcurrency, ManyThreadsPutGetEvictLeaseAtOnce) {
  TempDir dir;
  auto s = OpenOrDie(WithNvme(SmallOptions(32), dir.Sub("nvme"), 64 * kBlock));
  constexpr int kThreads = 8;
  constexpr int kOps = 3000;
  constexpr uint64_t kKeys = 200;
  std::atomic<int> wrong_bytes{0}, unexpected{0};
  Mutex mu;
  std::string first_unexpected;  // guarded by mu
  auto note = [&](const std::string& what, const absl::Status& st) {
    if (unexpected++ != 0) return;
    MutexLock l(&mu);
    first_unexpected = what + ": " + st.ToString();
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<uint8_t> buf(kBlock);
      for (int i = 0; i < kOps; ++i) {
        const uint64_t n = rng() % kKeys;
        switch (rng() % 6) {
          case 0:
          case 1: {
            absl::Status st =
                PutN(*s, n, n % 10 == 0 ? std::nullopt : std::optional<uint64_t>(n - 1));
            if (!st.ok() && st.code() != absl::StatusCode::kResourceExhausted) note("put", st);
            break;
          }
          case 2:
          case 3: {
            auto got = s->Get(TestKey(n), std::span(buf));
            if (got.ok()) {
              if (buf != TestBlock(n, kBlock)) ++wrong_bytes;
            } else if (got.status().code() != absl::StatusCode::kNotFound) {
              note("get", got.status());
            }
            break;
          }
          case 4: {
            std::vector<BlockKey> chain;
            for (uint64_t k = n - n % 10; k <= n; ++k) chain.push_back(TestKey(k));
            (void)s->Lookup(chain);
            break;
          }
          case 5: {
            const BlockKey key[] = {TestKey(n)};
            auto lease = s->Lease(key);
            if (lease.ok()) {
              const BlockInfo& b = lease->blocks[0];
              if (b.tier == Tier::kHost &&
                  Checksum(s->host_arena_base() + b.location, b.size) != b.checksum) {
                ++wrong_bytes;
              }
              if (absl::Status st = s->Release(lease->id); !st.ok()) note("release", st);
            } else if (lease.status().code() != absl::StatusCode::kNotFound &&
                       lease.status().code() != absl::StatusCode::kResourceExhausted) {
              note("lease", lease.status());
            }
            break;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong_bytes.load(), 0);
  EXPECT_EQ(unexpected.load(), 0) << "the first: " << first_unexpected;
  StoreStats st = s->Stats();
  EXPECT_EQ(st.checksum_failures, 0u);
  EXPECT_EQ(st.leases_active, 0u);
  EXPECT_EQ(st.tiers[1].used_bytes, st.tiers[1].blocks * kBlock);
  EXPECT_GT(st.demotions + st.evictions, 0u);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  for (uint64_t n = 0; n < kKeys; ++n) {
    if (Has(*s, n)) ExpectBlock(*s, n);
  }
}

// Issue cases: a put is "present" only for a committed block, and every re-put is checked.
TEST(BlockStoreRePut, APutAfterADeleteWhilePinnedStoresTheBlockAgain) {
  auto s = OpenOrDie(SmallOptions(8));
  ASSERT_TRUE(PutN(*s, 1).ok());
  auto pin = s->PinHostBlock(TestKey(1));
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_TRUE(s->Delete(TestKey(1)).ok());
  EXPECT_FALSE(Has(*s, 1));
  auto put = s->BeginPut(TestKey(1), kNoParent, kBlock, {});
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_TRUE(put->Write(0, TestBlock(1, kBlock)).ok());
  auto result = put->Commit();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, PutResult::kStored) << "the pinned block was deleted: nothing is present";
  EXPECT_TRUE(Has(*s, 1));
  s->UnpinHostBlock(*pin);
  ExpectBlock(*s, 1);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST(BlockStoreRePut, AWrongChecksumIsRefusedEvenWhenTheBlockIsPresent) {
  auto s = OpenOrDie(SmallOptions(8));
  ASSERT_TRUE(PutN(*s, 1).ok());
  const auto bytes = TestBlock(1, kBlock);
  absl::Status st = s->Put(TestKey(1), kNoParent, bytes,
                           {.expected_checksum = Checksum(bytes.data(), kBlock) ^ 1});
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  ExpectBlock(*s, 1);
}

TEST_F(NvmeStore, ADurableRePutOfANonDurableBlockMakesItDurable) {
  {
    auto s = OpenOrDie(Options(8));
    ASSERT_TRUE(PutN(*s, 1).ok());  // in host memory only
    ASSERT_TRUE(PutN(*s, 1, std::nullopt, {.durable = true}).ok());
    EXPECT_GT(s->Stats().nvme_bytes_written, 0u) << "the durable record was written";
  }
  auto s = OpenOrDie(Options(8));
  ExpectBlock(*s, 1);
}

TEST_F(NvmeStore, ARePutOverACorruptFlashCopyReplacesIt) {
  {
    auto tier = NvmeTier::Open({.path = dir_.Sub("nvme")});
    ASSERT_TRUE(tier.ok()) << tier.status();
    const auto good = TestBlock(1, kBlock);
    auto bad = good;
    bad[7] ^= 1;
    ASSERT_TRUE(
        (*tier)
            ->Write(TestKey(1), {kNoParent, Checksum(good.data(), kBlock), kBlock}, bad, true)
            .ok());
  }
  auto s = OpenOrDie(Options(4));
  ASSERT_EQ(s->Stat(TestKey(1))->tier, Tier::kNvme);
  ASSERT_TRUE(PutN(*s, 1, std::nullopt, {.durable = true}).ok());
  ExpectBlock(*s, 1);
  EXPECT_EQ(s->Stats().checksum_failures, 0u) << "the corrupt copy was replaced, never read";
  s.reset();
  s = OpenOrDie(Options(4));
  ExpectBlock(*s, 1);
}

}  // namespace
}  // namespace kvtier
