// bench_store: the tiered block store against its baselines, measured in the same run.
//
//   host get/put of 1 MiB blocks        vs memcpy of the same bytes over the same working set
//   NVMe-tier read/write through store  vs O_DIRECT reads/writes of a file in the same directory
//   index RAM per cached block (host- and NVMe-resident)
//   chained-key hashing throughput (128K-token prompt, 16-token blocks)
//   hit rate of the store's prefix-aware eviction vs a plain LRU, replaying the Mooncake trace
//   NVMe admission (all vs seen-twice): hit rate and flash bytes written
//   host-hit latency (p99) alone, and while puts demote onto a flash tier slowed to 50 ms appends
//   share of puts that evicted synchronously (the mover's reserve did not cover them)
//
// Usage: bench_store [--quick] [--dir DIR] [--trace FILE]
// Ends with one line: RESULT {json}.
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <rocksdb/env.h>
#include <thread>
#include <list>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "bench/bench_util.h"
#include "cache/block_store.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "common/logging.h"
#include "testing/slow_fs.h"
#include "testing/test_util.h"

namespace kvtier::bench {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

struct Args {
  bool quick = false;
  std::string dir;
  std::string trace = std::string(KVTIER_SOURCE_DIR) + "/../shared/data/mooncake/synthetic_trace.jsonl";
};

void Die(const std::string& what, const absl::Status& st) {
  std::fprintf(stderr, "bench_store: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

BlockKey KeyOf(uint64_t n) { return testing::TestKey(n); }

void FillRandom(uint8_t* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
}

// ---- host tier vs memcpy -------------------------------------------------------------------

struct HostFigures {
  double get_gbps, put_gbps, memcpy_get_gbps, memcpy_put_gbps;
};

HostFigures BenchHost(const Args& args) {
  const size_t arena = args.quick ? 512 * kMiB : 1024 * kMiB;
  // What the store keeps: the mover holds 1/32 of the tier free for puts (StoreOptions).
  const size_t blocks = arena / kMiB * 15 / 16;
  const int rounds = args.quick ? 3 : 5;
  // Source of puts: its own working set, as large as the arena.
  std::vector<uint8_t> src(blocks * kMiB);
  FillRandom(src.data(), src.size(), 1);
  std::vector<uint8_t> out(kMiB);
  std::vector<size_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));

  std::vector<double> get, put, mget, mput;
  for (int r = 0; r < rounds; ++r) {
    StoreOptions o;
    o.host_bytes = arena;
    o.max_block_bytes = kMiB;
    auto store = BlockStore::Open(o);
    if (!store.ok()) Die("open", store.status());
    BlockStore& s = **store;
    double t0 = NowSeconds();
    for (size_t i = 0; i < blocks; ++i) {
      absl::Status st = s.Put(KeyOf(i), BlockKey{}, std::span(src.data() + i * kMiB, kMiB));
      if (!st.ok()) Die("put", st);
    }
    double t1 = NowSeconds();
    for (size_t i : order) {
      auto n = s.Get(KeyOf(i), std::span(out));
      if (!n.ok()) Die("get", n.status());
    }
    double t2 = NowSeconds();
    put.push_back(blocks * kMiB / (t1 - t0) / 1e9);
    get.push_back(blocks * kMiB / (t2 - t1) / 1e9);

    // Baseline: the same copies with plain memcpy, over a region as large as the arena.
    uint8_t* region = s.host_arena_base();
    t0 = NowSeconds();
    for (size_t i = 0; i < blocks; ++i) std::memcpy(region + i * kMiB, src.data() + i * kMiB, kMiB);
    t1 = NowSeconds();
    for (size_t i : order) std::memcpy(out.data(), region + i * kMiB, kMiB);
    t2 = NowSeconds();
    mput.push_back(blocks * kMiB / (t1 - t0) / 1e9);
    mget.push_back(blocks * kMiB / (t2 - t1) / 1e9);
  }
  return {Median(get), Median(put), Median(mget), Median(mput)};
}

// ---- NVMe tier vs O_DIRECT -----------------------------------------------------------------

struct NvmeFigures {
  double read_gbps, write_gbps, raw_read_gbps, raw_write_gbps;
  // Of the puts that needed room (every put past the host tier's capacity), the share that
  // evicted a block themselves.
  double sync_eviction_share;
};

std::pair<double, double> RawDirectIo(const std::string& path, size_t blocks,
                                      const std::vector<size_t>& order) {
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kMiB) != 0) std::exit(1);
  FillRandom(static_cast<uint8_t*>(buf), kMiB, 3);
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_DIRECT, 0644);
  if (fd < 0) {
    std::perror("bench_store: open O_DIRECT");
    std::exit(1);
  }
  double t0 = NowSeconds();
  for (size_t i = 0; i < blocks; ++i) {
    if (pwrite(fd, buf, kMiB, static_cast<off_t>(i * kMiB)) != static_cast<ssize_t>(kMiB)) {
      std::perror("bench_store: pwrite");
      std::exit(1);
    }
  }
  fdatasync(fd);
  double t1 = NowSeconds();
  for (size_t i : order) {
    if (pread(fd, buf, kMiB, static_cast<off_t>(i * kMiB)) != static_cast<ssize_t>(kMiB)) {
      std::perror("bench_store: pread");
      std::exit(1);
    }
  }
  double t2 = NowSeconds();
  close(fd);
  unlink(path.c_str());
  free(buf);
  return {blocks * kMiB / (t2 - t1) / 1e9, blocks * kMiB / (t1 - t0) / 1e9};
}

