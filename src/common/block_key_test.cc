#include "common/block_key.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "common/kv_layout.h"

namespace kvtier {
namespace {

nlohmann::json LoadVectors() {
  std::ifstream in(std::string(KVTIER_SOURCE_DIR) + "/tests/data/block_keys.json");
  EXPECT_TRUE(in.good()) << "tests/data/block_keys.json is missing";
  return nlohmann::json::parse(in);
}

uint64_t ParseHex64(const std::string& hex) { return std::stoull(hex, nullptr, 16); }

TEST(BlockKeyVectors, EveryCaseMatchesBitForBit) {
  const nlohmann::json doc = LoadVectors();
  ASSERT_GE(doc["cases"].size(), 10u);
  for (const auto& c : doc["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    KeyNamespace ns;
    ns.tenant_salt = absl::HexStringToBytes(c["namespace"]["tenant_salt_hex"].get<std::string>());
    ns.model_id = c["namespace"]["model_id"];
    ns.layout_fingerprint = ParseHex64(c["namespace"]["layout_fingerprint"]);
    ns.adapter_id = c["namespace"]["adapter_id"];
    auto algorithm = ParseHashAlgorithm(c["hash"].get<std::string>());
    ASSERT_TRUE(algorithm.ok());
    const uint32_t block_tokens = c["block_tokens"];
    EXPECT_EQ(absl::BytesToHexString(ChainHasher::EncodeNamespace(ns, block_tokens, *algorithm)),
              c["namespace_bytes_hex"].get<std::string>());
    auto hasher = ChainHasher::Create(ns, block_tokens, *algorithm);
    ASSERT_TRUE(hasher.ok()) << hasher.status();
    EXPECT_EQ(hasher->root().Hex(), c["root"].get<std::string>());
    const std::vector<uint32_t> tokens = c["tokens"];
    const std::vector<BlockKey> keys = hasher->Keys(tokens);
    const std::vector<std::string> expected = c["keys"];
    ASSERT_EQ(keys.size(), expected.size());
    ASSERT_EQ(keys.size(), tokens.size() / block_tokens) << "only full blocks get keys";
    for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(keys[i].Hex(), expected[i]) << "block " << i;
  }
}

TEST(BlockKeyVectors, LayoutFingerprintsAndSizesMatch) {
  const nlohmann::json doc = LoadVectors();
  for (const auto& l : doc["layouts"]) {
    SCOPED_TRACE(l["name"].get<std::string>());
    KvLayout layout;
    layout.kind = l["kind"] == "gqa" ? LayoutKind::kGqa : LayoutKind::kMla;
    auto dtype = ParseDType(l["dtype"]);
    ASSERT_TRUE(dtype.ok());
    layout.dtype = *dtype;
    layout.layers = l["layers"];
    layout.kv_heads = l["kv_heads"];
    layout.head_dim = l["head_dim"];
    layout.block_tokens = l["block_tokens"];
    layout.latent_rank = l["latent_rank"];
    layout.rope_dim = l["rope_dim"];
    ASSERT_TRUE(layout.Validate().ok()) << layout.Validate();
    EXPECT_EQ(layout.BytesPerBlock(), l["bytes_per_block"].get<uint64_t>());
    EXPECT_EQ(layout.Fingerprint(), ParseHex64(l["fingerprint"]));
  }
}

ChainHasher MakeHasher(const std::string& salt, uint32_t block_tokens = 16,
                       HashAlgorithm algorithm = HashAlgorithm::kXxh3_128) {
  KeyNamespace ns{.tenant_salt = salt, .model_id = "m",
                  .layout_fingerprint = KvLayout::SmallGqa().Fingerprint()};
  return *ChainHasher::Create(ns, block_tokens, algorithm);
}

TEST(ChainHasher, KeyNamesTheWholePrefix) {
  ChainHasher h = MakeHasher("t");
  std::vector<uint32_t> a(64), b(64);
  for (uint32_t i = 0; i < 64; ++i) a[i] = b[i] = i;
  b[3] = 999;  // differs in block 0 only
  auto ka = h.Keys(a), kb = h.Keys(b);
  ASSERT_EQ(ka.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NE(ka[i], kb[i]) << "a change in block 0 changes every later key";
  // Same first two blocks, different third: first two keys equal.
  std::vector<uint32_t> c = a;
  c[40] = 7;
  auto kc = h.Keys(c);
  EXPECT_EQ(ka[0], kc[0]);
  EXPECT_EQ(ka[1], kc[1]);
  EXPECT_NE(ka[2], kc[2]);
  // Next() chains the same way as Keys().
  EXPECT_EQ(h.Next(h.root(), std::span<const uint32_t>(a).first(16)), ka[0]);
  EXPECT_EQ(h.Next(ka[0], std::span<const uint32_t>(a).subspan(16, 16)), ka[1]);
}

TEST(ChainHasher, PartialTailHasNoKey) {
  ChainHasher h = MakeHasher("t");
  std::vector<uint32_t> tokens(47, 5);
  EXPECT_EQ(h.Keys(tokens).size(), 2u);
  EXPECT_TRUE(h.Keys({}).empty());
}

TEST(ChainHasher, NamespacesAndAlgorithmsSeparateKeySpaces) {
  std::vector<uint32_t> tokens(16, 1);
  const BlockKey a = MakeHasher("tenant-a").Keys(tokens)[0];
  const BlockKey b = MakeHasher("tenant-b").Keys(tokens)[0];
  const BlockKey sha = MakeHasher("tenant-a", 16, HashAlgorithm::kSha256_128).Keys(tokens)[0];
  EXPECT_NE(a, b);
  EXPECT_NE(a, sha);
  std::vector<uint32_t> tokens8(16, 1);
  EXPECT_NE(MakeHasher("tenant-a", 8).Keys(tokens8)[0], a) << "block size is part of the namespace";
}

TEST(ChainHasher, LongBlocksUseTheHeapPathIdentically) {
  ChainHasher h = MakeHasher("t", 1000);
  std::vector<uint32_t> tokens(2500);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i * 2654435761u);
  auto keys = h.Keys(tokens);
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(h.Next(keys[0], std::span<const uint32_t>(tokens).subspan(1000, 1000)), keys[1]);
}

TEST(ChainHasher, RejectsBadArguments) {
  EXPECT_EQ(ChainHasher::Create({}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  KeyNamespace big{.model_id = std::string(70'000, 'x')};
  EXPECT_EQ(ChainHasher::Create(big, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseHashAlgorithm("md5").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BlockKey, HexAndBytesRoundTrip) {
  BlockKey k{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(k.Hex(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(*BlockKey::FromHex(k.Hex()), k);
  EXPECT_EQ(*BlockKey::FromHex("0123456789ABCDEFFEDCBA9876543210"), k);
  EXPECT_EQ(*BlockKey::FromByteString(k.ByteString()), k);
  EXPECT_EQ(BlockKey::FromHex("0123").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKey::FromHex("0123456789abcdeffedcba987654321g").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockKey::FromByteString("short").status().code(), absl::StatusCode::kInvalidArgument);
}

// Daemons store blocks under these keys (NVMe keeps them across restarts): the derivation is
// fixed, whichever way it is computed.
TEST(BlockKey, TenantKeysAreFixedAndTheKeyerAgrees) {
  const BlockKey k{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(TenantKey("tenant-a", k).Hex(), "d2908f0318827b1995b00e97a7e85e03");
  EXPECT_NE(TenantKey("tenant-a", k), TenantKey("tenant-b", k));
  EXPECT_EQ(TenantKey("tenant-a", BlockKey{}), BlockKey{}) << "no parent stays no parent";
  for (std::string tenant : {std::string(), std::string("t"), std::string(300, 'x')}) {
    TenantKeyer keyer(tenant);
    for (uint64_t i = 0; i < 50; ++i) {
      const BlockKey key{i * 0x9e3779b97f4a7c15ULL, i};
      EXPECT_EQ(keyer(key), TenantKey(tenant, key)) << tenant.size() << " " << i;
      uint8_t bytes[BlockKey::kBytes];
      key.ToBytes(bytes);
      EXPECT_EQ(keyer.FromBytes(bytes), TenantKey(tenant, key)) << tenant.size() << " " << i;
    }
    const uint8_t zero[BlockKey::kBytes] = {};
    EXPECT_EQ(keyer.FromBytes(zero), BlockKey{}) << "no parent stays no parent";
  }
}

}  // namespace
}  // namespace kvtier
