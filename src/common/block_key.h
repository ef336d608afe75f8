#pragma once
// Chained prefix keys (docs/block-keys.md is the normative description):
//   K_{-1} = H(canonical namespace bytes)
//   K_i    = H(K_{i-1} as 16 bytes || tokens of block i as uint32 little-endian)
// A key names the whole prefix up to and including its block, so equal keys mean equal prefixes
// (within one namespace). Only full blocks get keys; a partial tail is never cached.
//
// BlockKey is a plain value. ChainHasher is immutable after Create and safe to share between
// threads.

#include <compare>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier {

// 128-bit block key. Its byte form is hi (big-endian) followed by lo (big-endian): the canonical
// XXH128 byte order, and the first 16 bytes of a SHA-256 digest.
struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  static constexpr size_t kBytes = 16;

  static BlockKey FromBytes(const uint8_t* bytes);
  // Exactly 16 bytes, else INVALID_ARGUMENT.
  static absl::StatusOr<BlockKey> FromByteString(std::string_view bytes);
  // Exactly 32 hex digits (either case), else INVALID_ARGUMENT.
  static absl::StatusOr<BlockKey> FromHex(std::string_view hex);
  void ToBytes(uint8_t* out) const;
  std::string ByteString() const;
  std::string Hex() const;  // 32 lowercase hex digits

  bool IsZero() const { return hi == 0 && lo == 0; }
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend auto operator<=>(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    // Keys are already uniform hashes: mixing one word is enough.
    return H::combine(std::move(h), k.lo);
  }
};

enum class HashAlgorithm : uint8_t {
  kXxh3_128 = 1,    // XXH3-128, seed kXxh3Seed. Default: fast, not collision resistant.
  kSha256_128 = 2,  // SHA-256 truncated to 128 bits: for deployments where users craft inputs.
};
const char* HashAlgorithmName(HashAlgorithm algorithm);
absl::StatusOr<HashAlgorithm> ParseHashAlgorithm(std::string_view name);  // "xxh3", "sha256"

// "KVTIER01" read as a big-endian integer.
inline constexpr uint64_t kXxh3Seed = 0x4B56544945523031ULL;

// What besides tokens decides whether cached KV may be reused.
struct KeyNamespace {
  std::string tenant_salt;          // per-tenant bytes; different salts never share keys
  std::string model_id;             // model name and revision
  uint64_t layout_fingerprint = 0;  // KvLayout::Fingerprint()
  std::string adapter_id;           // empty for the base model
};

// Keys back to back, 16 bytes each (the packed_keys form of kvtier's requests).
std::string PackKeys(std::span<const BlockKey> keys);

// The key a daemon stores a tenant's block under: XXH3-128("KVTIER/TENANT/1" ||
// u32le(len(tenant)) || tenant || key), so no key one tenant can send names another tenant's
// block. The all-zero key (no parent) maps to itself.
BlockKey TenantKey(std::string_view tenant, const BlockKey& key);

// TenantKey for many keys of one tenant (a request's): the tenant's bytes are laid out once, and
// nothing is allocated per key.
class TenantKeyer {
 public:
  explicit TenantKeyer(std::string_view tenant);
  BlockKey operator()(const BlockKey& key);
  // The same for a key given as its 16 bytes (BlockKey::ToBytes), as requests pack keys.
  BlockKey FromBytes(const uint8_t* key_bytes);

 private:
  BlockKey HashBuffer() const;  // of buf_, whose last 16 bytes are the key's
  std::string buf_;             // the hashed bytes; the key's 16 at the end
};

class ChainHasher {
 public:
  // INVALID_ARGUMENT if block_tokens is 0 or a namespace string is longer than 64 KiB.
  static absl::StatusOr<ChainHasher> Create(const KeyNamespace& ns, uint32_t block_tokens,
                                            HashAlgorithm algorithm = HashAlgorithm::kXxh3_128);

  // The canonical namespace encoding that K_{-1} hashes.
  static std::string EncodeNamespace(const KeyNamespace& ns, uint32_t block_tokens,
                                     HashAlgorithm algorithm);

  // K_{-1}: the parent of block 0.
  const BlockKey& root() const { return root_; }
  uint32_t block_tokens() const { return block_tokens_; }
  HashAlgorithm algorithm() const { return algorithm_; }

  // The key of the block holding `tokens` whose predecessor has key `parent`.
  // REQUIRES: tokens.size() == block_tokens().
  BlockKey Next(const BlockKey& parent, std::span<const uint32_t> tokens) const;

  // Appends the keys of every full block of `tokens` to `out` (the partial tail gets none).
  void AppendKeys(std::span<const uint32_t> tokens, std::vector<BlockKey>* out) const;
  std::vector<BlockKey> Keys(std::span<const uint32_t> tokens) const;

 private:
  ChainHasher(BlockKey root, uint32_t block_tokens, HashAlgorithm algorithm)
      : root_(root), block_tokens_(block_tokens), algorithm_(algorithm) {}
  BlockKey Hash(const void* data, size_t size) const;

  BlockKey root_;
  uint32_t block_tokens_;
  HashAlgorithm algorithm_;
};

}  // namespace kvtier
