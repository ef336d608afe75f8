// Writes the seed corpora of the fuzz targets: valid inputs made from real messages, and near
// misses of each rule the parsers check. `fuzz_seeds DIR` writes DIR/<target>/<name> (the repo's
// are fuzz/corpus/<target>/; files already there with other names are left alone).

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/block_key.h"
#include "common/checksum.h"
#include "common/kv_layout.h"
#include "common/layout_proto.h"
#include "fuzz/fuzz_util.h"
#include "kvtier/v1/cache.pb.h"

namespace kvtier::fuzz {
namespace {

std::filesystem::path out_dir;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const auto dir = out_dir / target;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

BlockKey Key(uint64_t n) { return BlockKey{0x6b76746965720000ULL, n}; }

std::string Payload(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7);
  return s;
}

std::string Header(const std::string& tenant, uint64_t key, uint64_t parent, uint64_t size,
                   const std::string& data = "", bool checksum = false) {
  v1::PutRequest m;
  m.set_tenant(tenant);
  m.mutable_header()->set_key(Key(key).ByteString());
  if (parent != 0) m.mutable_header()->set_parent(Key(parent).ByteString());
  m.mutable_header()->set_size(size);
  if (checksum) {
    const std::string full = Payload(size, static_cast<char>(key));
    m.mutable_header()->set_checksum(
        Checksum(reinterpret_cast<const uint8_t*>(full.data()), full.size()));
  }
  m.set_data(data);
  return Frame(m.SerializeAsString());
}

std::string Data(const std::string& data) {
  v1::PutRequest m;
  m.set_data(data);
  return Frame(m.SerializeAsString());
}

void PutStreamSeeds() {
  const std::string t = "put_stream_fuzzer";
  const std::string p1 = Payload(64, 1), p2 = Payload(64, 2);
  Write(t, "one_block", Header("tenant-a", 1, 0, 64, p1));
  Write(t, "chunks",
        Header("tenant-a", 1, 0, 64, p1.substr(0, 10)) + Data(p1.substr(10, 30)) +
            Data(p1.substr(40)));
  Write(t, "chain_checksums",
        Header("tenant-a", 1, 0, 64, p1, true) + Header("", 2, 1, 64, p2, true));
  Write(t, "same_block_twice", Header("t", 1, 0, 64, p1) + Header("t", 1, 0, 64, p1));
  {
    // A layout of 32-byte blocks: fp8, one layer, one kv head of dim 4, 4 tokens.
    v1::PutRequest m;
    m.set_tenant("t");
    LayoutToProto(KvLayout{.kind = LayoutKind::kGqa,
                           .dtype = DType::kFp8E4M3,
                           .layers = 1,
                           .kv_heads = 1,
                           .head_dim = 4,
                           .block_tokens = 4},
                  m.mutable_layout());
    m.mutable_header()->set_key(Key(1).ByteString());
    m.mutable_header()->set_size(32);
    m.set_data(Payload(32, 3));
    Write(t, "layout", Frame(m.SerializeAsString()) + Header("", 2, 1, 32, Payload(32, 4)));
    Write(t, "layout_mismatch", Frame(m.SerializeAsString()) + Header("", 2, 1, 64, p2));
  }
  // Near misses.
  v1::PutRequest bad_sum;
  bad_sum.set_tenant("t");
  bad_sum.mutable_header()->set_key(Key(1).ByteString());
  bad_sum.mutable_header()->set_size(64);
  bad_sum.mutable_header()->set_checksum(12345);
  bad_sum.set_data(p1);
  Write(t, "bad_checksum", Frame(bad_sum.SerializeAsString()));
  Write(t, "ends_inside_block", Header("t", 1, 0, 64, p1.substr(0, 20)));
  Write(t, "header_inside_block", Header("t", 1, 0, 64, p1.substr(0, 20)) + Header("t", 2, 1, 64));
  Write(t, "data_first", Data(p1) + Header("t", 1, 0, 64, p1));
  Write(t, "tenant_changes", Header("t", 1, 0, 64, p1) + Header("u", 2, 1, 64, p2));
  Write(t, "no_tenant", Header("", 1, 0, 64, p1));
  Write(t, "too_much_data", Header("t", 1, 0, 16, p1));
  Write(t, "size_zero", Header("t", 1, 0, 0));
  Write(t, "too_large", Header("t", 1, 0, uint64_t{1} << 40, p1));
  Write(t, "key_is_parent", Header("t", 1, 1, 64, p1));
  Write(t, "zero_key", Header("t", 0, 0, 64, p1));
  {
    v1::PutRequest m;
    m.set_tenant("t");
    m.mutable_header()->set_key(Key(1).ByteString().substr(1));
    m.mutable_header()->set_size(64);
    Write(t, "short_key", Frame(m.SerializeAsString()));
    m.mutable_header()->set_key(Key(1).ByteString());
    m.mutable_header()->set_durable(true);
    m.set_data(p1);
    Write(t, "durable", Frame(m.SerializeAsString()));
  }
  Write(t, "not_a_message", Header("t", 1, 0, 64, p1.substr(0, 8)) + Frame("\xff\xff\xff"));
  Write(t, "tenant_not_utf8", Frame([] {
          v1::PutRequest m;
          m.set_tenant("t\xff\xfe");
          return m.SerializeAsString();
        }()));
}

std::string Mode(uint8_t mode, const std::string& rest) {
  return std::string(1, static_cast<char>(mode)) + rest;
}

void KeyLayoutSeeds() {
  const std::string t = "key_layout_fuzzer";
  Write(t, "key_bytes", Mode(0, Key(7).ByteString()));
  Write(t, "key_bytes_short", Mode(0, Key(7).ByteString().substr(1)));
  Write(t, "key_hex", Mode(1, Key(7).Hex()));
  Write(t, "key_hex_upper", Mode(1, "6B76746965720000000000000000000A"));
  Write(t, "key_hex_bad_digit", Mode(1, "6b7674696572000000000000000000g7"));
  Write(t, "key_hex_short", Mode(1, Key(7).Hex().substr(1)));
  const std::vector<std::pair<std::string, KvLayout>> layouts = {
      {"llama3_8b", KvLayout::Llama3_8B()},
      {"deepseek_v3", KvLayout::DeepSeekV3()},
      {"small_gqa", KvLayout::SmallGqa()},
      {"small_mla", KvLayout::SmallMla()}};
  for (const auto& [name, l] : layouts) {
    v1::KvLayout p;
    LayoutToProto(l, &p);
    Write(t, "layout_" + name, Mode(2, p.SerializeAsString()));
    std::string raw;
    raw.push_back(static_cast<char>(l.kind));
    raw.push_back(static_cast<char>(l.dtype));
    for (uint32_t v :
         {l.layers, l.kv_heads, l.head_dim, l.block_tokens, l.latent_rank, l.rope_dim}) {
      raw.append(reinterpret_cast<const char*>(&v), 4);
    }
    Write(t, "raw_" + name, Mode(3, raw));
  }
  {
    v1::KvLayout p;
    LayoutToProto(KvLayout::SmallGqa(), &p);
    p.set_kind(v1::LAYOUT_KIND_UNSPECIFIED);
    Write(t, "layout_no_kind", Mode(2, p.SerializeAsString()));
    LayoutToProto(KvLayout::SmallGqa(), &p);
    p.set_head_dim(1u << 31);
    p.set_kv_heads(1u << 31);
    Write(t, "layout_huge", Mode(2, p.SerializeAsString()));
  }
  for (const char* name :
       {"xxh3", "xxh3-128", "sha256", "fp16", "bf16", "fp8-e4m3", "fp8", "md5"}) {
    Write(t, std::string("name_") + name, Mode(4, name));
  }
  {
    // FuzzedDataProvider takes strings from the front (each ends at a backslash and the byte
    // after it) and integers from the back: layout fingerprint (8 bytes), block tokens (2: 16),
    // algorithm (1: xxh3), then the tokens.
    std::string chain = "tenant-salt\\;model\\;adapter\\;";
    for (uint32_t tok = 0; tok < 64; ++tok) chain.append(reinterpret_cast<const char*>(&tok), 4);
    chain += std::string{'\x01', '\x10', '\x00'} + std::string(8, '\x2a');
    Write(t, "chain", Mode(5, chain));
  }
}

// The config file, then flags: NUL-separated.
std::string Args(const std::vector<std::string>& pieces) {
  std::string out;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (i > 0) out.push_back('\0');
    out += pieces[i];
  }
  return out;
}

