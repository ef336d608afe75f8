// Load: 32 client threads of mixed put/get/lookup against one kvtierd for 60 s (KVTIER_LOAD_SECONDS
// overrides), every byte verified; the daemon's resident memory must stay within its host tier
// plus a stated overhead. Bounded in time and in operations.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "client/cache_client.h"
#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;

constexpr size_t kHostMiB = 256;
// Beyond the host arena: RocksDB metadata memtables and table readers, gRPC's buffers for 32
// streams, in-flight payload copies, allocator slack.
constexpr size_t kOverheadMiB = 256;
constexpr size_t kBlockBytes = 64 * 1024;
constexpr uint64_t kChains = 200, kChainLength = 20;  // 4,000 distinct blocks, 250 MiB

size_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

TEST(Load, ThirtyTwoClientsMixedWorkloadEveryByteVerified) {
  TempDir dir;
  DaemonProcess d(std::string(KVTIER_BINARY_DIR) + "/kvtierd",
                  {"--listen", "127.0.0.1:0", "--data", dir.Sub("data"), "--host-mib",
                   std::to_string(kHostMiB), "--nvme-gib", "1", "--admission", "all",
                   "--metrics-listen", "", "--log-level", "warn"});
  ASSERT_FALSE(d.address().empty());
  const char* env = std::getenv("KVTIER_LOAD_SECONDS");
  const int seconds = env != nullptr ? std::atoi(env) : 60;
  const auto stop = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  constexpr uint64_t kMaxOpsPerThread = 2'000'000;

  std::atomic<uint64_t> puts{0}, gets{0}, hits{0}, lookups{0}, wrong{0}, errors{0};
  // The first failed call's status, for the failure message.
  std::mutex first_error_mu;
  std::string first_error;
  auto failed = [&](const absl::Status& st) {
    if (errors++ == 0) {
      std::lock_guard lock(first_error_mu);
      first_error = st.ToString();
    }
  };
  std::atomic<size_t> max_rss{0};
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done) {
      size_t rss = RssBytes(d.pid());
      size_t cur = max_rss.load();
      while (rss > cur && !max_rss.compare_exchange_weak(cur, rss)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 32; ++t) {
    threads.emplace_back([&, t] {
      auto c = CacheClient::Create({.address = d.address(), .tenant = "load"});
      if (!c.ok()) {
        failed(c.status());
        return;
      }
      std::mt19937_64 rng(t);
      for (uint64_t op = 0; op < kMaxOpsPerThread && std::chrono::steady_clock::now() < stop;
           ++op) {
        const uint64_t chain = rng() % kChains, pos = rng() % kChainLength;
        const uint64_t n = chain * kChainLength + pos;
        switch (rng() % 4) {
          case 0: {  // put a block after its parent
            const auto data = TestBlock(n, kBlockBytes);
            BlockToPut b{TestKey(n), pos == 0 ? BlockKey{} : TestKey(n - 1), data};
            auto r = (*c)->Put(std::span(&b, 1));
            if (!r.ok()) failed(r.status());
            ++puts;
            break;
          }
          case 1:
          case 2: {  // get one block or a few
            std::vector<BlockKey> keys;
            for (uint64_t i = pos; i < std::min(pos + 4, kChainLength); ++i) {
              keys.push_back(TestKey(chain * kChainLength + i));
            }
            auto r = (*c)->Get(keys);
            if (!r.ok()) {
              failed(r.status());
              break;
            }
            for (size_t i = 0; i < keys.size(); ++i) {
              if (!(*r)[i].has_value()) continue;
              ++hits;
              if (*(*r)[i] != TestBlock(chain * kChainLength + pos + i, kBlockBytes)) ++wrong;
            }
            ++gets;
            break;
          }
          case 3: {  // look up a whole chain
            std::vector<BlockKey> keys;
            for (uint64_t i = 0; i < kChainLength; ++i) keys.push_back(TestKey(chain * kChainLength + i));
            if (auto r = (*c)->Lookup(keys); !r.ok()) failed(r.status());
            ++lookups;
            break;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  done = true;
  sampler.join();
  const double rss_mib = max_rss.load() / 1048576.0;
  std::printf("load: %d s, %llu puts, %llu gets (%llu blocks found), %llu lookups, "
              "peak RSS %.0f MiB (host tier %zu MiB + overhead bound %zu MiB)\n",
              seconds, (unsigned long long)puts.load(), (unsigned long long)gets.load(),
              (unsigned long long)hits.load(), (unsigned long long)lookups.load(), rss_mib,
              kHostMiB, kOverheadMiB);
  EXPECT_EQ(wrong.load(), 0u) << "a Get returned wrong bytes";
  EXPECT_EQ(errors.load(), 0u) << "the first: " << first_error;
  EXPECT_GT(hits.load(), 0u);
  EXPECT_GT(puts.load(), 100u);
  EXPECT_LE(max_rss.load(), (kHostMiB + kOverheadMiB) << 20);
  EXPECT_EQ(d.Stop(), 0) << "clean exit after the load";
}

}  // namespace
}  // namespace kvtier
