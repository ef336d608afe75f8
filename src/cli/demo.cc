#include "cli/demo.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "cache/block_store.h"
#include "common/block_key.h"
#include "common/checksum.h"
#include "common/kv_layout.h"
#include "spdlog/spdlog.h"

namespace kvtier::cli {
namespace {

constexpr char kUsage[] = R"(usage: kvtier demo [options]

Replays the first requests of a Mooncake trace through one kvtier block store, the way an inference
engine uses it: compute the chained block keys of each prompt, Lookup how much of the prefix is
cached, read those blocks back (checksums verified), "prefill" the rest (deterministic KV bytes)
and Put them with their parent keys. Blocks spill from host RAM to the NVMe tier as RAM fills.
Then the store is closed and reopened from its NVMe directory, and the recovered blocks are
verified byte for byte.

options:
  --trace FILE      Mooncake-format trace (default: ../shared/data/mooncake/synthetic_trace.jsonl
                    next to the source tree)
  --requests N      requests to replay (default: all 3,993 of the shared trace)
  --data DIR        NVMe tier directory; kept afterwards (default: a temporary directory, removed)
  --host-mib N      host tier size in MiB (default: 256)
  --nvme-mib N      NVMe tier size in MiB (default: 2048)
  --admission P     NVMe admission: all | seen-twice (default: seen-twice)
  --json            print the summary as one JSON object instead of a table
  --help            this text

Block layout: GQA, bf16, 4 layers, 8 KV heads, head_dim 128, 16 tokens per block (256 KiB);
one trace block id becomes one kvtier block.
)";

struct Options {
  std::string trace = std::string(KVTIER_SOURCE_DIR) + "/../shared/data/mooncake/synthetic_trace.jsonl";
  size_t requests = SIZE_MAX;
  std::string data;
  size_t host_mib = 256;
  size_t nvme_mib = 2048;
  NvmeAdmission admission = NvmeAdmission::kSeenTwice;
  bool json = false;
};

int Usage(const char* error) {
  std::fprintf(stderr, "kvtier demo: %s\n\n%s", error, kUsage);
  return 2;
}

bool ParseSize(const char* s, size_t* out) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v == 0) return false;
  *out = v;
  return true;
}

KvLayout DemoLayout() {
  return KvLayout{.kind = LayoutKind::kGqa, .dtype = DType::kBf16, .layers = 4, .kv_heads = 8,
                  .head_dim = 128, .block_tokens = 16};
}

// The 16 tokens standing for trace block `id`: they depend on the id alone, so equal ids mean
// equal blocks and (as in the trace) equal prefixes.
void TokensOf(uint64_t id, std::vector<uint32_t>* tokens) {
  uint64_t x = id * 0x9E3779B97F4A7C15ULL + 1;
  for (uint32_t& t : *tokens) {
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    t = static_cast<uint32_t>(x % 128256);
  }
}

// Deterministic "prefill" output for a block: any reader can recompute and compare it.
void KvBytesOf(const BlockKey& key, std::vector<uint8_t>* out) {
  uint64_t x = key.lo ^ key.hi;
  for (size_t i = 0; i + 8 <= out->size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out->data() + i, &x, 8);
  }
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

