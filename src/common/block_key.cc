#include "common/block_key.h"

#include <openssl/sha.h>
// Inlined: most keys hash under 128 bytes (a tenant key is about 40), where the library call
// costs as much as the hash.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <bit>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/internal/le_bytes.h"

namespace kvtier {
namespace {

uint64_t LoadBe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

void StoreBe64(uint64_t v, uint8_t* p) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v & 0xff);
    v >>= 8;
  }
}

constexpr size_t kMaxNamespaceField = 64 * 1024;

}  // namespace

BlockKey BlockKey::FromBytes(const uint8_t* bytes) {
  return BlockKey{LoadBe64(bytes), LoadBe64(bytes + 8)};
}

absl::StatusOr<BlockKey> BlockKey::FromByteString(std::string_view bytes) {
  if (bytes.size() != kBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("block key must be 16 bytes, got ", bytes.size()));
  }
  return FromBytes(reinterpret_cast<const uint8_t*>(bytes.data()));
}

absl::StatusOr<BlockKey> BlockKey::FromHex(std::string_view hex) {
  if (hex.size() != 2 * kBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("block key must be 32 hex digits, got ", hex.size(), " characters"));
  }
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat("block key: '", std::string(1, c),
                                                     "' is not a hex digit"));
    }
  }
  return FromByteString(absl::HexStringToBytes(std::string(hex)));
}

void BlockKey::ToBytes(uint8_t* out) const {
  StoreBe64(hi, out);
  StoreBe64(lo, out + 8);
}

std::string BlockKey::ByteString() const {
  std::string s(kBytes, '\0');
  ToBytes(reinterpret_cast<uint8_t*>(s.data()));
  return s;
}

std::string BlockKey::Hex() const { return absl::BytesToHexString(ByteString()); }

const char* HashAlgorithmName(HashAlgorithm algorithm) {
  switch (algorithm) {
    case HashAlgorithm::kXxh3_128:
      return "xxh3";
    case HashAlgorithm::kSha256_128:
      return "sha256";
  }
  return "invalid";
}

absl::StatusOr<HashAlgorithm> ParseHashAlgorithm(std::string_view name) {
  if (name == "xxh3" || name == "xxh3-128") return HashAlgorithm::kXxh3_128;
  if (name == "sha256" || name == "sha256-128") return HashAlgorithm::kSha256_128;
  return absl::InvalidArgumentError(
      absl::StrCat("hash: unknown algorithm '", std::string(name), "' (expected xxh3 or sha256)"));
}

std::string ChainHasher::EncodeNamespace(const KeyNamespace& ns, uint32_t block_tokens,
                                         HashAlgorithm algorithm) {
  internal::LeWriter w;
  w.Raw("KVTIER/NS/1");
  w.U8(static_cast<uint8_t>(algorithm));
  w.U32(block_tokens);
  w.Bytes(ns.tenant_salt);
  w.Bytes(ns.model_id);
  w.U64(ns.layout_fingerprint);
  w.Bytes(ns.adapter_id);
  return w.str();
}

absl::StatusOr<ChainHasher> ChainHasher::Create(const KeyNamespace& ns, uint32_t block_tokens,
                                                HashAlgorithm algorithm) {
  if (block_tokens == 0) return absl::InvalidArgumentError("block_tokens: must be > 0");
  if (algorithm != HashAlgorithm::kXxh3_128 && algorithm != HashAlgorithm::kSha256_128) {
    return absl::InvalidArgumentError("hash: unknown algorithm");
  }
  for (const std::string* field : {&ns.tenant_salt, &ns.model_id, &ns.adapter_id}) {
    if (field->size() > kMaxNamespaceField) {
      return absl::InvalidArgumentError(
          absl::StrCat("namespace: a field is longer than ", kMaxNamespaceField, " bytes"));
    }
  }
  ChainHasher hasher(BlockKey{}, block_tokens, algorithm);
  const std::string encoded = EncodeNamespace(ns, block_tokens, algorithm);
  hasher.root_ = hasher.Hash(encoded.data(), encoded.size());
  return hasher;
}

BlockKey ChainHasher::Hash(const void* data, size_t size) const {
  if (algorithm_ == HashAlgorithm::kXxh3_128) {
    XXH128_hash_t h = XXH3_128bits_withSeed(data, size, kXxh3Seed);
    return BlockKey{h.high64, h.low64};
  }
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(static_cast<const uint8_t*>(data), size, digest);
  return BlockKey::FromBytes(digest);
}

BlockKey ChainHasher::Next(const BlockKey& parent, std::span<const uint32_t> tokens) const {
  static_assert(std::endian::native == std::endian::little,
                "token bytes are copied as-is: port the encoding for big-endian hosts");
  // 16 key bytes + 4 bytes per token. Common block sizes fit on the stack.
  constexpr size_t kStackTokens = 256;
  uint8_t stack_buf[BlockKey::kBytes + 4 * kStackTokens];
  std::vector<uint8_t> heap_buf;
  uint8_t* buf = stack_buf;
  const size_t size = BlockKey::kBytes + 4 * tokens.size();
  if (tokens.size() > kStackTokens) {
    heap_buf.resize(size);
    buf = heap_buf.data();
  }
  parent.ToBytes(buf);
  std::memcpy(buf + BlockKey::kBytes, tokens.data(), 4 * tokens.size());
  return Hash(buf, size);
}

void ChainHasher::AppendKeys(std::span<const uint32_t> tokens, std::vector<BlockKey>* out) const {
  const size_t blocks = tokens.size() / block_tokens_;
  out->reserve(out->size() + blocks);
  BlockKey key = root_;
  for (size_t i = 0; i < blocks; ++i) {
    key = Next(key, tokens.subspan(i * block_tokens_, block_tokens_));
    out->push_back(key);
  }
}

std::vector<BlockKey> ChainHasher::Keys(std::span<const uint32_t> tokens) const {
  std::vector<BlockKey> keys;
  AppendKeys(tokens, &keys);
  return keys;
}

std::string PackKeys(std::span<const BlockKey> keys) {
  std::string out(keys.size() * BlockKey::kBytes, '\0');
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i].ToBytes(reinterpret_cast<uint8_t*>(out.data()) + i * BlockKey::kBytes);
  }
  return out;
}

BlockKey TenantKey(std::string_view tenant, const BlockKey& key) {
  return TenantKeyer(tenant)(key);
}

TenantKeyer::TenantKeyer(std::string_view tenant) {
  internal::LeWriter w;
  w.Raw("KVTIER/TENANT/1");
  w.Bytes(tenant);
  buf_ = w.str();
  buf_.resize(buf_.size() + BlockKey::kBytes);
}

BlockKey TenantKeyer::operator()(const BlockKey& key) {
  if (key.IsZero()) return key;
  key.ToBytes(reinterpret_cast<uint8_t*>(buf_.data() + buf_.size() - BlockKey::kBytes));
  return HashBuffer();
}

BlockKey TenantKeyer::FromBytes(const uint8_t* key_bytes) {
  char* const key = buf_.data() + buf_.size() - BlockKey::kBytes;
  std::memcpy(key, key_bytes, BlockKey::kBytes);
  uint64_t words[2];
  std::memcpy(words, key, sizeof(words));
  if ((words[0] | words[1]) == 0) return BlockKey{};
  return HashBuffer();
}

BlockKey TenantKeyer::HashBuffer() const {
  const XXH128_hash_t h = XXH3_128bits_withSeed(buf_.data(), buf_.size(), kXxh3Seed);
  return BlockKey{h.high64, h.low64};
}

}  // namespace kvtier