NvmeFigures BenchNvme(const Args& args, const std::string& dir) {
  const size_t blocks = args.quick ? 384 : 1024;
  const size_t host_blocks = 32;
  const int rounds = args.quick ? 3 : 3;
  std::vector<uint8_t> src(64 * kMiB);
  FillRandom(src.data(), src.size(), 2);
  std::vector<uint8_t> out(kMiB);
  // Reads touch blocks that are on flash only, in a shuffled order.
  std::vector<size_t> order(blocks - host_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(9));

  std::vector<double> rd, wr, raw_rd, raw_wr, sync_share;
  for (int r = 0; r < rounds; ++r) {
    const std::string path = dir + "/nvme-" + std::to_string(r);
    {
      StoreOptions o;
      o.host_bytes = host_blocks * kMiB;
      o.max_block_bytes = kMiB;
      o.nvme_path = path;
      o.nvme_admission = NvmeAdmission::kAll;
      auto store = BlockStore::Open(o);
      if (!store.ok()) Die("open nvme", store.status());
      BlockStore& s = **store;
      // Write: every put past the host capacity demotes one block to flash.
      double t0 = NowSeconds();
      for (size_t i = 0; i < blocks; ++i) {
        const uint8_t* p = src.data() + (i % 64) * kMiB;
        // Vary the first bytes so no two blocks are equal.
        std::memcpy(out.data(), p, kMiB);
        std::memcpy(out.data(), &i, sizeof(i));
        absl::Status st = s.Put(KeyOf(i), BlockKey{}, std::span(out));
        if (!st.ok()) Die("put", st);
      }
      absl::Status st = s.Flush();
      if (!st.ok()) Die("flush", st);
      double t1 = NowSeconds();
      const StoreStats after_puts = s.Stats();
      const uint64_t written = after_puts.nvme_bytes_written;
      sync_share.push_back(static_cast<double>(after_puts.sync_evictions) /
                           static_cast<double>(blocks - host_blocks));
      // Read: blocks 0 .. blocks-host_blocks-1 are on flash only.
      for (size_t i : order) {
        auto n = s.Get(KeyOf(i), std::span(out));
        if (!n.ok()) Die("get", n.status());
      }
      double t2 = NowSeconds();
      if (s.Stats().tiers[static_cast<int>(Tier::kNvme)].hits != order.size()) {
        std::fprintf(stderr, "bench_store: reads were not served by the NVMe tier\n");
        std::exit(1);
      }
      wr.push_back(written / (t1 - t0) / 1e9);
      rd.push_back(order.size() * kMiB / (t2 - t1) / 1e9);
    }
    std::filesystem::remove_all(path);
    auto [raw_r, raw_w] = RawDirectIo(dir + "/raw-" + std::to_string(r), blocks, order);
    raw_rd.push_back(raw_r);
    raw_wr.push_back(raw_w);
  }
  return {Median(rd), Median(wr), Median(raw_rd), Median(raw_wr), Median(sync_share)};
}

// ---- host-hit latency, alone and beside a slow flash tier -----------------------------------

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return v[i];
}

struct LatencyFigures {
  double p99_us, p99_us_slow_flash, mean_us, mean_us_slow_flash, max_us_slow_flash;
  uint64_t puts_slow_flash, demotions_slow_flash;
};

