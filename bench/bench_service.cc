// bench_service: kvtierd's gRPC data path against Redis, on the same payloads and concurrency,
// both started by this program on loopback (Redis with persistence off).
//
//   put and get of 256 KiB, 1 MiB and 4 MiB blocks, 1 and 8 concurrent clients:
//   GB/s, ops/s, p50 and p99 latency; Lookup of an 8,192-block chain: p50/p99.
//
// Gets of the two take turns in short slices, so that a drift of the machine's speed weighs on
// both alike.
//
// Usage: bench_service [--quick]      Ends with one line: RESULT {json}.
#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "bench/servers.h"
#include "client/cache_client.h"
#include "common/logging.h"
#include "common/process_tuning.h"
#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier::bench {
namespace {

struct Figures {
  double gbps = 0, ops = 0, p50_us = 0, p99_us = 0;
  std::vector<size_t> done;  // operations completed per client
  // What the figures above are computed from (see Combine).
  size_t total = 0;
  double elapsed = 0;
  std::vector<double> lat_us;
};

double Percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

void Summarize(Figures& f, size_t bytes) {
  f.ops = f.total / f.elapsed;
  f.gbps = f.total * bytes / f.elapsed / 1e9;
  f.p50_us = Percentile(f.lat_us, 0.50);
  f.p99_us = Percentile(f.lat_us, 0.99);
}

// Adds the operations of `more` to `f`, as if they had run in one phase.
void Combine(Figures& f, const Figures& more, size_t bytes) {
  f.done.resize(std::max(f.done.size(), more.done.size()));
  for (size_t t = 0; t < more.done.size(); ++t) f.done[t] += more.done[t];
  f.total += more.total;
  f.elapsed += more.elapsed;
  f.lat_us.insert(f.lat_us.end(), more.lat_us.begin(), more.lat_us.end());
  Summarize(f, bytes);
}

// Runs `op(thread, i)` on `clients` threads for `seconds` (each at most `max_ops` times, i from
// `first_op`); each op moves `bytes`. Returns throughput and latency percentiles.
template <typename Op>
Figures Drive(const char* what, int clients, double seconds, size_t bytes, size_t max_ops, Op op,
              size_t first_op = 0) {
  Figures f;
  f.done.assign(clients, 0);
  std::vector<std::vector<double>> lat(clients);
  std::atomic<size_t> total{0};
  const double start = NowSeconds();
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < max_ops && NowSeconds() - start < seconds; ++i) {
        const double t0 = NowSeconds();
        if (!op(t, first_op + i)) {
          std::fprintf(stderr, "bench_service: %s failed (client %d, operation %zu)\n", what, t, i);
          std::exit(1);
        }
        lat[t].push_back((NowSeconds() - t0) * 1e6);
        ++f.done[t];
        ++total;
      }
    });
  }
  for (auto& th : threads) th.join();
  f.elapsed = NowSeconds() - start;
  f.total = total;
  for (auto& l : lat) f.lat_us.insert(f.lat_us.end(), l.begin(), l.end());
  Summarize(f, bytes);
  return f;
}

// Get phases are split into this many slices, kvtier and Redis taking turns.
constexpr int kGetSlices = 4;

std::string SizeName(size_t size) {
  return size >= (1 << 20) ? std::to_string(size >> 20) + "m" : std::to_string(size >> 10) + "k";
}

