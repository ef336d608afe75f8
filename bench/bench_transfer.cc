// bench_transfer: reading cached blocks out of a kvtierd on the same host, every way kvtier can,
// against the limits of the machine, all measured in this run:
//
//   kvtier UCX get   CacheClient::GetInto over the UCX data plane in rkey mode (lease, one-sided
//                    gets into registered buffers, checksum, release), batches of up to 16 MiB
//   kvtier served    the same calls to a second kvtierd in served mode (ucx.mode served: the
//                    daemon sends each leased batch, one request per batch), same blocks
//   kvtier gRPC get  the same calls with UCX off
//   Redis GET        the same blocks as Redis values, pipelined in the same batches (hiredis)
//   memcpy           copying the same blocks out of a working set of the same size, by as many
//                    threads as readers: the memory system's limit for a read that must land in
//                    another buffer (UCX, served and memcpy: medians of three turns each, in turn)
//   ucx_perftest     `ucx_perftest -t ucp_get` at the same size: the transport's limit (it reads
//                    one buffer, which stays in the CPU cache)
//
// for 256 KiB, 1 MiB and 4 MiB blocks with 1 and 8 readers; and partial reads: one slice per
// layer, 15% of each block's bytes (ReadRanges), against whole blocks.
//
// Usage: bench_transfer [--quick]     Ends with one line: RESULT {json}.
#include <hiredis/hiredis.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <numeric>
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

extern char** environ;

namespace kvtier::bench {
namespace {

std::string SizeName(size_t size) {
  return size >= (1 << 20) ? std::to_string(size >> 20) + "m" : std::to_string(size >> 10) + "k";
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `op(reader, i)` (which moves `bytes_per_op` and returns false on failure) on `readers`
// threads for `seconds`. Returns GB/s, or -1 on a failure.
template <typename Op>
double Throughput(int readers, double seconds, size_t bytes_per_op, Op op) {
  std::atomic<uint64_t> ops{0};
  std::atomic<bool> failed{false};
  const double start = NowSeconds();
  std::vector<std::thread> threads;
  for (int t = 0; t < readers; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < 1'000'000 && NowSeconds() - start < seconds && !failed; ++i) {
        if (!op(t, i)) {
          failed = true;
          return;
        }
        ++ops;
      }
    });
  }
  for (auto& th : threads) th.join();
  if (failed) return -1;
  return static_cast<double>(ops.load()) * bytes_per_op / (NowSeconds() - start) / 1e9;
}