void ConfigSeeds() {
  const std::string t = "config_fuzzer";
  std::ifstream example(std::string(KVTIER_SOURCE_DIR) + "/docs/kvtierd.example.yaml");
  Write(t, "example", std::string(std::istreambuf_iterator<char>(example), {}));
  Write(t, "small", "listen: 127.0.0.1:0\nstore:\n  host_mib: 64\n  nvme:\n    path: \"\"\n");
  Write(t, "unix", "listen: unix:/run/kvtier/kvtierd.sock\nucx:\n  listen: off\n");
  Write(t, "tls", "tls:\n  cert: a.pem\n  key: a.key\n  client_ca: ca.pem\n");
  Write(t, "tls_key_missing", "tls:\n  cert: a.pem\n");
  Write(t, "auth", "auth:\n  tokens_file: /etc/kvtier/tokens.yaml\nlog_format: json\n");
  Write(t, "limits",
        "limits:\n  max_inflight_mib: 1\n  max_inflight_mib_per_connection: 1\n"
        "  max_keys_per_request: 16\nmax_message_mib: 2047\n");
  Write(t, "leases", "store:\n  lease_ttl_ms: 1000\n  max_lease_ttl_ms: 999\n");
  Write(t, "unknown_key", "store:\n  hostmib: 64\n");
  Write(t, "not_a_map", "- listen\n- 127.0.0.1:0\n");
  Write(t, "sequence_value", "listen: [a, b]\n");
  Write(t, "null_value", "metrics_listen:\n");
  Write(t, "bad_number", "store:\n  host_mib: 18446744073709551615\n");
  Write(t, "bad_bool", "store:\n  hugepages: maybe\n");
  Write(t, "anchors", "a: &x {listen: 127.0.0.1:1}\nstore: *x\n");
  Write(t, "flags",
        Args({"listen: 127.0.0.1:0", "--host-mib", "64", "--no-nvme", "--admission=all"}));
  Write(t, "flags_only", Args({"", "--listen", "127.0.0.1:0", "--mlock", "off"}));
  Write(t, "flag_without_value", Args({"", "--hbm-device"}));
  Write(t, "help", Args({"", "--help"}));
}