// One thread's Gets of a hot set of 256 KiB host blocks, timed one by one. With `slow_flash`, a
// second thread puts new blocks meanwhile, so that the mover demotes onto a flash tier whose
// blob appends each take 50 ms (testing::SlowFlashFs).
struct GetLatency {
  std::vector<double> us;
  uint64_t puts = 0, demotions = 0;
};
GetLatency MeasureHostGets(const Args& args, const std::string& path, bool slow_flash) {
  constexpr size_t kBlock = 256 * 1024;
  constexpr size_t kHot = 8;
  const double seconds = args.quick ? 1.5 : 4.0;
  auto fs = std::make_shared<testing::SlowFlashFs>(std::chrono::milliseconds(slow_flash ? 50 : 0));
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  GetLatency out;
  {
    StoreOptions o;
    o.host_bytes = 64 * kBlock;
    o.max_block_bytes = kBlock;
    o.host_hugepages = false;
    o.nvme_path = path;
    o.nvme_admission = NvmeAdmission::kAll;
    o.nvme_env = env.get();
    auto store = BlockStore::Open(o);
    if (!store.ok()) Die("open latency store", store.status());
    BlockStore& s = **store;
    std::vector<uint8_t> block(kBlock), got(kBlock);
    FillRandom(block.data(), kBlock, 4);
    for (size_t i = 0; i < kHot; ++i) {
      std::memcpy(block.data(), &i, sizeof(i));
      absl::Status st = s.Put(KeyOf(i), BlockKey{}, block);
      if (!st.ok()) Die("latency put", st);
    }
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> puts{0};
    std::thread writer;
    if (slow_flash) {
      writer = std::thread([&] {
        std::vector<uint8_t> b(kBlock);
        FillRandom(b.data(), kBlock, 5);
        for (uint64_t i = 1'000'000; !stop.load(); ++i) {
          std::memcpy(b.data(), &i, sizeof(i));
          absl::Status st = s.Put(KeyOf(i), BlockKey{}, b);
          if (!st.ok() && st.code() != absl::StatusCode::kResourceExhausted) Die("writer put", st);
          if (st.ok()) puts.fetch_add(1);
        }
      });
    }
    const uint64_t demotions_before = s.Stats().demotions;
    out.us.reserve(1 << 20);
    const double end = NowSeconds() + seconds;
    for (size_t i = 0; NowSeconds() < end; ++i) {
      const double t0 = NowSeconds();
      auto n = s.Get(KeyOf(i % kHot), std::span(got));
      const double t1 = NowSeconds();
      if (!n.ok()) Die("latency get", n.status());
      out.us.push_back((t1 - t0) * 1e6);
    }
    stop.store(true);
    if (writer.joinable()) writer.join();
    out.puts = puts.load();
    out.demotions = s.Stats().demotions - demotions_before;
    if (s.Stats().tiers[static_cast<int>(Tier::kHost)].hits < out.us.size()) {
      std::fprintf(stderr, "bench_store: hot blocks left the host tier\n");
      std::exit(1);
    }
  }
  std::filesystem::remove_all(path);
  return out;
}

LatencyFigures BenchHitLatency(const Args& args, const std::string& dir) {
  // Alternate the two settings, so that both see the same state of a shared machine.
  const int rounds = args.quick ? 2 : 3;
  std::vector<double> p99, p99_slow, mean, mean_slow, max_slow;
  uint64_t puts = 0, demotions = 0;
  auto mean_of = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  };
  for (int r = 0; r < rounds; ++r) {
    const GetLatency plain = MeasureHostGets(args, dir + "/latency-plain", false);
    const GetLatency slow = MeasureHostGets(args, dir + "/latency-slow", true);
    p99.push_back(Percentile(plain.us, 0.99));
    mean.push_back(mean_of(plain.us));
    p99_slow.push_back(Percentile(slow.us, 0.99));
    mean_slow.push_back(mean_of(slow.us));
    max_slow.push_back(*std::max_element(slow.us.begin(), slow.us.end()));
    puts += slow.puts;
    demotions += slow.demotions;
  }
  return {Median(p99),       Median(p99_slow), Median(mean), Median(mean_slow),
          Median(max_slow), puts,             demotions};
}

// ---- index memory --------------------------------------------------------------------------