// `ucx_perftest -t ucp_get` at `size`: a server process and a client, on loopback. GB/s, or -1.
double PerftestGet(size_t size, size_t iterations) {
  const std::string port = std::to_string(FreePort());
  std::vector<std::string> server_args = {"ucx_perftest", "-p", port};
  std::vector<char*> argv;
  for (auto& a : server_args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t quiet;
  posix_spawn_file_actions_init(&quiet);
  posix_spawn_file_actions_addopen(&quiet, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&quiet, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t server = 0;
  const int rc = posix_spawnp(&server, "ucx_perftest", &quiet, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&quiet);
  if (rc != 0) return -1;
  double gbps = -1;
  const std::string cmd = "ucx_perftest 127.0.0.1 -p " + port + " -t ucp_get -s " +
                          std::to_string(size) + " -n " + std::to_string(iterations) +
                          " 2>/dev/null";
  for (int attempt = 0; attempt < 20 && gbps < 0; ++attempt) {
    usleep(100'000);  // the server binds its port
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) break;
    char line[512];
    while (std::fgets(line, sizeof(line), p) != nullptr) {
      // Final: iters lat50 lat_avg lat_overall bw_avg bw_overall (MB/s, MB = 2^20) ...
      double it, l50, lavg, lall, bwavg, bwall;
      if (std::sscanf(line, "Final: %lf %lf %lf %lf %lf %lf", &it, &l50, &lavg, &lall, &bwavg,
                      &bwall) == 6) {
        gbps = bwall * 1048576.0 / 1e9;
      }
    }
    pclose(p);
  }
  kill(server, SIGKILL);
  waitpid(server, nullptr, 0);
  return gbps;
}

// `count` distinct indexes below `n` (n >= count), from `rng`.
std::vector<size_t> Pick(std::mt19937_64& rng, size_t n, size_t count) {
  std::vector<size_t> out;
  while (out.size() < count) {
    const size_t x = rng() % n;
    if (std::find(out.begin(), out.end(), x) == out.end()) out.push_back(x);
  }
  return out;
}

int Main(int argc, char** argv) {
  // Megabyte transfers over gRPC, as kvtierd makes them (the client leaves the process alone).
  TuneProcessForThroughput();
  (void)InitLogging("warn");
  bool quick = false;
  if (int rc = ParseBenchFlags(
          argc, argv, "bench_transfer",
          "  Reads blocks from a kvtierd it starts on loopback over UCX and gRPC, and compares\n"
          "  them with Redis, memcpy and ucx_perftest in the same run. --quick: under a minute.\n"
          "  UCX_TLS etc. choose UCX's transports as usual.\n",
          &quick);
      rc >= 0) {
    return rc;
  }
  const double phase_s = quick ? 0.5 : 2.0;
  // Larger than the CPU caches, so that every way of reading pays for memory: 1 GiB.
  const size_t working_set = size_t{1} << 30;
  const size_t max_batch_bytes = 16 << 20;
  testing::TempDir dir;

  auto start_kvtierd = [&](const char* mode) {
    return std::make_unique<testing::DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib",
                                 std::to_string((working_set >> 20) + 256), "--metrics-listen", "",
                                 "--log-level", "warn", "--ucx-mode", mode});
  };
  // The same blocks in two daemons: one in each mode of the data plane.
  const auto kvtierd_ptr = start_kvtierd("rkey");
  const auto served_ptr = start_kvtierd("served");
  const testing::DaemonProcess& kvtierd = *kvtierd_ptr;
  const testing::DaemonProcess& served_kvtierd = *served_ptr;
  for (const testing::DaemonProcess* d : {&kvtierd, &served_kvtierd}) {
    if (d->address().empty() || d->AddressOf("ucx").empty()) {
      std::fprintf(stderr, "bench_transfer: kvtierd did not start with UCX\n%s\n",
                   d->output().c_str());
      return 1;
    }
  }
  RedisServer redis = StartRedis(dir.path());
  if (redis.process == nullptr) {
    std::fprintf(stderr, "bench_transfer: redis-server did not start (is it installed?)\n");
    return 1;
  }

  Result result;
  std::printf("working set %zu MiB; batches of up to %zu MiB; GB/s\n", working_set >> 20,
              max_batch_bytes >> 20);
  std::printf("%-5s %-3s | %8s %8s %8s %8s %8s %9s | %9s %9s %9s\n", "size", "rd", "ucx", "served",
              "grpc", "redis", "memcpy", "perftest", "ucx/limit", "ucx/redis", "srv/ucx");
  for (size_t size : {size_t{256} << 10, size_t{1} << 20, size_t{4} << 20}) {
    const size_t n = working_set / size;
    const size_t batch = std::max<size_t>(1, max_batch_bytes / size);
    const uint64_t id = size;  // keys {id, i}
    // Load the same blocks into kvtier and Redis (they replace the previous size's: kvtier
    // evicts them, Redis is emptied).
    {
      auto c = std::move(*CacheClient::Create({.address = kvtierd.address(), .tenant = "bench"}));
      auto cs =
          std::move(*CacheClient::Create({.address = served_kvtierd.address(), .tenant = "bench"}));
      redisContext* rc = redisConnect("127.0.0.1", redis.port);
      freeReplyObject(redisCommand(rc, "FLUSHALL"));
      for (size_t i = 0; i < n; i += 8) {
        std::vector<std::vector<uint8_t>> payloads;
        std::vector<BlockToPut> blocks;
        for (size_t j = i; j < std::min(n, i + 8); ++j) {
          payloads.push_back(testing::TestBlock(id * 100'000 + j, size));
        }
        for (size_t j = 0; j < payloads.size(); ++j) {
          blocks.push_back({BlockKey{id, i + j}, BlockKey{}, payloads[j]});
          const std::string key = std::to_string(id) + "/" + std::to_string(i + j);
          auto* r = static_cast<redisReply*>(
              redisCommand(rc, "SET %b %b", key.data(), key.size(), payloads[j].data(), size));
          if (r == nullptr || r->type != REDIS_REPLY_STATUS) {
            std::fprintf(stderr, "bench_transfer: redis SET failed\n");
            return 1;
          }
          freeReplyObject(r);
        }
        if (!c->Put(blocks).ok() || !cs->Put(blocks).ok()) {
          std::fprintf(stderr, "bench_transfer: kvtier put failed\n");
          return 1;
        }
      }
      redisFree(rc);
    }
    // The memcpy baseline's source: a working set of the same size, of bytes as varied as the
    // blocks' (a host may merge pages that hold one repeated byte).
    std::vector<uint8_t> source(working_set);
    {
      uint64_t x = 0x9e3779b97f4a7c15ULL ^ size;
      for (size_t i = 0; i + 8 <= source.size(); i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::memcpy(source.data() + i, &x, 8);
      }
    }

    for (int readers : {1, 8}) {
      std::vector<std::vector<uint8_t>> bufs(readers, std::vector<uint8_t>(batch * size));
      std::vector<std::unique_ptr<CacheClient>> ucx, served, grpc;
      std::vector<redisContext*> rcs;
      for (int t = 0; t < readers; ++t) {
        ucx.push_back(
            std::move(*CacheClient::Create({.address = kvtierd.address(), .tenant = "bench"})));
        ucx.back()->RegisterBuffer(bufs[t]);
        served.push_back(std::move(
            *CacheClient::Create({.address = served_kvtierd.address(), .tenant = "bench"})));
        grpc.push_back(std::move(*CacheClient::Create({.address = kvtierd.address(),
                                                       .tenant = "bench",
                                                       .max_message_bytes = 256 << 20,
                                                       .use_ucx = false})));
        rcs.push_back(redisConnect("127.0.0.1", redis.port));
      }
      auto kv_get = [&](std::vector<std::unique_ptr<CacheClient>>& clients) {
        return [&](int t, size_t i) {
          std::mt19937_64 rng(i * 7919 + t);
          std::vector<BlockKey> keys;
          std::vector<std::span<uint8_t>> dst;
          for (size_t x : Pick(rng, n, batch)) {
            keys.push_back(BlockKey{id, x});
            dst.push_back(std::span(bufs[t]).subspan(keys.size() * size - size, size));
          }
          auto sizes = clients[t]->GetInto(keys, dst);
          if (!sizes.ok()) {
            std::fprintf(stderr, "bench_transfer: get failed: %s\n",
                         sizes.status().ToString().c_str());
            return false;
          }
          for (const auto& s : *sizes) {
            if (s != size) return false;
          }
          return true;
        };
      };
      auto redis_get = [&](int t, size_t i) {
        std::mt19937_64 rng(i * 7919 + t);
        const std::vector<size_t> xs = Pick(rng, n, batch);
        for (size_t x : xs) {
          const std::string key = std::to_string(id) + "/" + std::to_string(x);
          redisAppendCommand(rcs[t], "GET %b", key.data(), key.size());
        }
        bool ok = true;
        for (size_t j = 0; j < xs.size(); ++j) {
          void* reply = nullptr;
          if (redisGetReply(rcs[t], &reply) != REDIS_OK) return false;
          auto* r = static_cast<redisReply*>(reply);
          ok = ok && r->type == REDIS_REPLY_STRING && r->len == size;
          // What a caller does with the value: put it where it is needed.
          if (ok) std::memcpy(bufs[t].data() + j * size, r->str, size);
          freeReplyObject(r);
        }
        return ok;
      };
      auto copy = [&](int t, size_t i) {
        std::mt19937_64 rng(i * 7919 + t);
        size_t j = 0;
        for (size_t x : Pick(rng, n, batch)) {
          std::memcpy(bufs[t].data() + (j++) * size, source.data() + x * size, size);
        }
        return true;
      };
      const size_t per_op = batch * size;
      // Connect every client first (UCX: connection, remote key, mapping the arena); the phases
      // measure steady reading.
      for (int t = 0; t < readers; ++t) {
        if (!kv_get(ucx)(t, 0) || !kv_get(served)(t, 0) || !kv_get(grpc)(t, 0) ||
            !redis_get(t, 0)) {
          std::fprintf(stderr, "bench_transfer: a warm-up read failed\n");
          return 1;
        }
      }
      // UCX against memcpy is the ratio that matters, and served against rkey mode: the three are
      // measured in turn, three times, and their medians taken (one short phase of each
      // scattered by 1.5x on a shared machine).
      std::vector<double> us, ss, ms;
      for (int round = 0; round < 3; ++round) {
        us.push_back(Throughput(readers, phase_s / 2, per_op, kv_get(ucx)));
        ss.push_back(Throughput(readers, phase_s / 2, per_op, kv_get(served)));
        ms.push_back(Throughput(readers, phase_s / 2, per_op, copy));
      }
      const double u = *std::min_element(us.begin(), us.end()) < 0 ? -1 : Median(us);
      const double sv = *std::min_element(ss.begin(), ss.end()) < 0 ? -1 : Median(ss);
      const double m = Median(ms);
      const double g = Throughput(readers, phase_s, per_op, kv_get(grpc));
      const double r = Throughput(readers, phase_s, per_op, redis_get);
      const double p = PerftestGet(size, std::max<size_t>(200, (size_t{2} << 30) / size));
      for (auto* rc : rcs) redisFree(rc);
      uint64_t ucx_bytes = 0, served_bytes = 0, grpc_fallback = 0;
      for (auto& c : ucx) {
        ucx_bytes += c->transfer_stats().ucx_bytes;
        grpc_fallback += c->transfer_stats().grpc_bytes;
      }
      for (auto& c : served) {
        served_bytes += c->transfer_stats().ucx_bytes;
        grpc_fallback += c->transfer_stats().grpc_bytes;
      }
      if (u < 0 || sv < 0 || g < 0 || r < 0 || ucx_bytes == 0 || served_bytes == 0 ||
          grpc_fallback != 0) {
        std::fprintf(stderr, "bench_transfer: a run failed (UCX bytes %lu, via gRPC %lu)\n",
                     static_cast<unsigned long>(ucx_bytes),
                     static_cast<unsigned long>(grpc_fallback));
        return 1;
      }
      const double limit = p > 0 ? std::min(p, m) : m;
      std::printf("%-5s %-3d | %8.2f %8.2f %8.2f %8.2f %8.2f %9.2f | %9.2f %9.2f %9.2f\n",
                  SizeName(size).c_str(), readers, u, sv, g, r, m, p, u / limit, u / r, sv / u);
      std::fflush(stdout);
      const std::string suffix = SizeName(size) + (readers == 1 ? "_1r" : "");
      result.Add("ucx_get_gbps_" + suffix, u);
      result.Add("served_get_gbps_" + suffix, sv);
      result.Add("served_vs_rkey_" + suffix, sv / u);
      result.Add("grpc_get_gbps_" + suffix, g);
      result.Add("redis_get_gbps_" + suffix, r);
      result.Add("memcpy_gbps_" + suffix, m);
      if (readers == 1) result.Add("perftest_get_gbps_" + SizeName(size), p);
    }
    // Partial reads: 1 MiB blocks of 32 layers; from each layer a slice of 15% of its bytes.
    if (size != (1 << 20)) continue;
    {
      const size_t layers = 32, layer_bytes = size / layers;
      const size_t slice = layer_bytes * 15 / 100;
      auto c = std::move(*CacheClient::Create({.address = kvtierd.address(), .tenant = "bench"}));
      auto cs =
          std::move(*CacheClient::Create({.address = served_kvtierd.address(), .tenant = "bench"}));
      std::vector<uint8_t> buf(batch * size);
      c->RegisterBuffer(buf);
      auto run = [&](CacheClient& reader, bool partial) {
        std::vector<double> per_block;
        for (int rep = 0; rep < (quick ? 3 : 7); ++rep) {
          const double start = NowSeconds();
          size_t blocks = 0;
          for (size_t i = 0; NowSeconds() - start < phase_s / 2 && i < 100'000; ++i) {
            std::mt19937_64 rng(i);
            std::vector<RangeRead> reads;
            size_t j = 0;
            for (size_t x : Pick(rng, n, batch)) {
              for (size_t l = 0; l < (partial ? layers : 1); ++l) {
                reads.push_back(
                    {BlockKey{id, x}, partial ? l * layer_bytes : 0,
                     std::span(buf).subspan(j * size + l * layer_bytes, partial ? slice : size)});
              }
              ++j;
            }
            if (!reader.ReadRanges(reads).ok()) return -1.0;
            blocks += batch;
          }
          per_block.push_back((NowSeconds() - start) / blocks);
        }
        return Median(per_block);
      };
      const double whole = run(*c, false), part = run(*c, true);
      const double served_whole = run(*cs, false), served_part = run(*cs, true);
      if (whole < 0 || part < 0 || served_whole < 0 || served_part < 0 ||
          c->transfer_stats().grpc_bytes != 0 || cs->transfer_stats().grpc_bytes != 0) {
        std::fprintf(stderr, "bench_transfer: partial reads failed\n");
        return 1;
      }
      std::printf(
          "partial reads (1 MiB blocks, 32 layers, 15%% of each): %.1f us/block vs whole "
          "%.1f us/block: %.2fx faster; served: %.1f vs %.1f us/block, %.2fx\n",
          part * 1e6, whole * 1e6, whole / part, served_part * 1e6, served_whole * 1e6,
          served_whole / served_part);
      result.Add("partial_15pct_speedup", whole / part);
      result.Add("served_partial_15pct_speedup", served_whole / served_part);
    }
  }

  result.Print();
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