int RunDemo(int argc, char** argv) {
  Options opt;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--json") {
      opt.json = true;
    } else if (a == "--trace") {
      const char* v = value();
      if (v == nullptr) return Usage("--trace needs a file");
      opt.trace = v;
    } else if (a == "--data") {
      const char* v = value();
      if (v == nullptr) return Usage("--data needs a directory");
      opt.data = v;
    } else if (a == "--requests") {
      const char* v = value();
      if (v == nullptr || !ParseSize(v, &opt.requests)) return Usage("--requests needs N > 0");
    } else if (a == "--host-mib") {
      const char* v = value();
      if (v == nullptr || !ParseSize(v, &opt.host_mib)) return Usage("--host-mib needs N > 0");
    } else if (a == "--nvme-mib") {
      const char* v = value();
      if (v == nullptr || !ParseSize(v, &opt.nvme_mib)) return Usage("--nvme-mib needs N > 0");
    } else if (a == "--admission") {
      const char* v = value();
      if (v != nullptr && std::strcmp(v, "all") == 0) {
        opt.admission = NvmeAdmission::kAll;
      } else if (v != nullptr && std::strcmp(v, "seen-twice") == 0) {
        opt.admission = NvmeAdmission::kSeenTwice;
      } else {
        return Usage("--admission is all or seen-twice");
      }
    } else {
      return Usage(("unknown option '" + a + "'").c_str());
    }
  }

  // Trace.
  std::ifstream in(opt.trace);
  if (!in) return Usage(("cannot read trace '" + opt.trace + "' (see --trace)").c_str());
  std::vector<std::vector<uint64_t>> requests;
  std::string line;
  while (requests.size() < opt.requests && std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      requests.push_back(nlohmann::json::parse(line).at("hash_ids").get<std::vector<uint64_t>>());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvtier demo: %s line %zu: %s\n", opt.trace.c_str(),
                   requests.size() + 1, e.what());
      return 1;
    }
  }

  // Store.
  bool remove_data = false;
  if (opt.data.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvtier-demo-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("kvtier demo: mkdtemp");
      return 1;
    }
    opt.data = tmpl;
    remove_data = true;
  }
  const KvLayout layout = DemoLayout();
  StoreOptions so;
  so.host_bytes = opt.host_mib << 20;
  so.max_block_bytes = layout.BytesPerBlock();
  so.nvme_path = opt.data;
  so.nvme_bytes = uint64_t{opt.nvme_mib} << 20;
  so.nvme_admission = opt.admission;
  auto hasher = ChainHasher::Create(
      KeyNamespace{.tenant_salt = "demo-tenant", .model_id = "demo-gqa-4l",
                   .layout_fingerprint = layout.Fingerprint()},
      layout.block_tokens);
  if (!hasher.ok()) {
    std::fprintf(stderr, "kvtier demo: %s\n", hasher.status().ToString().c_str());
    return 1;
  }

  if (!opt.json) {
    std::printf("kvtier demo: %zu requests from %s\n", requests.size(), opt.trace.c_str());
    std::printf("  layout %s, %llu KiB per block; host tier %zu MiB, NVMe tier %zu MiB in %s\n",
                layout.DebugString().c_str(),
                static_cast<unsigned long long>(layout.BytesPerBlock() >> 10), opt.host_mib,
                opt.nvme_mib, opt.data.c_str());
  }
  uint64_t blocks_total = 0, blocks_hit = 0, bytes_read = 0, bytes_put = 0, verify_failures = 0;
  double lookup_s = 0, read_s = 0, put_s = 0;
  const auto t_start = std::chrono::steady_clock::now();
  {
    auto opened = BlockStore::Open(so);
    if (!opened.ok()) {
      std::fprintf(stderr, "kvtier demo: %s\n", opened.status().ToString().c_str());
      return 1;
    }
    BlockStore& store = **opened;
    std::vector<uint32_t> tokens(layout.block_tokens);
    std::vector<uint32_t> prompt;
    std::vector<uint8_t> block(layout.BytesPerBlock()), expected(layout.BytesPerBlock());
    size_t window_start = 0;
    uint64_t window_blocks = 0, window_hit = 0;
    for (size_t r = 0; r < requests.size(); ++r) {
      prompt.clear();
      for (uint64_t id : requests[r]) {
        TokensOf(id, &tokens);
        prompt.insert(prompt.end(), tokens.begin(), tokens.end());
      }
      const std::vector<BlockKey> keys = hasher->Keys(prompt);
      auto t0 = std::chrono::steady_clock::now();
      const LookupResult found = store.Lookup(keys);
      lookup_s += Seconds(t0);

      t0 = std::chrono::steady_clock::now();
      size_t usable = found.matched;
      for (size_t i = 0; i < found.matched; ++i) {
        auto n = store.Get(keys[i], std::span(block));
        if (!n.ok()) {  // evicted since the lookup, or corrupt: recompute from here
          usable = i;
          break;
        }
        KvBytesOf(keys[i], &expected);
        if (block != expected) ++verify_failures;
        bytes_read += *n;
      }
      read_s += Seconds(t0);

      t0 = std::chrono::steady_clock::now();
      for (size_t i = usable; i < keys.size(); ++i) {
        KvBytesOf(keys[i], &block);  // stands in for prefill
        absl::Status st = store.Put(keys[i], i == 0 ? BlockKey{} : keys[i - 1], block,
                                    {.layout = &layout});
        if (!st.ok()) {
          std::fprintf(stderr, "kvtier demo: put: %s\n", st.ToString().c_str());
          return 1;
        }
        bytes_put += block.size();
      }
      put_s += Seconds(t0);
      blocks_total += keys.size();
      blocks_hit += usable;
      window_blocks += keys.size();
      window_hit += usable;
      if (!opt.json && ((r + 1) % 500 == 0 || r + 1 == requests.size())) {
        std::printf("  requests %4zu-%4zu: %6llu prompt blocks, %6llu from cache (hit rate %.3f)\n",
                    window_start, r, static_cast<unsigned long long>(window_blocks),
                    static_cast<unsigned long long>(window_hit),
                    window_blocks ? double(window_hit) / window_blocks : 0.0);
        window_start = r + 1;
        window_blocks = window_hit = 0;
      }
    }
    const StoreStats st = store.Stats();
    const double elapsed = Seconds(t_start);
    if (opt.json) {
      nlohmann::json j = {
          {"requests", requests.size()},
          {"blocks", blocks_total},
          {"blocks_hit", blocks_hit},
          {"hit_rate", blocks_total ? double(blocks_hit) / blocks_total : 0.0},
          {"bytes_read", bytes_read},
          {"bytes_put", bytes_put},
          {"verify_failures", verify_failures},
          {"host_blocks", st.tiers[1].blocks},
          {"nvme_blocks", st.tiers[2].blocks},
          {"demotions", st.demotions},
          {"promotions", st.promotions},
          {"evictions", st.evictions},
          {"nvme_admission_rejections", st.nvme_admission_rejections},
          {"nvme_bytes_written", st.nvme_bytes_written},
          {"checksum_failures", st.checksum_failures},
          {"seconds", elapsed}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("\nreplayed %zu requests in %.2f s\n", requests.size(), elapsed);
      std::printf("  prefix blocks: %llu of %llu served from cache (hit rate %.3f), %llu prefilled\n",
                  static_cast<unsigned long long>(blocks_hit),
                  static_cast<unsigned long long>(blocks_total),
                  blocks_total ? double(blocks_hit) / blocks_total : 0.0,
                  static_cast<unsigned long long>(blocks_total - blocks_hit));
      std::printf("  read %.1f MiB (%.2f GB/s, checksums verified, %llu mismatches), put %.1f MiB\n",
                  bytes_read / 1048576.0, read_s > 0 ? bytes_read / read_s / 1e9 : 0.0,
                  static_cast<unsigned long long>(verify_failures), bytes_put / 1048576.0);
      std::printf("  time in lookup %.3f s, reads %.3f s, puts %.3f s\n", lookup_s, read_s, put_s);
      std::printf("  host tier: %llu blocks, %.1f of %.1f MiB   NVMe tier: %llu blocks, %.1f MiB\n",
                  static_cast<unsigned long long>(st.tiers[1].blocks),
                  st.tiers[1].used_bytes / 1048576.0, st.tiers[1].capacity_bytes / 1048576.0,
                  static_cast<unsigned long long>(st.tiers[2].blocks),
                  st.tiers[2].used_bytes / 1048576.0);
      std::printf("  hits by tier: host %llu, NVMe %llu; demotions %llu, promotions %llu, "
                  "evictions %llu\n",
                  static_cast<unsigned long long>(st.tiers[1].hits),
                  static_cast<unsigned long long>(st.tiers[2].hits),
                  static_cast<unsigned long long>(st.demotions),
                  static_cast<unsigned long long>(st.promotions),
                  static_cast<unsigned long long>(st.evictions));
      std::printf("  NVMe admission (%s): %.1f MiB written, %llu blocks turned away\n",
                  NvmeAdmissionName(opt.admission), st.nvme_bytes_written / 1048576.0,
                  static_cast<unsigned long long>(st.nvme_admission_rejections));
    }
  }  // closing the store flushes the NVMe tier

  // Restart: everything on NVMe comes back and verifies.
  {
    auto t0 = std::chrono::steady_clock::now();
    so.host_bytes = 64 << 20;
    auto reopened = BlockStore::Open(so);
    if (!reopened.ok()) {
      std::fprintf(stderr, "kvtier demo: reopen: %s\n", reopened.status().ToString().c_str());
      return 1;
    }
    BlockStore& store = **reopened;
    const double open_s = Seconds(t0);
    // Re-derive each request's keys and read what survived.
    uint64_t recovered = 0, good = 0;
    std::vector<uint32_t> tokens(layout.block_tokens), prompt;
    std::vector<uint8_t> block(layout.BytesPerBlock()), expected(layout.BytesPerBlock());
    absl::flat_hash_set<BlockKey> seen;
    for (const auto& req : requests) {
      prompt.clear();
      for (uint64_t id : req) {
        TokensOf(id, &tokens);
        prompt.insert(prompt.end(), tokens.begin(), tokens.end());
      }
      for (const BlockKey& key : hasher->Keys(prompt)) {
        if (!seen.insert(key).second || !store.Stat(key).ok()) continue;
        ++recovered;
        auto n = store.Get(key, std::span(block));
        KvBytesOf(key, &expected);
        if (n.ok() && block == expected) ++good;
      }
    }
    if (!opt.json) {
      std::printf("\nrestarted from %s in %.3f s: %llu blocks recovered from NVMe, %llu verified "
                  "byte for byte\n",
                  opt.data.c_str(), open_s, static_cast<unsigned long long>(recovered),
                  static_cast<unsigned long long>(good));
    }
    if (good != recovered || verify_failures != 0) {
      std::fprintf(stderr, "kvtier demo: FAILED: %llu of %llu recovered blocks did not verify\n",
                   static_cast<unsigned long long>(recovered - good),
                   static_cast<unsigned long long>(recovered));
      return 1;
    }
  }
  if (remove_data) std::filesystem::remove_all(opt.data);
  return 0;
}

}  // namespace kvtier::cli