std::pair<double, double> BenchIndexBytes(const Args& args, const std::string& dir) {
  const size_t blocks = args.quick ? 200'000 : 1'000'000;
  constexpr size_t kTiny = 64;
  std::vector<uint8_t> payload(kTiny, 7);
  double host_per_block, nvme_per_block;
  {
    StoreOptions o;
    o.host_bytes = blocks * kTiny + 64 * kMiB;
    o.max_block_bytes = 4096;
    auto store = BlockStore::Open(o);
    if (!store.ok()) Die("open", store.status());
    for (size_t i = 0; i < blocks; ++i) {
      absl::Status st = (*store)->Put(KeyOf(i), i ? KeyOf(i - 1) : BlockKey{}, payload);
      if (!st.ok()) Die("put", st);
    }
    StoreStats st = (*store)->Stats();
    host_per_block = static_cast<double>(st.index_bytes) / st.tiers[1].blocks;
  }
  {
    const size_t nvme_blocks = blocks / 2;
    StoreOptions o;
    o.host_bytes = 1 * kMiB;
    o.max_block_bytes = 4096;
    o.nvme_path = dir + "/index";
    o.nvme_admission = NvmeAdmission::kAll;
    {
      auto store = BlockStore::Open(o);
      if (!store.ok()) Die("open", store.status());
      for (size_t i = 0; i < nvme_blocks; ++i) {
        absl::Status st = (*store)->Put(KeyOf(i), BlockKey{}, payload);
        if (!st.ok()) Die("put", st);
      }
    }
    // Reopen: every block is now indexed from flash.
    auto store = BlockStore::Open(o);
    if (!store.ok()) Die("reopen", store.status());
    StoreStats st = (*store)->Stats();
    const uint64_t n = st.tiers[2].blocks + st.tiers[1].blocks;
    nvme_per_block = static_cast<double>(st.index_bytes + st.nvme_index_bytes) / n;
  }
  std::filesystem::remove_all(dir + "/index");
  return {host_per_block, nvme_per_block};
}

// ---- hashing --------------------------------------------------------------------------------

double BenchHash(const Args& args, HashAlgorithm algorithm) {
  std::vector<uint32_t> tokens(128 * 1024);
  std::mt19937 rng(5);
  for (auto& t : tokens) t = rng() % 128256;
  KeyNamespace ns{.tenant_salt = "bench", .model_id = "llama",
                  .layout_fingerprint = KvLayout::Llama3_8B().Fingerprint()};
  auto hasher = ChainHasher::Create(ns, 16, algorithm);
  if (!hasher.ok()) Die("hasher", hasher.status());
  std::vector<BlockKey> keys;
  keys.reserve(tokens.size() / 16);
  std::vector<double> rates;
  const int rounds = args.quick ? 30 : 100;
  for (int r = 0; r < rounds; ++r) {
    keys.clear();
    double t0 = NowSeconds();
    hasher->AppendKeys(tokens, &keys);
    double t1 = NowSeconds();
    rates.push_back(tokens.size() / (t1 - t0));
  }
  return Median(rates);
}

// ---- trace replay: eviction policy vs LRU -------------------------------------------------

std::vector<std::vector<uint64_t>> LoadTrace(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "bench_store: cannot read trace %s (use --trace)\n", path.c_str());
    std::exit(1);
  }
  std::vector<std::vector<uint64_t>> requests;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    requests.push_back(nlohmann::json::parse(line)["hash_ids"].get<std::vector<uint64_t>>());
  }
  return requests;
}

class PlainLru {
 public:
  explicit PlainLru(size_t capacity) : capacity_(capacity) {}
  bool Contains(uint64_t id) const { return map_.contains(id); }
  void Touch(uint64_t id) { order_.splice(order_.begin(), order_, map_.at(id)); }
  void Insert(uint64_t id) {
    if (map_.contains(id)) return;
    if (map_.size() == capacity_) {
      map_.erase(order_.back());
      order_.pop_back();
    }
    order_.push_front(id);
    map_[id] = order_.begin();
  }

 private:
  size_t capacity_;
  std::list<uint64_t> order_;
  absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> map_;
};

double ReplayLru(const std::vector<std::vector<uint64_t>>& trace, size_t capacity) {
  PlainLru lru(capacity);
  uint64_t hits = 0, total = 0;
  for (const auto& req : trace) {
    size_t matched = 0;
    while (matched < req.size() && lru.Contains(req[matched])) ++matched;
    for (size_t i = 0; i < matched; ++i) lru.Touch(req[i]);
    for (size_t i = matched; i < req.size(); ++i) lru.Insert(req[i]);
    hits += matched;
    total += req.size();
  }
  return static_cast<double>(hits) / total;
}