int Main(int argc, char** argv) {
  // Megabyte transfers over gRPC, as kvtierd makes them (the client leaves the process alone).
  TuneProcessForThroughput();
  (void)InitLogging("warn");
  bool quick = false;
  if (int rc = ParseBenchFlags(
          argc, argv, "bench_service",
          "  Starts kvtierd and redis-server on loopback and compares them. --quick: under a\n"
          "  minute.\n",
          &quick);
      rc >= 0) {
    return rc;
  }
  const double phase_s = quick ? 1.0 : 4.0;
  testing::TempDir dir;

  testing::DaemonProcess kvtierd(std::string(KVTIER_BINARY_DIR) + "/kvtierd",
                                 {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "2048",
                                  "--metrics-listen", "", "--log-level", "warn"});
  if (kvtierd.address().empty()) {
    std::fprintf(stderr, "bench_service: kvtierd did not start\n");
    return 1;
  }
  RedisServer redis = StartRedis(dir.path());
  if (redis.process == nullptr) {
    std::fprintf(stderr, "bench_service: redis-server did not start (is it installed?)\n");
    return 1;
  }
  const int redis_port = redis.port;

  Result result;
  std::printf("%-8s %-3s %-4s | %10s %10s %9s %9s | %10s %10s %9s %9s | %s\n", "size", "cli", "op",
              "kvtier GB/s", "ops/s", "p50 us", "p99 us", "redis GB/s", "ops/s", "p50 us", "p99 us",
              "kvtier/redis");
  for (size_t size : {size_t{256} << 10, size_t{1} << 20, size_t{4} << 20}) {
    const size_t keys = std::max<size_t>(32, (256u << 20) / size);  // 256 MiB working set
    std::vector<std::vector<uint8_t>> payloads;
    for (size_t k = 0; k < 8; ++k) payloads.push_back(testing::TestBlock(k, size));
    for (int clients : {1, 8}) {
      std::vector<std::unique_ptr<CacheClient>> kv;
      std::vector<redisContext*> rc;
      for (int t = 0; t < clients; ++t) {
        kv.push_back(std::move(*CacheClient::Create(
            // The gRPC path: this benchmark measures Get, not the UCX data plane.
            {.address = kvtierd.address(),
             .tenant = "bench",
             .max_message_bytes = 256 << 20,
             .use_ucx = false})));
        rc.push_back(redisConnect("127.0.0.1", redis_port));
      }
      // Keys are per size and client count, so every put stores a new block.
      const uint64_t base = (size << 8) + clients * 1'000'000ull;
      auto kv_put = [&](int t, size_t i) {
        const size_t k = (i * clients + t) % keys;
        BlockToPut b{testing::TestKey(base + k + i * keys), BlockKey{}, payloads[k % 8]};
        return kv[t]->Put(std::span(&b, 1)).ok();
      };
      auto redis_put = [&](int t, size_t i) {
        const size_t k = (i * clients + t) % keys;
        const std::string key = std::to_string(base + k + i * keys);
        auto* r = static_cast<redisReply*>(
            redisCommand(rc[t], "SET %b %b", key.data(), key.size(), payloads[k % 8].data(), size));
        const bool ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
        if (r != nullptr) freeReplyObject(r);
        return ok;
      };
      // Puts overwrite nothing: cap them so the working set fits both servers' memory.
      const size_t max_puts = std::max<size_t>(1, keys / clients);
      Figures kp = Drive("kvtier put", clients, phase_s, size, max_puts, kv_put);
      Figures rp = Drive("redis put", clients, phase_s, size, max_puts, redis_put);
      // Gets read keys that client t wrote in the put phase of both servers.
      auto written = [&](int t, size_t i) {
        std::mt19937_64 rng(i * 31 + t);
        return rng() % std::max<size_t>(1, std::min(kp.done[t], rp.done[t]));
      };
      // kvtier's client reads into buffers allocated once, as an inference frontend would.
      std::vector<std::vector<uint8_t>> bufs(clients, std::vector<uint8_t>(size));
      auto kv_get = [&](int t, size_t i) {
        const size_t j = written(t, i), k = (j * clients + t) % keys;
        const BlockKey key = testing::TestKey(base + k + j * keys);
        const std::span<uint8_t> dst(bufs[t]);
        auto got = kv[t]->GetInto(std::span(&key, 1), std::span(&dst, 1));
        return got.ok() && (*got)[0] == size;
      };
      auto redis_get = [&](int t, size_t i) {
        const size_t j = written(t, i), k = (j * clients + t) % keys;
        const std::string key = std::to_string(base + k + j * keys);
        auto* r = static_cast<redisReply*>(redisCommand(rc[t], "GET %b", key.data(), key.size()));
        const bool ok = r != nullptr && r->type == REDIS_REPLY_STRING && r->len == size;
        if (r != nullptr) freeReplyObject(r);
        return ok;
      };
      // The two take turns in short slices, each going first in every other one, so that a
      // drift in the machine's speed (common on shared machines) weighs on both alike.
      Figures kg, rg;
      for (int slice = 0; slice < kGetSlices; ++slice) {
        const size_t first = slice * (size_t{1} << 32);  // another sequence of keys each slice
        for (int turn = 0; turn < 2; ++turn) {
          if ((turn == 0) == (slice % 2 == 0)) {
            Combine(
                kg,
                Drive("kvtier get", clients, phase_s / kGetSlices, size, SIZE_MAX, kv_get, first),
                size);
          } else {
            Combine(
                rg,
                Drive("redis get", clients, phase_s / kGetSlices, size, SIZE_MAX, redis_get, first),
                size);
          }
        }
      }
      for (auto [op, k, r] : {std::tuple{"put", kp, rp}, std::tuple{"get", kg, rg}}) {
        std::printf(
            "%-8s %-3d %-4s | %10.2f %10.0f %9.0f %9.0f | %10.2f %10.0f %9.0f %9.0f | %.2f\n",
            SizeName(size).c_str(), clients, op, k.gbps, k.ops, k.p50_us, k.p99_us, r.gbps, r.ops,
            r.p50_us, r.p99_us, k.gbps / r.gbps);
        if (clients == 8) {
          result.Add(std::string("kvtier_") + op + "_gbps_" + SizeName(size), k.gbps);
          result.Add(std::string("redis_") + op + "_gbps_" + SizeName(size), r.gbps);
        } else {
          result.Add(std::string("kvtier_") + op + "_gbps_" + SizeName(size) + "_1c", k.gbps);
          result.Add(std::string("redis_") + op + "_gbps_" + SizeName(size) + "_1c", r.gbps);
        }
      }
      for (auto* c : rc) redisFree(c);
    }
  }

  // Lookup of an 8,192-block chain.
  {
    auto c = std::move(*CacheClient::Create({.address = kvtierd.address(), .tenant = "lookup"}));
    std::vector<BlockKey> chain;
    std::vector<std::vector<uint8_t>> data;
    std::vector<BlockToPut> blocks;
    for (uint64_t i = 0; i < 8192; ++i) chain.push_back(testing::TestKey(900'000'000 + i));
    const auto payload = testing::TestBlock(1, 256);
    for (uint64_t i = 0; i < 8192; ++i) {
      blocks.push_back({chain[i], i ? chain[i - 1] : BlockKey{}, payload});
    }
    if (!c->Put(blocks).ok()) return 1;
    Figures f = Drive("lookup", 1, phase_s, 0, quick ? 500 : 2000, [&](int, size_t) {
      auto r = c->Lookup(chain);
      return r.ok() && r->matched == 8192;
    });
    std::printf("lookup of an 8,192-block chain: p50 %.0f us, p99 %.0f us (%.0f lookups/s)\n",
                f.p50_us, f.p99_us, f.ops);
    result.Add("lookup_8192_p50_us", f.p50_us);
    result.Add("lookup_8192_p99_us", f.p99_us);
  }
  result.Print();
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
