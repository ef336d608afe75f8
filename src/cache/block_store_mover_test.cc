// Tests of the HBM tier's paths over the host-memory stand-in for a GPU's arena, and of the
// background mover while other threads read, lease, delete and put again the blocks it moves.
// The concurrency tests carry "Mover" in their names, for a ThreadSanitizer run:
// --gtest_filter='*Concurren*:*Mover*'.
#include <gtest/gtest.h>
#include <rocksdb/env.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/block_store.h"
#include "cache/block_store_test_util.h"
#include "cache/device_arena.h"
#include "common/checksum.h"
#include "testing/slow_fs.h"
#include "testing/test_util.h"

// In the namespace of the store tests' helpers (block_store_test_util.h, testing/test_util.h).
namespace kvtier::testing {
namespace {

using Code = absl::StatusCode;

TierStats Of(const StoreStats& st, Tier t) { return st.tiers[static_cast<int>(t)]; }

// ---- the HBM tier without a GPU ----------------------------------------------------------------

// Stores whose HBM tier is the host-memory stand-in (NewHostMemoryDeviceArena). No reserves: each
// put moves what it needs itself, so what each tier holds is exact.
class HbmStore : public ::testing::Test {
 protected:
  StoreOptions Options(size_t hbm_blocks, size_t host_blocks, bool nvme = false) {
    StoreOptions o = SmallOptions(host_blocks);
    o.hbm_bytes = hbm_blocks * kBlock;
    o.hbm_reserve_bytes = 0;
    o.max_leased_bytes = o.host_bytes;
    o.device_arena = [this](size_t bytes, int) -> absl::StatusOr<std::unique_ptr<DeviceArena>> {
      std::unique_ptr<DeviceArena> arena = NewHostMemoryDeviceArena(bytes);
      arena_ = arena.get();
      return arena;
    };
    return nvme ? WithNvme(o, dir_.Sub("nvme")) : o;
  }
  // The block's bytes where the device arena holds them.
  std::vector<uint8_t> HbmBytes(const BlockInfo& b) {
    std::vector<uint8_t> out(b.size);
    EXPECT_TRUE(arena_->CopyToHost(out.data(), b.location, b.size).ok());
    return out;
  }
  std::vector<uint8_t> HostBytes(const BlockStore& s, const BlockInfo& b) {
    const uint8_t* p = s.host_arena_base() + b.location;
    return std::vector<uint8_t>(p, p + b.size);
  }
  // Flips a bit of the block's copy in the device arena, as a bad memory cell would.
  void FlipHbmBit(const BlockInfo& b, size_t offset) {
    uint8_t byte = 0;
    ASSERT_TRUE(arena_->CopyToHost(&byte, b.location + offset, 1).ok());
    byte ^= 0x10;
    ASSERT_TRUE(arena_->CopyToDevice(b.location + offset, &byte, 1).ok());
  }
  Tier TierOf(const BlockStore& s, uint64_t n) {
    auto info = s.Stat(TestKey(n));
    EXPECT_TRUE(info.ok()) << "block " << n << ": " << info.status();
    return info.ok() ? info->tier : Tier::kHost;
  }

  TempDir dir_;
  DeviceArena* arena_ = nullptr;  // the open store's, owned by it
};

TEST_F(HbmStore, PutsLandInHbmFirstAndReadBackVerified) {
  auto s = OpenOrDie(Options(4, 4));
  ASSERT_NE(arena_, nullptr);
  std::vector<BlockKey> chain;
  for (uint64_t n = 0; n < 3; ++n) {
    ASSERT_TRUE(PutN(*s, n, n == 0 ? std::nullopt : std::optional<uint64_t>(n - 1)).ok());
    chain.push_back(TestKey(n));
  }
  for (uint64_t n = 0; n < 3; ++n) {
    auto info = s->Stat(TestKey(n));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->tier, Tier::kHbm);
    EXPECT_EQ(info->checksum, Checksum(TestBlock(n, kBlock).data(), kBlock));
    EXPECT_EQ(HbmBytes(*info), TestBlock(n, kBlock)) << "the bytes are in the device arena";
    ExpectBlock(*s, n);
  }
  const LookupResult r = s->Lookup(chain);
  EXPECT_EQ(r.matched, 3u);
  EXPECT_EQ(r.tiers, std::vector<Tier>(3, Tier::kHbm));
  EXPECT_EQ(s->PinHostBlock(TestKey(0)).status().code(), Code::kFailedPrecondition)
      << "the CPU cannot address an HBM block";