struct ReplayFigures {
  double hit_rate;
  uint64_t nvme_bytes_written;
};

// The same procedure through the real store: Lookup, read the matched prefix, put the rest.
ReplayFigures ReplayStore(const std::vector<std::vector<uint64_t>>& trace, StoreOptions o,
                          size_t block_bytes) {
  auto store = BlockStore::Open(o);
  if (!store.ok()) Die("open replay store", store.status());
  BlockStore& s = **store;
  std::vector<uint8_t> payload(block_bytes, 1), out(block_bytes);
  uint64_t hits = 0, total = 0;
  std::vector<BlockKey> chain;
  for (const auto& req : trace) {
    chain.clear();
    for (uint64_t id : req) chain.push_back(KeyOf(id));
    const size_t matched = s.Lookup(chain).matched;
    size_t usable = matched;
    for (size_t i = 0; i < matched; ++i) {
      if (!s.Get(chain[i], std::span(out)).ok()) {
        usable = i;
        break;
      }
    }
    for (size_t i = usable; i < req.size(); ++i) {
      std::memcpy(payload.data(), &req[i], sizeof(uint64_t));
      absl::Status st = s.Put(chain[i], i ? chain[i - 1] : BlockKey{}, payload);
      if (!st.ok()) Die("replay put", st);
    }
    hits += usable;
    total += req.size();
  }
  return {static_cast<double>(hits) / total, s.Stats().nvme_bytes_written};
}

