// bench_client_read: the C++ side of bench_python.py. Reads the blocks a kvtierd holds with the
// C++ client as an engine would: `--readers` threads share one CacheClient, each reading batches
// of `--batch` keys with GetInto into buffers of its own (registered once), for `--seconds`,
// timed from `--warmup` seconds after every reader has made its first read (its connection).
// Prints one line of JSON: {"gbps": ..., "bytes": ..., "seconds": ..., "ucx_bytes": ...,
// "grpc_bytes": ...}; exits 1 on a failed read.
//
// Usage: bench_client_read --address HOST:PORT --tenant T --keys-file F --block-bytes N
//                          [--readers 1] [--batch 8] [--seconds 2] [--warmup 0] [--no-ucx] [--no-lease-session]
// F holds the keys, 32 hex digits a line, every block `--block-bytes` long.
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <fstream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "client/cache_client.h"
#include "common/block_key.h"

namespace {

int Usage(const char* why) {
  std::fprintf(stderr,
               "bench_client_read: %s\nusage: bench_client_read --address HOST:PORT --tenant T "
               "--keys-file F --block-bytes N [--readers 1] [--batch 8] [--seconds 2] "
               "[--warmup 0] [--no-ucx] [--no-lease-session]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using kvtier::BlockKey;
  kvtier::ClientOptions options;
  std::string keys_file;
  size_t block_bytes = 0, batch = 8;
  int readers = 1;
  double seconds = 2, warmup = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-ucx") {
      options.use_ucx = false;
      continue;
    }
    if (a == "--no-lease-session") {
      options.lease_session = false;
      continue;
    }
    if (i + 1 >= argc) return Usage(("no value after " + a).c_str());
    const std::string v = argv[++i];
    if (a == "--address") {
      options.address = v;
    } else if (a == "--tenant") {
      options.tenant = v;
    } else if (a == "--keys-file") {
      keys_file = v;
    } else if (a == "--block-bytes") {
      block_bytes = std::strtoull(v.c_str(), nullptr, 10);
    } else if (a == "--readers") {
      readers = std::atoi(v.c_str());
    } else if (a == "--batch") {
      batch = std::strtoull(v.c_str(), nullptr, 10);
    } else if (a == "--seconds") {
      seconds = std::atof(v.c_str());
    } else if (a == "--warmup") {
      warmup = std::atof(v.c_str());
    } else {
      return Usage(("unknown argument " + a).c_str());
    }
  }
  std::vector<BlockKey> keys;
  std::ifstream in(keys_file);
  for (std::string line; std::getline(in, line);) {
    auto key = BlockKey::FromHex(line);
    if (!key.ok()) return Usage(("keys file: " + key.status().ToString()).c_str());
    keys.push_back(*key);
  }
  if (options.address.empty() || options.tenant.empty() || keys.empty() || block_bytes == 0 ||
      readers < 1 || batch < 1 || seconds <= 0 || warmup < 0) {
    return Usage("--address, --tenant, a keys file with keys, --block-bytes, and positive "
                 "--readers, --batch and --seconds are needed");
  }
  // The client as kvtier._native makes it: same options, the process left untuned.
  options.ucx_connections = std::max(8, readers);
  auto client = kvtier::CacheClient::Create(options);
  if (!client.ok()) return Usage(client.status().ToString().c_str());

  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> failed{false};
  std::chrono::steady_clock::time_point start, end;
  // The last reader to finish its first read sets the clock going, `warmup` from now.
  std::barrier warm(readers, [&]() noexcept {
    start = std::chrono::steady_clock::now() +
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                std::chrono::duration<double>(warmup));
    end = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(seconds));
  });
  std::vector<std::thread> threads;
  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      std::vector<std::vector<uint8_t>> buffers(batch, std::vector<uint8_t>(block_bytes));
      std::vector<std::span<uint8_t>> dst;
      for (auto& b : buffers) {
        (*client)->RegisterBuffer(b);
        dst.emplace_back(b);
      }
      std::vector<BlockKey> ask(batch);
      size_t next = static_cast<size_t>(r) * batch;
      // One batch; false (and `failed`) when it did not read every block.
      auto read = [&](bool count) {
        for (size_t i = 0; i < batch; ++i) ask[i] = keys[(next + i) % keys.size()];
        next += batch;
        auto got = (*client)->GetInto(ask, dst);
        if (!got.ok()) {
          std::fprintf(stderr, "bench_client_read: %s\n", got.status().ToString().c_str());
          failed = true;
          return false;
        }
        for (const auto& size : *got) {
          if (!size) {
            std::fprintf(stderr, "bench_client_read: a block is not cached\n");
            failed = true;
            return false;
          }
          if (count) bytes += *size;
        }
        return true;
      };
      read(false);
      warm.arrive_and_wait();
      while (!failed && std::chrono::steady_clock::now() < start && read(false)) {
      }
      while (!failed && std::chrono::steady_clock::now() < end && read(true)) {
      }
    });
  }
  for (auto& t : threads) t.join();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed) return 1;
  const kvtier::TransferStats s = (*client)->transfer_stats();
  std::printf("{\"gbps\": %.6g, \"bytes\": %llu, \"seconds\": %.6g, \"ucx_bytes\": %llu, "
              "\"grpc_bytes\": %llu}\n",
              static_cast<double>(bytes) / took / 1e9, static_cast<unsigned long long>(bytes.load()),
              took, static_cast<unsigned long long>(s.ucx_bytes),
              static_cast<unsigned long long>(s.grpc_bytes));
  return 0;
}
