#include "cli/remote.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "client/cache_client.h"
#include "common/block_key.h"
#include "common/kv_layout.h"

namespace kvtier::cli {
namespace {

constexpr char kUsage[] = R"(usage: kvtier <command> [options]

commands that talk to a kvtierd:
  put     --key HEX [--parent HEX] [--durable] FILE
          put FILE's bytes as one block; with several FILEs give --keys HEX,HEX,... instead of
          --key: the files form a chain in that order (each the parent of the next)
  get     --key HEX [--out FILE]        (or --keys HEX,HEX,... --out-dir DIR)
          fetch blocks; bytes go to FILE, DIR/<key>, or stdout for a single block
  lookup  --keys HEX,HEX,...            how many leading blocks of the chain are cached, and where
  delete  --keys HEX,HEX,...            remove blocks
  stats                                 the daemon's tiers and counters
computed locally:
  keys    --tokens 1,2,3,... [--model ID] [--tenant-salt S] [--adapter ID]
          [--layout small-gqa|small-mla|llama3-8b|deepseek-v3] [--block-tokens N]
          [--hash xxh3|sha256]
          the chained block keys of a token sequence (docs/block-keys.md)

common options:
  --addr HOST:PORT   daemon address [127.0.0.1:7700]
  --tenant NAME      key space [default]
  --timeout-ms N     per-attempt deadline [30000]
  --token TOKEN      bearer token of the tenant (daemons with auth on); or $KVTIER_TOKEN
  --tls-ca FILE      use TLS; FILE is the CA that signed the daemon's certificate
  --tls-cert FILE    client certificate for mutual TLS (with --tls-key)
  --tls-key FILE
  --json             machine-readable output
  --quiet            no progress on stderr
)";

int Fail(const std::string& msg) {
  std::fprintf(stderr, "kvtier: %s\n", msg.c_str());
  return 1;
}
int Usage(const std::string& msg) {
  std::fprintf(stderr, "kvtier: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

absl::StatusOr<std::vector<BlockKey>> ParseKeys(const std::string& csv) {
  std::vector<BlockKey> keys;
  for (absl::string_view part : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
    auto k = BlockKey::FromHex(std::string(part));
    if (!k.ok()) return k.status();
    keys.push_back(*k);
  }
  if (keys.empty()) return absl::InvalidArgumentError("no keys given");
  return keys;
}

absl::StatusOr<std::vector<BlockKey>> KeysFlag(const ParsedFlags& f) {
  if (f.values.contains("key") && f.values.contains("keys")) {
    return absl::InvalidArgumentError("give --key or --keys, not both");
  }
  if (f.values.contains("key")) return ParseKeys(f.Get("key"));
  if (f.values.contains("keys")) return ParseKeys(f.Get("keys"));
  return absl::InvalidArgumentError("--key or --keys is required");
}

bool ReadFile(const std::string& path, std::vector<uint8_t>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

bool WriteFile(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return static_cast<bool>(out);
}

// Progress on stderr for long operations, when stderr is a terminal and not --quiet/--json.
class Progress {
 public:
  Progress(const ParsedFlags& f, size_t total)
      : total_(total), on_(total > 1 && !f.Has("quiet") && !f.Has("json") && isatty(2)) {}
  void Step(size_t done, const char* what) {
    if (on_) std::fprintf(stderr, "\r%s %zu/%zu blocks", what, done, total_);
  }
  ~Progress() {
    if (on_) std::fprintf(stderr, "\n");
  }

 private:
  size_t total_;
  bool on_;
};

absl::StatusOr<KvLayout> NamedLayout(const std::string& name) {
  if (name == "small-gqa") return KvLayout::SmallGqa();
  if (name == "small-mla") return KvLayout::SmallMla();
  if (name == "llama3-8b") return KvLayout::Llama3_8B();
  if (name == "deepseek-v3") return KvLayout::DeepSeekV3();
  return absl::InvalidArgumentError("--layout: small-gqa, small-mla, llama3-8b or deepseek-v3");
}

int RunKeys(const ParsedFlags& f) {
  auto layout = NamedLayout(f.Get("layout", "llama3-8b"));
  if (!layout.ok()) return Usage(std::string(layout.status().message()));
  uint64_t block_tokens = layout->block_tokens;
  if (f.values.contains("block-tokens") &&
      (!absl::SimpleAtoi(f.Get("block-tokens"), &block_tokens) || block_tokens == 0)) {
    return Usage("--block-tokens: needs a number > 0");
  }
  layout->block_tokens = static_cast<uint32_t>(block_tokens);
  auto hash = ParseHashAlgorithm(f.Get("hash", "xxh3"));
  if (!hash.ok()) return Usage(std::string(hash.status().message()));
  std::vector<uint32_t> tokens;
  for (absl::string_view t : absl::StrSplit(f.Get("tokens"), ',', absl::SkipEmpty())) {
    uint32_t v = 0;
    if (!absl::SimpleAtoi(t, &v)) return Usage("--tokens: comma-separated uint32 token ids");
    tokens.push_back(v);
  }
  KeyNamespace ns{.tenant_salt = f.Get("tenant-salt"),
                  .model_id = f.Get("model"),
                  .layout_fingerprint = layout->Fingerprint(),
                  .adapter_id = f.Get("adapter")};
  auto hasher = ChainHasher::Create(ns, layout->block_tokens, *hash);
  if (!hasher.ok()) return Fail(hasher.status().ToString());
  const std::vector<BlockKey> keys = hasher->Keys(tokens);
  if (f.Has("json")) {
    nlohmann::json j = {{"root", hasher->root().Hex()}, {"keys", nlohmann::json::array()}};
    for (const BlockKey& k : keys) j["keys"].push_back(k.Hex());
    std::printf("%s\n", j.dump().c_str());
  } else {
    for (const BlockKey& k : keys) std::printf("%s\n", k.Hex().c_str());
    if (tokens.size() % layout->block_tokens != 0) {
      std::fprintf(stderr, "kvtier: %zu trailing tokens form a partial block (no key)\n",
                   tokens.size() % layout->block_tokens);
    }
  }
  return 0;
}

}  // namespace

bool IsRemoteCommand(const char* name) {
  for (const char* c : {"put", "get", "lookup", "delete", "stats", "keys"}) {
    if (std::strcmp(name, c) == 0) return true;
  }
  return false;
}

int RunRemote(int argc, char** argv) {
  const std::string cmd = argv[0];
  auto parsed = ParseFlags(argc - 1, argv + 1,
                           {"addr", "tenant", "timeout-ms", "key", "keys", "parent", "out",
                            "out-dir", "tokens", "model", "tenant-salt", "adapter", "layout",
                            "block-tokens", "hash", "token", "tls-ca", "tls-cert", "tls-key"},
                           {"json", "quiet", "durable", "help"});
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  const ParsedFlags& f = *parsed;
  if (f.Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "keys") return RunKeys(f);

  int64_t timeout_ms = 30'000;
  if (f.values.contains("timeout-ms") &&
      (!absl::SimpleAtoi(f.Get("timeout-ms"), &timeout_ms) || timeout_ms <= 0)) {
    return Usage("--timeout-ms: needs a number > 0");
  }
  ClientOptions co{.address = f.Get("addr", "127.0.0.1:7700"),
                   .tenant = f.Get("tenant", "default"),
                   .deadline_ms = timeout_ms};
  co.bearer_token = f.Get("token");
  if (co.bearer_token.empty() && std::getenv("KVTIER_TOKEN") != nullptr) {
    co.bearer_token = std::getenv("KVTIER_TOKEN");
  }
  for (auto [flag, pem] :
       {std::pair{"tls-ca", &co.tls_ca_pem}, std::pair{"tls-cert", &co.tls_cert_pem},
        std::pair{"tls-key", &co.tls_key_pem}}) {
    if (!f.values.contains(flag)) continue;
    std::vector<uint8_t> bytes;
    if (!ReadFile(f.Get(flag), &bytes))
      return Fail(std::string("--") + flag + ": cannot read " + f.Get(flag));
    pem->assign(bytes.begin(), bytes.end());
  }
  auto client = CacheClient::Create(co);
  if (!client.ok()) return Usage(std::string(client.status().message()));
  const bool json = f.Has("json");

  if (cmd == "stats") {
    auto st = (*client)->Stats();
    if (!st.ok()) return Fail(st.status().ToString());
    if (json) {
      nlohmann::json j = {{"gets", st->gets},
                          {"get_misses", st->get_misses},
                          {"lookups", st->lookups},
                          {"puts", st->puts},
                          {"evictions", st->evictions},
                          {"demotions", st->demotions},
                          {"promotions", st->promotions},
                          {"checksum_failures", st->checksum_failures},
                          {"leases_active", st->leases_active},
                          {"tiers", nlohmann::json::array()}};
      for (const RemoteTierStats& t : st->tiers) {
        j["tiers"].push_back({{"tier", TierName(t.tier)},
                              {"present", t.present},
                              {"capacity_bytes", t.capacity_bytes},
                              {"used_bytes", t.used_bytes},
                              {"blocks", t.blocks},
                              {"hits", t.hits}});
      }
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%-10s %8s %14s %14s %10s %10s\n", "tier", "present", "capacity MiB", "used MiB",
                  "blocks", "hits");
      for (const RemoteTierStats& t : st->tiers) {
        std::printf("%-10s %8s %14.1f %14.1f %10llu %10llu\n", TierName(t.tier),
                    t.present ? "yes" : "no", t.capacity_bytes / 1048576.0,
                    t.used_bytes / 1048576.0, static_cast<unsigned long long>(t.blocks),
                    static_cast<unsigned long long>(t.hits));
      }
      std::printf(
          "gets %llu (misses %llu), lookups %llu, puts %llu, evictions %llu, demotions "
          "%llu, promotions %llu, checksum failures %llu, leases %llu\n",
          (unsigned long long)st->gets, (unsigned long long)st->get_misses,
          (unsigned long long)st->lookups, (unsigned long long)st->puts,
          (unsigned long long)st->evictions, (unsigned long long)st->demotions,
          (unsigned long long)st->promotions, (unsigned long long)st->checksum_failures,
          (unsigned long long)st->leases_active);
    }
    return 0;
  }

  auto keys = KeysFlag(f);
  if (!keys.ok()) return Usage(std::string(keys.status().message()));

  if (cmd == "put") {
    if (f.positional.size() != keys->size()) {
      return Usage("put: give one FILE per key (" + std::to_string(keys->size()) + " keys, " +
                   std::to_string(f.positional.size()) + " files)");
    }
    BlockKey parent;
    if (f.values.contains("parent")) {
      auto p = BlockKey::FromHex(f.Get("parent"));
      if (!p.ok()) return Usage("--parent: " + std::string(p.status().message()));
      parent = *p;
    }
    std::vector<std::vector<uint8_t>> data(keys->size());
    std::vector<BlockToPut> blocks;
    for (size_t i = 0; i < keys->size(); ++i) {
      if (!ReadFile(f.positional[i], &data[i])) return Fail("cannot read " + f.positional[i]);
      blocks.push_back({(*keys)[i], i == 0 ? parent : (*keys)[i - 1], data[i]});
    }
    PutResult total;
    Progress progress(f, blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {  // one block a call, so progress can show
      auto r = (*client)->Put(std::span(blocks).subspan(i, 1), f.Has("durable"));
      if (!r.ok()) return Fail("put " + (*keys)[i].Hex() + ": " + r.status().ToString());
      total.stored += r->stored;
      total.present += r->present;
      progress.Step(i + 1, "put");
    }
    if (json) {
      std::printf(
          "%s\n",
          nlohmann::json({{"stored", total.stored}, {"present", total.present}}).dump().c_str());
    } else {
      std::printf("stored %u, already present %u\n", total.stored, total.present);
    }
    return 0;
  }

  if (cmd == "get") {
    if (keys->size() > 1 && !f.values.contains("out-dir")) {
      return Usage("get: several keys need --out-dir");
    }
    nlohmann::json j = nlohmann::json::array();
    size_t missing = 0;
    Progress progress(f, keys->size());
    for (size_t i = 0; i < keys->size(); ++i) {
      auto got = (*client)->Get(std::span(*keys).subspan(i, 1));
      if (!got.ok()) return Fail("get " + (*keys)[i].Hex() + ": " + got.status().ToString());
      const auto& block = (*got)[0];
      progress.Step(i + 1, "get");
      if (!block.has_value()) {
        ++missing;
        if (!json) std::fprintf(stderr, "kvtier: %s not found\n", (*keys)[i].Hex().c_str());
        j.push_back({{"key", (*keys)[i].Hex()}, {"found", false}});
        continue;
      }
      std::string path =
          f.values.contains("out-dir") ? f.Get("out-dir") + "/" + (*keys)[i].Hex() : f.Get("out");
      if (path.empty()) {
        std::fwrite(block->data(), 1, block->size(), stdout);
      } else if (!WriteFile(path, *block)) {
        return Fail("cannot write " + path);
      }
      j.push_back(
          {{"key", (*keys)[i].Hex()}, {"found", true}, {"bytes", block->size()}, {"path", path}});
    }
    if (json) std::printf("%s\n", j.dump().c_str());
    return missing == 0 ? 0 : 3;
  }

  if (cmd == "lookup") {
    auto r = (*client)->Lookup(*keys);
    if (!r.ok()) return Fail(r.status().ToString());
    std::vector<std::string_view> tiers;
    for (Tier t : r->tiers) tiers.push_back(TierName(t));
    if (json) {
      std::printf("%s\n", nlohmann::json(
                              {{"matched", r->matched}, {"of", keys->size()}, {"tiers", tiers}})
                              .dump()
                              .c_str());
    } else {
      std::printf("%zu of %zu leading blocks cached", r->matched, keys->size());
      for (std::string_view t : tiers) std::printf(" %.*s", static_cast<int>(t.size()), t.data());
      std::printf("\n");
    }
    return 0;
  }

  if (cmd == "delete") {
    auto n = (*client)->Delete(*keys);
    if (!n.ok()) return Fail(n.status().ToString());
    if (json) {
      std::printf("%s\n", nlohmann::json({{"deleted", *n}}).dump().c_str());
    } else {
      std::printf("deleted %u of %zu\n", *n, keys->size());
    }
    return 0;
  }
  return Usage("unknown command '" + cmd + "'");
}

}  // namespace kvtier::cli