int Main(int argc, char** argv) {
  (void)InitLogging("warn");
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      args.quick = true;
    } else if (a == "--dir" && i + 1 < argc) {
      args.dir = argv[++i];
    } else if (a == "--trace" && i + 1 < argc) {
      args.trace = argv[++i];
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: bench_store [--quick] [--dir DIR] [--trace FILE]\n"
          "  --quick        smaller working sets and fewer rounds (under a minute)\n"
          "  --dir DIR      directory for the NVMe tier and the raw-disk baseline\n"
          "                 (default: a new directory under $TMPDIR or /tmp)\n"
          "  --trace FILE   Mooncake trace to replay (default: ../shared/data/mooncake/"
          "synthetic_trace.jsonl)\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_store: unknown argument '%s' (try --help)\n", a.c_str());
      return 2;
    }
  }
  std::unique_ptr<testing::TempDir> tmp;
  std::string dir = args.dir;
  if (dir.empty()) {
    tmp = std::make_unique<testing::TempDir>();
    dir = tmp->path();
  }
  Result result;
  const double t_start = NowSeconds();

  const HostFigures host = BenchHost(args);
  std::printf("host tier, 1 MiB blocks   get %6.2f GB/s  put %6.2f GB/s | memcpy get %6.2f  put %6.2f"
              " | get/memcpy %.2f\n",
              host.get_gbps, host.put_gbps, host.memcpy_get_gbps, host.memcpy_put_gbps,
              host.get_gbps / host.memcpy_get_gbps);
  result.Add("host_get_gbps", host.get_gbps);
  result.Add("host_put_gbps", host.put_gbps);
  result.Add("memcpy_gbps", host.memcpy_get_gbps);
  result.Add("memcpy_put_gbps", host.memcpy_put_gbps);
  result.Add("host_get_vs_memcpy", host.get_gbps / host.memcpy_get_gbps);
  result.Add("host_put_vs_memcpy", host.put_gbps / host.memcpy_put_gbps);

  const NvmeFigures nvme = BenchNvme(args, dir);
  std::printf("nvme tier, 1 MiB blocks   read %6.2f GB/s  write %6.2f GB/s | O_DIRECT read %6.2f"
              "  write %6.2f | read/raw %.2f  write/raw %.2f\n",
              nvme.read_gbps, nvme.write_gbps, nvme.raw_read_gbps, nvme.raw_write_gbps,
              nvme.read_gbps / nvme.raw_read_gbps, nvme.write_gbps / nvme.raw_write_gbps);
  result.Add("nvme_read_gbps", nvme.read_gbps);
  result.Add("nvme_write_gbps", nvme.write_gbps);
  result.Add("raw_read_gbps", nvme.raw_read_gbps);
  result.Add("raw_write_gbps", nvme.raw_write_gbps);
  result.Add("nvme_read_vs_raw", nvme.read_gbps / nvme.raw_read_gbps);
  result.Add("nvme_write_vs_raw", nvme.write_gbps / nvme.raw_write_gbps);
  std::printf("sync evictions            %.4f of the puts that needed room (NVMe write phase)\n",
              nvme.sync_eviction_share);
  result.Add("sync_eviction_share", nvme.sync_eviction_share);

  const LatencyFigures lat = BenchHitLatency(args, dir);
  std::printf("host get, 256 KiB blocks  p99 %.1f us (mean %.1f) | beside 50 ms flash appends: p99 "
              "%.1f us (mean %.1f, max %.0f; %llu puts, %llu demotions) | ratio %.2f\n",
              lat.p99_us, lat.mean_us, lat.p99_us_slow_flash, lat.mean_us_slow_flash,
              lat.max_us_slow_flash, static_cast<unsigned long long>(lat.puts_slow_flash),
              static_cast<unsigned long long>(lat.demotions_slow_flash),
              lat.p99_us_slow_flash / lat.p99_us);
  result.Add("host_get_p99_us", lat.p99_us);
  result.Add("host_get_p99_us_slow_flash", lat.p99_us_slow_flash);
  result.Add("host_get_p99_slow_flash_ratio", lat.p99_us_slow_flash / lat.p99_us);
  result.Add("host_get_max_us_slow_flash", lat.max_us_slow_flash);

  const auto [host_index, nvme_index] = BenchIndexBytes(args, dir);
  std::printf("index RAM per block       host-resident %.1f B  nvme-resident %.1f B\n", host_index,
              nvme_index);
  result.Add("index_bytes_per_block", std::max(host_index, nvme_index));
  result.Add("index_bytes_per_block_host", host_index);
  result.Add("index_bytes_per_block_nvme", nvme_index);

  const double xxh3 = BenchHash(args, HashAlgorithm::kXxh3_128);
  const double sha = BenchHash(args, HashAlgorithm::kSha256_128);
  std::printf("chain keys, 128K tokens   xxh3 %.3g tokens/s (%.2f ns/token)  sha256 %.3g tokens/s\n",
              xxh3, 1e9 / xxh3, sha);
  result.Add("hash_tokens_per_s", xxh3);
  result.Add("hash_sha256_tokens_per_s", sha);

  const auto trace = LoadTrace(args.trace);
  constexpr size_t kCapacity = 2000;
  constexpr size_t kReplayBlock = 256;
  StoreOptions ro;
  ro.host_bytes = kCapacity * kReplayBlock;
  ro.max_block_bytes = kReplayBlock;
  ro.host_hugepages = false;
  const double lru = ReplayLru(trace, kCapacity);
  const ReplayFigures policy = ReplayStore(trace, ro, kReplayBlock);
  std::printf("trace replay, %zu blocks   store policy hit rate %.4f | plain LRU %.4f\n", kCapacity,
              policy.hit_rate, lru);
  result.Add("policy_hit_rate", policy.hit_rate);
  result.Add("lru_hit_rate", lru);

  // Flash admission: host 2,000 blocks over an NVMe tier of 8,000, 4 KiB blocks.
  constexpr size_t kAdmBlock = 4096;
  StoreOptions ao;
  ao.host_bytes = kCapacity * kAdmBlock;
  ao.max_block_bytes = kAdmBlock;
  ao.host_hugepages = false;
  ao.nvme_bytes = 4 * kCapacity * kAdmBlock;
  ao.nvme_path = dir + "/admission-all";
  ao.nvme_admission = NvmeAdmission::kAll;
  const ReplayFigures all = ReplayStore(trace, ao, kAdmBlock);
  ao.nvme_path = dir + "/admission-seen-twice";
  ao.nvme_admission = NvmeAdmission::kSeenTwice;
  const ReplayFigures twice = ReplayStore(trace, ao, kAdmBlock);
  std::printf("nvme admission            all: hit rate %.4f, %.1f MiB written | seen-twice: hit "
              "rate %.4f, %.1f MiB written\n",
              all.hit_rate, all.nvme_bytes_written / 1048576.0, twice.hit_rate,
              twice.nvme_bytes_written / 1048576.0);
  result.Add("admission_all_hit_rate", all.hit_rate);
  result.Add("admission_all_nvme_mib", all.nvme_bytes_written / 1048576.0);
  result.Add("admission_seen_twice_hit_rate", twice.hit_rate);
  result.Add("admission_seen_twice_nvme_mib", twice.nvme_bytes_written / 1048576.0);
  result.Add("seconds", NowSeconds() - t_start);
  result.Print();
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
