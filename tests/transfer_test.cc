// The UCX data plane end to end: a real kvtierd process, CacheClient reading leased blocks with
// one-sided gets. Every test runs twice: with UCX's default transports (shared memory / CMA on
// one host) and with UCX_TLS=tcp (what crosses hosts).
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <atomic>
#include <random>
#include <thread>

#include "client/cache_client.h"
#include "common/mutex.h"
#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;

constexpr size_t kBlockBytes = 256 << 10;

class TransferTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    // UCX reads its configuration from the environment: the daemon inherits it.
    if (std::string(GetParam()).empty()) {
      unsetenv("UCX_TLS");
    } else {
      setenv("UCX_TLS", GetParam(), 1);
    }
    StartDaemon();
  }
  void TearDown() override { unsetenv("UCX_TLS"); }

  void StartDaemon() {
    daemon_ = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--data", dir_.Sub("data"),
                                 "--host-mib", "64", "--nvme-gib", "1", "--log-level", "warn",
                                 "--metrics-listen", ""});
    ASSERT_FALSE(daemon_->address().empty()) << daemon_->output();
    ASSERT_FALSE(daemon_->AddressOf("ucx").empty()) << daemon_->output();
  }

  bool tcp() const { return !std::string(GetParam()).empty(); }

  // With UCX_TLS=tcp, UCX can only emulate one-sided reads; the tests use them anyway (they are
  // what crosses hosts without RDMA) unless `software_rma` is false, the client's default.
  std::unique_ptr<CacheClient> Client(ClientOptions o = {}, bool software_rma = true) {
    o.address = daemon_->address();
    o.tenant = "t";
    o.ucx_software_rma = software_rma;
    auto c = CacheClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  // Stores n blocks (keys {id, i}) and returns their payloads.
  std::vector<std::vector<uint8_t>> PutBlocks(CacheClient& c, uint64_t id, size_t n) {
    std::vector<std::vector<uint8_t>> payloads;
    std::vector<BlockToPut> blocks;
    for (size_t i = 0; i < n; ++i)
      payloads.push_back(testing::TestBlock(id * 1000 + i, kBlockBytes));
    for (size_t i = 0; i < n; ++i) {
      blocks.push_back({BlockKey{id, i}, i == 0 ? BlockKey{} : BlockKey{id, i - 1}, payloads[i]});
    }
    auto put = c.Put(blocks);
    EXPECT_TRUE(put.ok()) << put.status();
    return payloads;
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_P(TransferTest, WholeBlocksAndRangesArriveByteForByte) {
  auto c = Client();
  const auto payloads = PutBlocks(*c, 1, 16);
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> bufs(16, std::vector<uint8_t>(kBlockBytes + 100, 0xAB));
  std::vector<std::span<uint8_t>> dst;
  for (size_t i = 0; i < 16; ++i) {
    keys.push_back(BlockKey{1, i});
    dst.push_back(bufs[i]);
  }
  auto sizes = c->GetInto(keys, dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  for (size_t i = 0; i < 16; ++i) {
    ASSERT_EQ((*sizes)[i], kBlockBytes);
    ASSERT_TRUE(std::equal(payloads[i].begin(), payloads[i].end(), bufs[i].begin())) << i;
    EXPECT_EQ(bufs[i][kBlockBytes], 0xAB);
  }
  TransferStats st = c->transfer_stats();
  EXPECT_EQ(st.ucx_bytes, 16 * kBlockBytes);
  EXPECT_EQ(st.grpc_bytes, 0u);
  EXPECT_EQ(st.ucx_connects, 1u);

  // Ranges: one slice per "layer" (8 layers, 15% of each block in all), as the worker reads the
  // recall heads of a block.
  const size_t layers = 8, layer_bytes = kBlockBytes / layers, slice = layer_bytes * 15 / 100;
  std::vector<std::vector<uint8_t>> got(16 * layers, std::vector<uint8_t>(slice));
  std::vector<RangeRead> reads;
  for (size_t i = 0; i < 16; ++i) {
    for (size_t l = 0; l < layers; ++l) {
      reads.push_back({keys[i], l * layer_bytes + 7 * l, got[i * layers + l]});
    }
  }
  ASSERT_TRUE(c->ReadRanges(reads).ok());
  for (size_t i = 0; i < 16; ++i) {
    for (size_t l = 0; l < layers; ++l) {
      const uint8_t* want = payloads[i].data() + l * layer_bytes + 7 * l;
      ASSERT_TRUE(std::equal(want, want + slice, got[i * layers + l].begin())) << i << "/" << l;
    }
  }
  st = c->transfer_stats();
  EXPECT_EQ(st.ucx_bytes, 16 * kBlockBytes + 16 * layers * slice);
  EXPECT_EQ(st.grpc_bytes, 0u);

  // Bad ranges and missing blocks are errors, never short reads.
  std::vector<uint8_t> two(2);
  const RangeRead past[] = {{keys[0], kBlockBytes - 1, two}};
  EXPECT_EQ(c->ReadRanges(past).code(), absl::StatusCode::kOutOfRange);
  const RangeRead missing[] = {{BlockKey{99, 99}, 0, two}};
  EXPECT_EQ(c->ReadRanges(missing).code(), absl::StatusCode::kNotFound);
}

TEST_P(TransferTest, TheDaemonConfirmsLeasedBlocksStayedPutEvenAfterTheLeaseEnded) {
  auto c = Client();
  PutBlocks(*c, 3, 4);
  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < 4; ++i) keys.push_back(BlockKey{3, i});
  auto lease = c->Lease(keys, /*ttl_ms=*/20);
  ASSERT_TRUE(lease.ok()) << lease.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the lease ends
  auto unchanged = c->ReleaseVerified(*lease);
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_TRUE(*unchanged) << "nothing moved: reads made under the lease read the blocks";
  auto deleted = c->Delete(std::span(keys).first(1));
  ASSERT_TRUE(deleted.ok());
  ASSERT_EQ(*deleted, 1u);
  unchanged = c->ReleaseVerified(*lease);
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_FALSE(*unchanged) << "block 0 is gone";
  PutBlocks(*c, 3, 1);  // stored again: a new placement, whatever its address
  unchanged = c->ReleaseVerified(*lease);
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(*unchanged);
}

TEST_P(TransferTest, ReadsUnderLeasesTooShortAreRedone) {
  // A 1 ms lease is over (by the client's safety margin) before a read can start: the client must
  // notice, try again under new leases, and in the end return the right bytes (through gRPC).
  // (A read that starts in time and ends late is discarded by the same check after it lands.)
  auto c = Client({.lease_ttl_ms = 1});
  const auto payloads = PutBlocks(*c, 2, 16);
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> bufs(16, std::vector<uint8_t>(kBlockBytes));
  std::vector<std::span<uint8_t>> dst;
  for (size_t i = 0; i < 16; ++i) {
    keys.push_back(BlockKey{2, i});
    dst.push_back(bufs[i]);
  }
  auto sizes = c->GetInto(keys, dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  for (size_t i = 0; i < 16; ++i) ASSERT_EQ(bufs[i], payloads[i]) << i;
  const TransferStats st = c->transfer_stats();
  EXPECT_GT(st.lease_retries, 0u);
  EXPECT_EQ(st.grpc_bytes + st.ucx_bytes, 16 * kBlockBytes);
}

TEST_P(TransferTest, SixteenConcurrentReaders) {
  auto writer = Client();
  const auto payloads = PutBlocks(*writer, 5, 64);
  std::atomic<int> errors{0}, wrong{0}, reads{0}, without_ucx{0};
  std::string first_error;
  Mutex mu;
  std::vector<std::thread> threads;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      // Sixteen connections at once on a loaded 2-core machine: give connecting more retries.
      auto c = Client({.max_attempts = 8, .initial_backoff_ms = 100});
      std::mt19937 rng(t);
      std::vector<uint8_t> a(kBlockBytes), b(kBlockBytes);
      for (int i = 0; i < 200 && std::chrono::steady_clock::now() < until; ++i) {
        const size_t x = rng() % 64, y = (x + 1 + rng() % 63) % 64;
        const BlockKey keys[] = {BlockKey{5, x}, BlockKey{5, y}};
        const std::span<uint8_t> dst[] = {a, b};
        auto sizes = c->GetInto(keys, dst);
        ++reads;
        if (!sizes.ok()) {
          MutexLock lock(&mu);
          if (errors++ == 0) first_error = sizes.status().ToString();
        } else if (a != payloads[x] || b != payloads[y]) {
          ++wrong;
        }
      }
      if (c->transfer_stats().ucx_bytes == 0) ++without_ucx;  // every reader used UCX
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0) << first_error;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(without_ucx.load(), 0);
  EXPECT_GT(reads.load(), 16);
}

TEST_P(TransferTest, AnAbandonedLeaseExpiresAndItsCapacityComesBack) {
  auto c = Client();
  PutBlocks(*c, 6, 4);
  std::vector<BlockKey> keys;
  for (size_t i = 0; i < 4; ++i) keys.push_back(BlockKey{6, i});
  auto lease = c->Lease(keys, 300);
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->leases_active(), 1u);
  // Leased blocks cannot be deleted...
  EXPECT_EQ(c->Delete(std::span(keys).first(1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // ...until the lease runs out, without any further request to the daemon.
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->leases_active(), 0u);
  auto deleted = c->Delete(keys);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 4u);
}

TEST_P(TransferTest, DaemonKilledMidTransferGivesErrorsNotWrongBytes) {
  auto writer = Client();
  const auto payloads = PutBlocks(*writer, 7, 64);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto c = Client({.deadline_ms = 2000, .max_attempts = 1});
      std::vector<std::vector<uint8_t>> bufs(8, std::vector<uint8_t>(kBlockBytes));
      for (int i = 0; i < 2000 && !stop.load(); ++i) {
        std::vector<BlockKey> keys;
        std::vector<std::span<uint8_t>> dst;
        for (size_t j = 0; j < 8; ++j) {
          keys.push_back(BlockKey{7, (i * 8 + j + t) % 64});
          dst.push_back(bufs[j]);
        }
        auto sizes = c->GetInto(keys, dst);
        if (!sizes.ok()) {
          ++failed;
          continue;
        }
        ++ok;
        for (size_t j = 0; j < 8; ++j) {
          if (!(*sizes)[j].has_value() || bufs[j] != payloads[keys[j].lo]) ++wrong;
        }
      }
    });
  }
  while (ok.load() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(daemon_->pid(), SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(failed.load(), 0);  // the reads after the kill failed
}

TEST_P(TransferTest, AReaderKilledMidReadLeavesTheDaemonServing) {
  // With default client options. Over TCP the client then reads through gRPC: UCX 1.13 would
  // emulate the reads with replies from the daemon, and a reply to a dead reader aborts it.
  // The reader is a child process (forked before this process touches gRPC or UCX).
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto c = Client({}, false);
    const auto payloads = PutBlocks(*c, 8, 32);
    std::vector<std::vector<uint8_t>> bufs(32, std::vector<uint8_t>(kBlockBytes));
    std::vector<BlockKey> keys;
    std::vector<std::span<uint8_t>> dst;
    for (size_t i = 0; i < 32; ++i) {
      keys.push_back(BlockKey{8, i});
      dst.push_back(bufs[i]);
    }
    for (int i = 0; i < 100'000; ++i) (void)c->GetInto(keys, dst);  // until killed
    _exit(0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  // The daemon still serves (the dead reader's lease runs out on its own).
  auto c = Client({}, false);
  const auto payloads = PutBlocks(*c, 9, 4);
  std::vector<uint8_t> buf(kBlockBytes);
  const BlockKey key{9, 3};
  const std::span<uint8_t> dst[] = {buf};
  auto sizes = c->GetInto(std::span(&key, 1), dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ(buf, payloads[3]);
  EXPECT_EQ(c->transfer_stats().ucx_bytes, tcp() ? 0 : kBlockBytes);
  EXPECT_EQ(c->transfer_stats().grpc_bytes, tcp() ? kBlockBytes : 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, TransferTest, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return std::string(info.param).empty() ? "default" : "tcp";
                         });

}  // namespace
}  // namespace kvtier
