#pragma once
// KvLayout: the shape of one cached KV block, its size, its stable fingerprint, and where one
// (layer, K|V, kv_head) slice sits inside it. Plain value type; thread-compatible.
//
// Payload order (DESIGN.md, "KV layout"):
//   GQA/MHA: [layer][K|V][kv_head][token][head_dim]  -- one head's slice of one layer is contiguous
//   MLA:     [layer][token][latent_rank ++ rope_dim]

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier {

enum class DType : uint8_t { kFp16 = 1, kBf16 = 2, kFp8E4M3 = 3 };
enum class LayoutKind : uint8_t { kGqa = 1, kMla = 2 };
enum class KvPart : uint8_t { kKey = 0, kValue = 1 };

// Bytes per element; 0 for a value outside the enum.
uint32_t DTypeBytes(DType dtype);
const char* DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(const std::string& name);  // "fp16", "bf16", "fp8-e4m3"

struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct KvLayout {
  LayoutKind kind = LayoutKind::kGqa;
  DType dtype = DType::kBf16;
  uint32_t layers = 0;        // Default: 0 (must be set). Layers held by every block.
  uint32_t kv_heads = 0;      // GQA only. Key/value heads per layer.
  uint32_t head_dim = 0;      // GQA only. Elements per head per token.
  uint32_t block_tokens = 16; // Default: 16. Tokens per block.
  uint32_t latent_rank = 0;   // MLA only. Compressed KV elements per token (DeepSeek-V3: 512).
  uint32_t rope_dim = 0;      // MLA only. Decoupled RoPE key elements per token (DeepSeek-V3: 64).

  // Largest block the layout may describe.
  static constexpr uint64_t kMaxBlockBytes = uint64_t{1} << 30;

  // OK, or INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;

  // REQUIRES: Validate().ok() for the three below.
  uint64_t BytesPerBlock() const;
  // Bytes one token occupies in one layer (K and V together for GQA; latent ++ rope for MLA).
  uint64_t BytesPerTokenPerLayer() const;
  // Stable 64-bit identity of the shape (docs/block-keys.md). Fields that do not apply to the kind
  // (kv_heads/head_dim for MLA, latent_rank/rope_dim for GQA) do not change it.
  uint64_t Fingerprint() const;

  // One layer's bytes (both kinds).
  absl::StatusOr<ByteRange> LayerSlice(uint32_t layer) const;
  // GQA only: the contiguous [token][head_dim] slice of one kv_head's K or V in one layer.
  absl::StatusOr<ByteRange> HeadSlice(uint32_t layer, KvPart part, uint32_t kv_head) const;

  std::string DebugString() const;

  // Reference shapes (DESIGN.md) and small variants for fast tests.
  static KvLayout Llama3_8B();   // GQA, 32 layers, 8 kv heads, dim 128, bf16, 16 tokens: 2 MiB
  static KvLayout DeepSeekV3();  // MLA, 61 layers, 512 + 64, bf16, 16 tokens: 1,124,352 bytes
  static KvLayout SmallGqa();    // GQA, 2 layers, 2 kv heads, dim 16, fp16, 16 tokens: 4 KiB
  static KvLayout SmallMla();    // MLA, 2 layers, 32 + 8, bf16, 16 tokens: 2,560 bytes

  friend bool operator==(const KvLayout&, const KvLayout&) = default;
};

}  // namespace kvtier