void TokenFileSeeds() {
  const std::string t = "token_file_fuzzer";
  Write(t, "two_tenants", "alice: 0123456789abcdef0123\nbob: fedcba9876543210fedc\n");
  Write(t, "quoted", "\"tenant a\": \"token with spaces 1234\"\n");
  Write(t, "short_token", "alice: short\n");
  Write(t, "same_token", "alice: 0123456789abcdef\nbob: 0123456789abcdef\n");
  Write(t, "empty", "");
  Write(t, "list", "- alice\n- bob\n");
  Write(t, "nested", "alice:\n  token: 0123456789abcdef\n");
  Write(t, "key_is_map", "? {a: b}\n: 0123456789abcdef\n");
  Write(t, "flow", "{alice: 0123456789abcdef0123, bob: fedcba9876543210fedc}\n");
}

template <typename Request>
std::string RequestSeed(uint8_t which, uint8_t max_keys, const Request& r) {
  return std::string{static_cast<char>(which), static_cast<char>(max_keys)} + r.SerializeAsString();
}

void RequestSeeds() {
  const std::string t = "request_fuzzer";
  std::vector<BlockKey> chain;
  for (uint64_t i = 1; i <= 20; ++i) chain.push_back(Key(i));
  v1::GetRequest get;
  get.set_tenant("tenant-a");
  for (int i = 0; i < 3; ++i) get.add_keys(chain[i].ByteString());
  Write(t, "get_keys", RequestSeed(0, 64, get));
  get.set_client_verifies(true);
  get.add_keys(BlockKey{}.ByteString());
  Write(t, "get_keys_zero", RequestSeed(0, 64, get));
  get.add_keys("fifteen bytes!!");
  Write(t, "get_short_key", RequestSeed(0, 64, get));
  v1::GetRequest packed;
  packed.set_tenant("tenant-a");
  packed.set_packed_keys(PackKeys(chain));
  Write(t, "get_packed", RequestSeed(0, 64, packed));
  Write(t, "get_over_limit", RequestSeed(0, 8, packed));
  packed.add_keys(chain[0].ByteString());
  Write(t, "get_both_forms", RequestSeed(0, 64, packed));
  packed.clear_keys();
  packed.set_packed_keys(PackKeys(chain).substr(1));
  Write(t, "get_packed_ragged", RequestSeed(0, 64, packed));
  v1::LeaseRequest lease;
  lease.set_tenant("t");
  lease.set_packed_keys(PackKeys(std::span(chain).first(4)));
  lease.set_ttl_ms(4'294'967'295u);
  Write(t, "lease_packed", RequestSeed(1, 64, lease));
  lease.clear_packed_keys();
  lease.add_keys(chain[0].ByteString());
  lease.set_ttl_ms(0);
  Write(t, "lease_keys", RequestSeed(1, 64, lease));
  lease.set_tenant("");
  Write(t, "lease_no_tenant", RequestSeed(1, 64, lease));
  v1::LookupRequest lookup;
  lookup.set_tenant("t");
  lookup.set_packed_keys(PackKeys(chain));
  Write(t, "lookup_packed", RequestSeed(2, 255, lookup));
  v1::DeleteRequest del;
  del.set_tenant(std::string(256, 'x'));
  del.add_keys(chain[5].ByteString());
  Write(t, "delete_long_tenant", RequestSeed(3, 1, del));
  Write(t, "empty_get", RequestSeed(0, 0, v1::GetRequest()));
}

}  // namespace
}  // namespace kvtier::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_seeds DIR   (writes DIR/<target>/...)\n";
    return 2;
  }
  kvtier::fuzz::out_dir = argv[1];
  kvtier::fuzz::PutStreamSeeds();
  kvtier::fuzz::KeyLayoutSeeds();
  kvtier::fuzz::ConfigSeeds();
  kvtier::fuzz::TokenFileSeeds();
  kvtier::fuzz::RequestSeeds();
  return 0;
}