  const StoreStats st = s->Stats();
  const TierStats hbm = Of(st, Tier::kHbm);
  EXPECT_TRUE(hbm.present);
  EXPECT_EQ(hbm.capacity_bytes, 4 * kBlock);
  EXPECT_EQ(hbm.used_bytes, 3 * kBlock);
  EXPECT_EQ(hbm.blocks, 3u);
  EXPECT_EQ(hbm.hits, 3u);
  EXPECT_EQ(Of(st, Tier::kHost).blocks, 0u);
  EXPECT_EQ(Of(st, Tier::kHost).used_bytes, 0u);
  EXPECT_EQ(Of(st, Tier::kHost).hits, 0u);
  EXPECT_FALSE(Of(st, Tier::kNvme).present);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(HbmStore, AnHbmReservationIsWrittenWithCopiesInAnyOrder) {
  auto s = OpenOrDie(Options(4, 4));
  const auto one = TestBlock(1, kBlock);
  {
    auto h = s->BeginPut(TestKey(1), kNoParent, kBlock);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->host_data(), nullptr) << "the reservation is in HBM";
    ASSERT_TRUE(h->Write(0, std::span(one).first(1000)).ok());
    ASSERT_TRUE(h->Write(1000, std::span(one).subspan(1000)).ok());
    EXPECT_EQ(h->Write(kBlock - 1, std::span(one).first(2)).code(), Code::kInvalidArgument);
    auto r = h->Commit();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, PutResult::kStored);
  }
  // Out of order, Commit checksums the bytes it copies back out of HBM.
  const auto two = TestBlock(2, kBlock);
  {
    auto h = s->BeginPut(TestKey(2), kNoParent, kBlock,
                         {.expected_checksum = Checksum(two.data(), kBlock)});
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->host_data(), nullptr);
    ASSERT_TRUE(h->Write(kBlock / 2, std::span(two).subspan(kBlock / 2)).ok());
    ASSERT_TRUE(h->Write(0, std::span(two).first(kBlock / 2)).ok());
    auto r = h->Commit();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, PutResult::kStored);
  }
  // ... and refuses them when they are not what the put declared.
  const auto three = TestBlock(3, kBlock);
  {
    auto h = s->BeginPut(TestKey(3), kNoParent, kBlock,
                         {.expected_checksum = Checksum(three.data(), kBlock) ^ 1});
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_TRUE(h->Write(kBlock / 2, std::span(three).subspan(kBlock / 2)).ok());
    ASSERT_TRUE(h->Write(0, std::span(three).first(kBlock / 2)).ok());
    EXPECT_EQ(h->Commit().status().code(), Code::kDataLoss);
  }
  EXPECT_FALSE(Has(*s, 3));
  {
    auto h = s->BeginPut(TestKey(4), kNoParent, kBlock);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(Of(s->Stats(), Tier::kHbm).used_bytes, 3 * kBlock);
  }  // dropped without Commit
  EXPECT_EQ(Of(s->Stats(), Tier::kHbm).used_bytes, 2 * kBlock) << "both HBM chunks came back";
  EXPECT_EQ(s->Stats().puts_aborted, 2u);
  for (uint64_t n : {1u, 2u}) {
    EXPECT_EQ(TierOf(*s, n), Tier::kHbm);
    EXPECT_EQ(s->Stat(TestKey(n))->checksum, Checksum(TestBlock(n, kBlock).data(), kBlock));
    ExpectBlock(*s, n);
  }
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(HbmStore, ADurablePutOfAnHbmBlockIsOnFlashBeforeItReturns) {
  {
    auto s = OpenOrDie(Options(4, 4, /*nvme=*/true));
    ASSERT_TRUE(PutN(*s, 1, std::nullopt, {.durable = true}).ok());
    EXPECT_EQ(TierOf(*s, 1), Tier::kHbm) << "a durable block is still served from HBM";
    StoreStats st = s->Stats();
    EXPECT_EQ(st.nvme_bytes_written, kBlock);
    EXPECT_EQ(Of(st, Tier::kNvme).used_bytes, kBlock) << "its flash record";
    EXPECT_EQ(Of(st, Tier::kNvme).blocks, 0u);
    // A plain block in HBM made durable by a durable put of its key: the record gets the bytes
    // copied out of HBM, and the block stays where it is.
    ASSERT_TRUE(PutN(*s, 2).ok());
    auto before = s->Stat(TestKey(2));
    ASSERT_TRUE(before.ok());
    auto h = s->BeginPut(TestKey(2), kNoParent, kBlock, {.durable = true});
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_TRUE(h->Write(0, TestBlock(2, kBlock)).ok());
    auto r = h->Commit();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, PutResult::kPresent);
    EXPECT_EQ(s->FirstChanged(std::span(&*before, 1)), 1u);
    EXPECT_EQ(s->Stats().nvme_bytes_written, 2 * kBlock);
    ASSERT_TRUE(PutN(*s, 3).ok());  // HBM only
    EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  }
  auto s = OpenOrDie(Options(4, 4, /*nvme=*/true));
  for (uint64_t n : {1u, 2u}) {
    EXPECT_EQ(TierOf(*s, n), Tier::kNvme);
    ExpectBlock(*s, n);
    EXPECT_EQ(TierOf(*s, n), Tier::kHost) << "a flash hit is promoted to host, not to HBM";
  }
  EXPECT_FALSE(Has(*s, 3)) << "a plain block never demoted is cache, gone with the process";
  EXPECT_EQ(s->Stats().checksum_failures, 0u);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(HbmStore, AFullHbmDemotesToHostAndHostToNvme) {
  auto s = OpenOrDie(Options(2, 2, /*nvme=*/true));
  ASSERT_TRUE(PutN(*s, 0).ok());
  ASSERT_TRUE(PutN(*s, 1).ok());
  std::vector<BlockInfo> seen;
  for (uint64_t n : {0u, 1u}) seen.push_back(*s->Stat(TestKey(n)));
  ASSERT_EQ(seen[0].tier, Tier::kHbm);
  ASSERT_EQ(seen[1].tier, Tier::kHbm);

  ASSERT_TRUE(PutN(*s, 2).ok());  // HBM is full: its least recently used block goes to host
  auto moved = s->Stat(TestKey(0));
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(moved->tier, Tier::kHost);
  EXPECT_NE(moved->generation, seen[0].generation);
  EXPECT_EQ(s->FirstChanged(seen), 0u) << "block 0 left its place";
  EXPECT_EQ(s->FirstChanged(std::span(seen).subspan(1)), 1u) << "block 1 did not";
  EXPECT_EQ(HostBytes(*s, *moved), TestBlock(0, kBlock));
  ExpectBlock(*s, 0);
  StoreStats st = s->Stats();
  EXPECT_EQ(st.demotions, 1u);
  EXPECT_EQ(Of(st, Tier::kHbm).blocks, 2u);
  EXPECT_EQ(Of(st, Tier::kHbm).used_bytes, 2 * kBlock);
  EXPECT_EQ(Of(st, Tier::kHost).blocks, 1u);
  EXPECT_EQ(Of(st, Tier::kHost).used_bytes, kBlock);

  ASSERT_TRUE(PutN(*s, 3).ok());  // block 1 to host: host is full now
  EXPECT_EQ(TierOf(*s, 1), Tier::kHost);
  std::vector<BlockInfo> host;
  for (uint64_t n : {0u, 1u}) host.push_back(*s->Stat(TestKey(n)));
  ASSERT_TRUE(PutN(*s, 4).ok());  // block 2 to host, which first sends one of its own to NVMe
  EXPECT_EQ(TierOf(*s, 2), Tier::kHost);
  const size_t on_flash = s->FirstChanged(host);
  ASSERT_LT(on_flash, 2u) << "a host block was demoted";
  EXPECT_EQ(TierOf(*s, on_flash), Tier::kNvme);
  EXPECT_EQ(TierOf(*s, 1 - on_flash), Tier::kHost);
  st = s->Stats();
  EXPECT_EQ(st.demotions, 4u);
  EXPECT_EQ(st.evictions, 0u);
  EXPECT_EQ(st.nvme_bytes_written, kBlock);
  EXPECT_EQ(Of(st, Tier::kHbm).blocks, 2u);
  EXPECT_EQ(Of(st, Tier::kHost).blocks, 2u);
  EXPECT_EQ(Of(st, Tier::kNvme).blocks, 1u);
  for (uint64_t n = 0; n < 5; ++n) ExpectBlock(*s, n);
  EXPECT_EQ(s->Stats().checksum_failures, 0u);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(HbmStore, LeasesHoldBlocksInEveryTier) {
  auto s = OpenOrDie(Options(2, 4, /*nvme=*/true));
  for (uint64_t n = 0; n < 7; ++n) ASSERT_TRUE(PutN(*s, n).ok());  // HBM 5, 6; host 4; NVMe 1
  uint64_t in_host = 0, on_flash = 0;
  for (uint64_t n = 0; n < 5; ++n) {
    if (TierOf(*s, n) == Tier::kNvme) {
      on_flash = n;
    } else {
      in_host = n;
    }
  }
  ASSERT_EQ(TierOf(*s, on_flash), Tier::kNvme);
  ASSERT_EQ(TierOf(*s, 6), Tier::kHbm);
  const BlockInfo hbm_before = *s->Stat(TestKey(6));

  const BlockKey keys[] = {TestKey(6), TestKey(in_host), TestKey(on_flash)};
  auto lease = s->Lease(keys);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->promoted, 1u) << "only the NVMe block is brought up";
  // An HBM block is leased where it is: its location is an offset in the device arena.
  EXPECT_EQ(lease->blocks[0].tier, Tier::kHbm);
  EXPECT_EQ(lease->blocks[0].location, hbm_before.location);
  EXPECT_EQ(lease->blocks[0].generation, hbm_before.generation);
  EXPECT_EQ(HbmBytes(lease->blocks[0]), TestBlock(6, kBlock));
  EXPECT_EQ(lease->blocks[1].tier, Tier::kHost);
  EXPECT_EQ(HostBytes(*s, lease->blocks[1]), TestBlock(in_host, kBlock));
  EXPECT_EQ(lease->blocks[2].tier, Tier::kHost);
  EXPECT_EQ(HostBytes(*s, lease->blocks[2]), TestBlock(on_flash, kBlock));
  EXPECT_EQ(s->Stats().leased_bytes, 3 * kBlock);

  // Puts push everything else down; the leased blocks stay put.
  for (uint64_t n = 10; n < 16; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  EXPECT_EQ(s->FirstChanged(lease->blocks), 3u);
  EXPECT_EQ(s->Delete(TestKey(6)).code(), Code::kFailedPrecondition);
  // With HBM all leased, a put lands in host.
  const BlockKey other[] = {TestKey(15)};
  ASSERT_EQ(TierOf(*s, 15), Tier::kHbm);
  auto second = s->Lease(other);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(PutN(*s, 20).ok());
  EXPECT_EQ(TierOf(*s, 20), Tier::kHost);
  EXPECT_EQ(s->FirstChanged(lease->blocks), 3u);
  EXPECT_EQ(HbmBytes(lease->blocks[0]), TestBlock(6, kBlock));
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();

  ASSERT_TRUE(s->Release(lease->id).ok());
  ASSERT_TRUE(s->Release(second->id).ok());
  EXPECT_EQ(s->Stats().leases_active, 0u);
  EXPECT_EQ(s->Stats().leased_bytes, 0u);
  ASSERT_TRUE(PutN(*s, 21).ok());  // block 6 is the least recently used in HBM again
  EXPECT_EQ(s->FirstChanged(lease->blocks), 0u);
  EXPECT_EQ(TierOf(*s, 6), Tier::kHost);
  for (uint64_t n : {0u, 1u, 2u, 3u, 4u, 5u, 6u, 10u, 15u, 20u, 21u}) ExpectBlock(*s, n);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(HbmStore, DeleteFreesTheHbmChunkAndTheFlashRecord) {
  {
    auto s = OpenOrDie(Options(2, 2, /*nvme=*/true));
    ASSERT_TRUE(PutN(*s, 1).ok());
    ASSERT_TRUE(PutN(*s, 2, std::nullopt, {.durable = true}).ok());
    ASSERT_TRUE(s->Delete(TestKey(1)).ok());
    EXPECT_FALSE(Has(*s, 1));
    EXPECT_EQ(s->Get(TestKey(1)).status().code(), Code::kNotFound);
    StoreStats st = s->Stats();
    EXPECT_EQ(Of(st, Tier::kHbm).blocks, 1u);
    EXPECT_EQ(Of(st, Tier::kHbm).used_bytes, kBlock);
    ASSERT_TRUE(s->Delete(TestKey(2)).ok());
    st = s->Stats();
    EXPECT_EQ(Of(st, Tier::kHbm).used_bytes, 0u);
    EXPECT_EQ(Of(st, Tier::kNvme).used_bytes, 0u);
    ASSERT_TRUE(PutN(*s, 3).ok());
    ASSERT_TRUE(PutN(*s, 4).ok());
    EXPECT_EQ(TierOf(*s, 3), Tier::kHbm);
    EXPECT_EQ(TierOf(*s, 4), Tier::kHbm);
    EXPECT_EQ(s->Stats().demotions, 0u) << "the freed chunks took them";
    EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  }
  auto s = OpenOrDie(Options(2, 2, /*nvme=*/true));
  EXPECT_FALSE(Has(*s, 2)) << "the durable block's record was deleted";
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

// The stand-in's memory is reachable through the arena, so a test can damage a block there.
TEST_F(HbmStore, ACorruptHbmBlockIsDroppedAndCounted) {
  {
    auto s = OpenOrDie(Options(4, 2, /*nvme=*/true));
    ASSERT_TRUE(PutN(*s, 1).ok());
    ASSERT_TRUE(PutN(*s, 2, 1).ok());
    ASSERT_TRUE(PutN(*s, 3, std::nullopt, {.durable = true}).ok());
    FlipHbmBit(*s->Stat(TestKey(1)), 100);
    auto got = s->Get(TestKey(1));
    EXPECT_EQ(got.status().code(), Code::kDataLoss) << got.status();
    EXPECT_FALSE(Has(*s, 1));
    StoreStats st = s->Stats();
    EXPECT_EQ(st.checksum_failures, 1u);
    EXPECT_EQ(st.orphan_blocks, 1u) << "block 2 lost its parent";
    EXPECT_EQ(Of(st, Tier::kHbm).blocks, 2u);
    EXPECT_EQ(Of(st, Tier::kHbm).used_bytes, 2 * kBlock);
    ExpectBlock(*s, 2);
    // A durable block corrupt in HBM goes from every tier, its flash record included.
    FlipHbmBit(*s->Stat(TestKey(3)), kBlock - 1);
    EXPECT_EQ(s->Get(TestKey(3)).status().code(), Code::kDataLoss);
    EXPECT_FALSE(Has(*s, 3));
    EXPECT_EQ(s->Stats().checksum_failures, 2u);
    EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  }
  auto s = OpenOrDie(Options(4, 2, /*nvme=*/true));
  EXPECT_FALSE(Has(*s, 3)) << "its flash record was deleted";
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

TEST_F(HbmStore, TheMoverKeepsAnHbmReserve) {
  StoreOptions o = Options(4, 4);
  o.hbm_reserve_bytes = kBlock;
  auto s = OpenOrDie(o);
  for (uint64_t n = 0; n < 4; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  s->WaitForMover();
  StoreStats st = s->Stats();
  EXPECT_EQ(Of(st, Tier::kHbm).blocks, 3u);
  EXPECT_EQ(Of(st, Tier::kHost).blocks, 1u);
  EXPECT_EQ(TierOf(*s, 0), Tier::kHost);
  ASSERT_TRUE(PutN(*s, 4).ok());
  s->WaitForMover();
  st = s->Stats();
  EXPECT_EQ(Of(st, Tier::kHbm).blocks, 3u);
  EXPECT_EQ(Of(st, Tier::kHost).blocks, 2u);
  EXPECT_EQ(st.demotions, 2u);
  EXPECT_EQ(st.sync_evictions, 0u) << "every put found the room the mover kept";
  for (uint64_t n = 0; n < 5; ++n) ExpectBlock(*s, n);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

// ---- the mover under concurrency ---------------------------------------------------------------

constexpr size_t kMoverBlock = 64 << 10;
using SteadyClock = std::chrono::steady_clock;

// What a test's threads found wrong: counted, the first few kept for the failure message.
class Problems {
 public:
  void Add(const std::string& what) {
    std::lock_guard<std::mutex> l(mu_);
    if (++count_ <= 8) first_ += what + "\n";
  }
  int count() const {
    std::lock_guard<std::mutex> l(mu_);
    return count_;
  }
  std::string first() const {
    std::lock_guard<std::mutex> l(mu_);
    return first_;
  }

 private:
  mutable std::mutex mu_;
  int count_ = 0;
  std::string first_;
};

// What a key holds as far as the thread that puts it knows.
enum class Held : uint8_t { kAbsent, kPlain, kDurable };

// 24 host blocks of 64 KiB for 128 keys, with the mover's automatic reserve and every demoted
// block admitted to flash: blocks move down and back up all the time. Flash holds every key, so
// none is evicted. The parameter is mover_threads.
class BlockStoreMover : public ::testing::TestWithParam<int> {
 protected:
  static constexpr uint64_t kOwned = 64;  // deleted and put again, each by one owner thread
  static constexpr uint64_t kChurn = 64;  // put over and over by one thread, never deleted
  static constexpr uint64_t kKeys = kOwned + kChurn;

  BlockStoreMover() : held_(kKeys, Held::kAbsent), stored_(kChurn) {
    for (uint64_t n = 0; n < kKeys; ++n) blocks_.push_back(TestBlock(n, kMoverBlock));
  }
  StoreOptions Options() const {
    StoreOptions o =
        WithNvme(SmallOptions(24, kMoverBlock), dir_.Sub("nvme"), 4 * kKeys * kMoverBlock);
    o.host_reserve_bytes = -1;
    o.mover_threads = GetParam();
    return o;
  }
  bool Same(std::span<const uint8_t> got, uint64_t n) const {
    return got.size() == kMoverBlock &&
           std::memcmp(got.data(), blocks_[n].data(), kMoverBlock) == 0;
  }

  // For at most 3 seconds: two owners delete their keys and put them again, a churn thread puts
  // keys that are never deleted, two readers and a leaser check what they get. Puts are plain
  // or durable; with `durable_reputs`, durable puts of present blocks too.
  void RunWorkload(bool durable_reputs);

  // Every key is where the threads left it: present and identical, or absent after its delete.
  void ExpectKeysAsHeld(BlockStore& s, bool reopened) {
    std::vector<uint8_t> buf(kMoverBlock);
    for (uint64_t n = 0; n < kKeys; ++n) {
      auto got = s.Get(TestKey(n), std::span(buf));
      if (held_[n] == Held::kAbsent) {
        EXPECT_EQ(got.status().code(), Code::kNotFound) << "block " << n << " was deleted";
      } else if (held_[n] == Held::kDurable || !reopened || got.ok()) {
        ASSERT_TRUE(got.ok()) << "block " << n << ": " << got.status();
        EXPECT_TRUE(Same(std::span(buf), n)) << "block " << n;
      }
    }
  }

  TempDir dir_;
  std::vector<std::vector<uint8_t>> blocks_;
  std::vector<Held> held_;  // each key's by its one writer; read once they are joined
  std::vector<std::atomic<bool>> stored_;  // a churn key's first put returned OK
};

void BlockStoreMover::RunWorkload(bool durable_reputs) {
  auto s = OpenOrDie(Options());
  ASSERT_NE(s, nullptr);
  const auto deadline = SteadyClock::now() + std::chrono::seconds(3);
  auto running = [&] { return SteadyClock::now() < deadline; };
  // Readers and the leaser go on while any writer does.
  std::atomic<int> writers{3};
  auto writing = [&] { return writers.load() > 0 && running(); };
  // A put's durability: one in `in` at random, where the workload allows it for the key.
  auto durable = [&](std::mt19937_64& rng, uint64_t in, uint64_t n) {
    return rng() % in == 0 && (durable_reputs || held_[n] == Held::kAbsent);
  };
  Problems problems;
  std::atomic<uint64_t> deletes{0}, reputs{0}, leases{0};
  std::vector<std::thread> threads;

  // Owners: key n belongs to thread n % 2. After a Delete returns OK the key is gone; after a
  // later Put returns OK it is present again.
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      std::vector<uint8_t> buf(kMoverBlock);
      for (int i = 0; i < 1500 && running(); ++i) {
        const uint64_t n = 2 * (rng() % (kOwned / 2)) + t;
        const BlockKey key = TestKey(n);
        const uint64_t op = rng() % 4;
        if (held_[n] == Held::kAbsent || op == 0) {
          const bool d = durable(rng, 3, n);
          absl::Status st = s->Put(key, kNoParent, blocks_[n], {.durable = d});
          if (st.code() == Code::kResourceExhausted) continue;  // host all leased or moving
          if (!st.ok()) {
            problems.Add(absl::StrCat("put of ", n, ": ", st.ToString()));
            continue;
          }
          if (held_[n] != Held::kAbsent) ++reputs;
          if (held_[n] == Held::kAbsent || d) held_[n] = d ? Held::kDurable : Held::kPlain;
          if (!s->Stat(key).ok()) problems.Add(absl::StrCat("put of ", n, " OK, block absent"));
        } else if (op == 1 || op == 2) {
          absl::Status st = s->Delete(key);
          if (st.code() == Code::kFailedPrecondition) continue;  // leased
          if (!st.ok()) {
            problems.Add(absl::StrCat("delete of ", n, ": ", st.ToString()));
            continue;
          }
          held_[n] = Held::kAbsent;
          ++deletes;
          if (s->Stat(key).ok()) problems.Add(absl::StrCat("delete of ", n, " OK, block present"));
        } else {
          auto got = s->Get(key, std::span(buf));
          if (!got.ok() || !Same(std::span(buf).first(*got), n)) {
            problems.Add(absl::StrCat("owner's get of present ", n, ": ", got.status().ToString()));
          }
        }
      }
      --writers;
    });
  }
  // Churn: puts of keys never deleted, new to the store at first, then again and again (over
  // copies in host or only on flash), so the mover demotes all the time.
  threads.emplace_back([&] {
    std::mt19937_64 rng(100);
    for (int i = 0; i < 1500 && running(); ++i) {
      const uint64_t n = kOwned + i % kChurn;
      const bool d = durable(rng, 4, n);
      absl::Status st = s->Put(TestKey(n), kNoParent, blocks_[n], {.durable = d});
      if (st.code() == Code::kResourceExhausted) continue;
      if (!st.ok()) {
        problems.Add(absl::StrCat("put of ", n, ": ", st.ToString()));
        continue;
      }
      if (held_[n] == Held::kAbsent || d) held_[n] = d ? Held::kDurable : Held::kPlain;
      stored_[n - kOwned].store(true, std::memory_order_release);
    }
    --writers;
  });
  // Readers: every read is the block's own bytes; a stored key never deleted never misses.
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(200 + t);
      std::vector<uint8_t> buf(kMoverBlock);
      for (int i = 0; i < 20000 && writing(); ++i) {
        const uint64_t n = rng() % kKeys;
        const bool must_hit = n >= kOwned && stored_[n - kOwned].load(std::memory_order_acquire);
        auto got = s->Get(TestKey(n), std::span(buf));
        if (got.ok()) {
          if (!Same(std::span(buf).first(*got), n)) problems.Add(absl::StrCat("bytes of ", n));
        } else if (got.status().code() != Code::kNotFound) {
          problems.Add(absl::StrCat("get of ", n, ": ", got.status().ToString()));
        } else if (must_hit) {
          problems.Add(absl::StrCat("get of ", n, ", stored and never deleted: not found"));
        }
      }
    });
  }
  // Leaser: a leased block keeps its place and bytes until its release.
  threads.emplace_back([&] {
    std::mt19937_64 rng(300);
    for (int i = 0; i < 5000 && writing(); ++i) {
      const uint64_t first = rng() % (kKeys - 2);
      const size_t count = 1 + rng() % 3;
      std::vector<BlockKey> keys;
      for (uint64_t n = first; n < first + count; ++n) keys.push_back(TestKey(n));
      auto lease = s->Lease(keys);
      if (!lease.ok()) {
        const Code c = lease.status().code();
        if (c != Code::kNotFound && c != Code::kResourceExhausted && c != Code::kAborted) {
          problems.Add(absl::StrCat("lease at ", first, ": ", lease.status().ToString()));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      ++leases;
      for (int round = 0; round < 4; ++round) {
        if (s->FirstChanged(lease->blocks) != count) {
          problems.Add(absl::StrCat("a leased block of ", first, "..", first + count - 1,
                                    " left its place"));
        }
        for (size_t b = 0; b < count; ++b) {
          const BlockInfo& info = lease->blocks[b];
          if (info.tier != Tier::kHost ||
              !Same(std::span(s->host_arena_base() + info.location, info.size), first + b)) {
            problems.Add(absl::StrCat("leased block ", first + b, " not its bytes in host"));
          }
        }
        std::this_thread::yield();
      }
      absl::Status st = s->Release(lease->id);
      if (!st.ok()) problems.Add(absl::StrCat("release: ", st.ToString()));
    }
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(problems.count(), 0) << problems.first();

  s->WaitForMover();
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.checksum_failures, 0u);
  EXPECT_EQ(st.nvme_write_errors, 0u);
  EXPECT_EQ(st.evictions, 0u) << "flash holds every key: nothing may leave the store";
  EXPECT_EQ(st.leases_active, 0u);
  EXPECT_GT(st.demotions, 0u);
  EXPECT_GT(st.promotions, 0u);
  EXPECT_GT(deletes.load(), 0u);
  EXPECT_GT(reputs.load(), 0u);
  EXPECT_GT(leases.load(), 0u);
  ExpectKeysAsHeld(*s, /*reopened=*/false);
  EXPECT_EQ(s->Stats().checksum_failures, 0u);

  // Deletes were durable and durable puts are on flash: a reopened store agrees.
  s.reset();
  s = OpenOrDie(Options());
  ASSERT_NE(s, nullptr);
  ExpectKeysAsHeld(*s, /*reopened=*/true);
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  EXPECT_EQ(s->Stats().checksum_failures, 0u);
}

TEST_P(BlockStoreMover, BlocksMoveWhileThreadsReadLeaseDeleteAndPutThem) {
  RunWorkload(/*durable_reputs=*/false);
}

// Disabled until the two races of BlockStoreMoverRace below are fixed: CheckConsistency finds
// the flash bytes counted too high, and now and then a leased block "left its place".
TEST_P(BlockStoreMover, DurablePutsOfPresentBlocksWhileTheyMove) {
  RunWorkload(/*durable_reputs=*/true);
}

INSTANTIATE_TEST_SUITE_P(MoverThreads, BlockStoreMover, ::testing::Values(1, 4),
                         [](const auto& info) { return absl::StrCat(info.param, "Movers"); });

// A flash tier whose next blob append, once armed, stalls 300 ms: a write held in progress
// while the test makes the store do something else.
class StalledFlash {
 public:
  StalledFlash()
      : fs_(std::make_shared<SlowFlashFs>(std::chrono::microseconds(0),
                                          [this](const std::string&) { Stall(); })),
        env_(rocksdb::NewCompositeEnv(fs_)) {}
  rocksdb::Env* env() const { return env_.get(); }
  void Arm() { armed_.store(true); }
  // Returns once the armed append has begun (at most 10 s).
  void AwaitStall() const {
    const auto deadline = SteadyClock::now() + std::chrono::seconds(10);
    while (!stalled_.load() && SteadyClock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

 private:
  void Stall() {
    if (!armed_.exchange(false)) return;
    stalled_.store(true);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }

  std::atomic<bool> armed_{false}, stalled_{false};
  std::shared_ptr<SlowFlashFs> fs_;
  std::unique_ptr<rocksdb::Env> env_;
};

// A durable put of a plain block in host memory writes its record while the block is picked for
// demotion: the demotion waits for the key's flash turn, then writes the block again (a second,
// non-durable record) and counts its flash bytes a second time. Disabled until fixed: flash
// bytes counted 8192, held 4096.
TEST(BlockStoreMoverRace, ADemotionThatWaitedForADurablePutCountsTheBlockOnce) {
  TempDir dir;
  StalledFlash flash;
  StoreOptions o = WithNvme(SmallOptions(3), dir.Sub("nvme"));
  o.nvme_env = flash.env();
  {
    auto s = OpenOrDie(o);
    ASSERT_TRUE(PutN(*s, 1).ok());
    ASSERT_TRUE(PutN(*s, 2).ok());
    ExpectBlock(*s, 2);  // block 1 is the least recently used
    flash.Arm();         // the durable put's write stalls
    std::thread durable([&] { EXPECT_TRUE(PutN(*s, 1, std::nullopt, {.durable = true}).ok()); });
    flash.AwaitStall();
    EXPECT_TRUE(PutN(*s, 3).ok());  // host is full: block 1 is demoted
    durable.join();
    s->WaitForMover();
    EXPECT_EQ(s->Stat(TestKey(1))->tier, Tier::kNvme);
    EXPECT_EQ(Of(s->Stats(), Tier::kNvme).used_bytes, kBlock) << "one record of one block";
    EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
    ExpectBlock(*s, 1);
  }
  auto s = OpenOrDie(o);
  ExpectBlock(*s, 1);
}

// A durable put of a block whose only copy is on flash decides to replace it before its flash
// write, and does so after it, without looking again. A lease granted meanwhile (promoting the
// block to host) then sees its block "changed": FirstChanged says 0, though the leased bytes stay
// valid (the replaced entry is freed at the lease's end). Disabled until fixed.
TEST(BlockStoreMoverRace, ADurablePutKeepsABlockLeasedDuringItsWrite) {
  TempDir dir;
  StalledFlash flash;
  StoreOptions o = WithNvme(SmallOptions(4), dir.Sub("nvme"));
  o.nvme_env = flash.env();
  o.max_leased_bytes = o.host_bytes;
  auto s = OpenOrDie(o);
  for (uint64_t n = 1; n <= 5; ++n) ASSERT_TRUE(PutN(*s, n).ok());
  ASSERT_EQ(s->Stat(TestKey(1))->tier, Tier::kNvme);
  ASSERT_TRUE(s->Delete(TestKey(2)).ok());  // room for the put and for the lease's promotion
  ASSERT_TRUE(s->Delete(TestKey(3)).ok());
  flash.Arm();  // the durable put's write stalls
  std::thread durable([&] { EXPECT_TRUE(PutN(*s, 1, std::nullopt, {.durable = true}).ok()); });
  flash.AwaitStall();
  const BlockKey key[] = {TestKey(1)};
  auto lease = s->Lease(key);  // promotes block 1 while the put's write stalls
  durable.join();
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->promoted, 1u);
  EXPECT_EQ(s->FirstChanged(lease->blocks), 1u) << "the leased block was replaced";
  EXPECT_EQ(std::vector<uint8_t>(s->host_arena_base() + lease->blocks[0].location,
                                 s->host_arena_base() + lease->blocks[0].location + kBlock),
            TestBlock(1, kBlock));
  ASSERT_TRUE(s->Release(lease->id).ok());
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
  ExpectBlock(*s, 1);
}

// The contract that a host hit never waits for a flash write: with every blob append taking
// 20 ms and a writer's puts keeping the mover demoting, Gets of a hot host block stay fast (a few
// microseconds). A Get that waited for a write would take up to 20 ms, and with writes back to
// back nearly every Get would wait, so Gets over 15 ms would fill the time measured. Scheduling
// hiccups on a loaded machine make a few such Gets too (under ASan on 2 busy cores: 12 of 317,
// a quarter of the time), but fill a part of the time: the test allows them up to half of it.
TEST(BlockStoreMoverSlowFlash, AHostHitNeverWaitsForAFlashWrite) {
  TempDir dir;
  auto fs = std::make_shared<SlowFlashFs>(std::chrono::milliseconds(20));
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  StoreOptions o = WithNvme(SmallOptions(16, kMoverBlock), dir.Sub("nvme"), 64 * kMoverBlock);
  o.host_reserve_bytes = -1;
  o.nvme_env = env.get();
  auto s = OpenOrDie(o);
  ASSERT_NE(s, nullptr);
  // The hot block is put last, after blocks that fill the tier up to the mover's reserve: those
  // go to flash first, whether or not the reader has started.
  for (uint64_t n = 1; n <= 14; ++n) {
    ASSERT_TRUE(s->Put(TestKey(n), kNoParent, TestBlock(n, kMoverBlock)).ok());
  }
  const std::vector<uint8_t> hot = TestBlock(0, kMoverBlock);
  ASSERT_TRUE(s->Put(TestKey(0), kNoParent, hot).ok());
  auto placed = s->Stat(TestKey(0));
  ASSERT_TRUE(placed.ok());
  ASSERT_EQ(placed->tier, Tier::kHost);

  const auto deadline = SteadyClock::now() + std::chrono::seconds(4);
  std::atomic<bool> writing{true};
  std::atomic<int> failed_puts{0};
  std::thread writer([&] {
    for (uint64_t n = 15; n < 55 && SteadyClock::now() < deadline; ++n) {
      if (!s->Put(TestKey(n), kNoParent, TestBlock(n, kMoverBlock)).ok()) ++failed_puts;
    }
    writing.store(false);
  });
  const uint64_t host_hits_before = Of(s->Stats(), Tier::kHost).hits;
  std::vector<uint8_t> buf(kMoverBlock);
  std::vector<int64_t> us;  // each Get made once flash writes had begun
  std::optional<SteadyClock::time_point> first;
  int bad_gets = 0, gets = 0;
  while (writing.load()) {
    const bool timed = fs->blob_appends() > 0;
    const auto t0 = SteadyClock::now();
    auto got = s->Get(TestKey(0), std::span(buf));
    const auto t1 = SteadyClock::now();
    ++gets;
    if (!got.ok() || buf != hot) ++bad_gets;
    if (!timed) continue;
    if (!first) first = t0;
    us.push_back(std::chrono::duration_cast<std::chrono::microseconds>(t1 - t0).count());
  }
  const auto last = SteadyClock::now();
  writer.join();
  const StoreStats st = s->Stats();
  EXPECT_EQ(failed_puts.load(), 0);
  EXPECT_EQ(bad_gets, 0);
  EXPECT_GE(st.demotions, 10u) << "the writer's puts kept the mover writing to flash";
  EXPECT_EQ(Of(st, Tier::kHost).hits - host_hits_before, static_cast<uint64_t>(gets))
      << "every Get was a host hit";
  ASSERT_FALSE(us.empty());
  const int64_t window_us =
      std::chrono::duration_cast<std::chrono::microseconds>(last - *first).count();
  int64_t slow_us = 0;
  size_t slow = 0;
  for (int64_t t : us) {
    if (t > 15'000) {
      slow_us += t;
      ++slow;
    }
  }
  std::sort(us.begin(), us.end());
  EXPECT_LT(slow_us, window_us / 2)
      << slow << " of " << us.size() << " Gets took over 15 ms, " << slow_us / 1000 << " ms of "
      << window_us / 1000 << " ms; median " << us[us.size() / 2] << " us, p99 "
      << us[us.size() * 99 / 100] << " us, max " << us.back() << " us";
  EXPECT_TRUE(s->CheckConsistency().ok()) << s->CheckConsistency();
}

}  // namespace
}  // namespace kvtier::testing
