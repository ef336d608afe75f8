#include "common/kv_layout.h"

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "common/internal/le_bytes.h"

namespace kvtier {

uint32_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
    case DType::kBf16:
      return 2;
    case DType::kFp8E4M3:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return "fp16";
    case DType::kBf16:
      return "bf16";
    case DType::kFp8E4M3:
      return "fp8-e4m3";
  }
  return "invalid";
}

absl::StatusOr<DType> ParseDType(const std::string& name) {
  if (name == "fp16") return DType::kFp16;
  if (name == "bf16") return DType::kBf16;
  if (name == "fp8-e4m3" || name == "fp8") return DType::kFp8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: unknown '", name, "' (expected fp16, bf16 or fp8-e4m3)"));
}

absl::Status KvLayout::Validate() const {
  if (kind != LayoutKind::kGqa && kind != LayoutKind::kMla) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.kind: ", static_cast<int>(kind), " is not GQA (1) or MLA (2)"));
  }
  if (DTypeBytes(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout.dtype: ", static_cast<int>(dtype), " is not a known dtype"));
  }
  if (layers == 0) return absl::InvalidArgumentError("layout.layers: must be > 0");
  if (block_tokens == 0) return absl::InvalidArgumentError("layout.block_tokens: must be > 0");
  if (kind == LayoutKind::kGqa) {
    if (kv_heads == 0) return absl::InvalidArgumentError("layout.kv_heads: must be > 0 for GQA");
    if (head_dim == 0) return absl::InvalidArgumentError("layout.head_dim: must be > 0 for GQA");
  } else if (latent_rank == 0) {
    return absl::InvalidArgumentError("layout.latent_rank: must be > 0 for MLA");
  }
  // Multiply in 128 bits so absurd fields cannot overflow past the check.
  unsigned __int128 per_token_layer =
      kind == LayoutKind::kGqa
          ? static_cast<unsigned __int128>(2) * kv_heads * head_dim * DTypeBytes(dtype)
          : static_cast<unsigned __int128>(latent_rank + uint64_t{rope_dim}) * DTypeBytes(dtype);
  unsigned __int128 total = per_token_layer * layers * block_tokens;
  if (total > kMaxBlockBytes) {
    return absl::InvalidArgumentError(absl::StrCat("layout: a block of this shape exceeds ",
                                                   kMaxBlockBytes, " bytes"));
  }
  return absl::OkStatus();
}

uint64_t KvLayout::BytesPerTokenPerLayer() const {
  if (kind == LayoutKind::kGqa) return uint64_t{2} * kv_heads * head_dim * DTypeBytes(dtype);
  return (uint64_t{latent_rank} + rope_dim) * DTypeBytes(dtype);
}

uint64_t KvLayout::BytesPerBlock() const {
  return BytesPerTokenPerLayer() * layers * block_tokens;
}

uint64_t KvLayout::Fingerprint() const {
  const bool gqa = kind == LayoutKind::kGqa;
  internal::LeWriter w;
  w.Raw("KVTIER/LAYOUT/1");
  w.U8(static_cast<uint8_t>(kind));
  w.U8(static_cast<uint8_t>(dtype));
  w.U32(layers);
  w.U32(gqa ? kv_heads : 0);
  w.U32(gqa ? head_dim : 0);
  w.U32(block_tokens);
  w.U32(gqa ? 0 : latent_rank);
  w.U32(gqa ? 0 : rope_dim);
  return XXH3_64bits(w.data(), w.size());
}

absl::StatusOr<ByteRange> KvLayout::LayerSlice(uint32_t layer) const {
  if (layer >= layers) {
    return absl::OutOfRangeError(absl::StrCat("layer ", layer, " >= layers ", layers));
  }
  const uint64_t per_layer = BytesPerTokenPerLayer() * block_tokens;
  return ByteRange{per_layer * layer, per_layer};
}

absl::StatusOr<ByteRange> KvLayout::HeadSlice(uint32_t layer, KvPart part,
                                              uint32_t kv_head) const {
  if (kind != LayoutKind::kGqa) {
    return absl::FailedPreconditionError("HeadSlice: MLA blocks have no per-head slices");
  }
  if (layer >= layers) {
    return absl::OutOfRangeError(absl::StrCat("layer ", layer, " >= layers ", layers));
  }
  if (kv_head >= kv_heads) {
    return absl::OutOfRangeError(absl::StrCat("kv_head ", kv_head, " >= kv_heads ", kv_heads));
  }
  const uint64_t head_bytes = uint64_t{block_tokens} * head_dim * DTypeBytes(dtype);
  const uint64_t index = (uint64_t{layer} * 2 + static_cast<uint64_t>(part)) * kv_heads + kv_head;
  return ByteRange{index * head_bytes, head_bytes};
}

std::string KvLayout::DebugString() const {
  if (kind == LayoutKind::kGqa) {
    return absl::StrCat("gqa(", DTypeName(dtype), " layers=", layers, " kv_heads=", kv_heads,
                        " head_dim=", head_dim, " block_tokens=", block_tokens, ")");
  }
  return absl::StrCat("mla(", DTypeName(dtype), " layers=", layers, " latent=", latent_rank,
                      " rope=", rope_dim, " block_tokens=", block_tokens, ")");
}

KvLayout KvLayout::Llama3_8B() {
  return KvLayout{.kind = LayoutKind::kGqa, .dtype = DType::kBf16, .layers = 32, .kv_heads = 8,
                  .head_dim = 128, .block_tokens = 16};
}
KvLayout KvLayout::DeepSeekV3() {
  return KvLayout{.kind = LayoutKind::kMla, .dtype = DType::kBf16, .layers = 61,
                  .block_tokens = 16, .latent_rank = 512, .rope_dim = 64};
}
KvLayout KvLayout::SmallGqa() {
  return KvLayout{.kind = LayoutKind::kGqa, .dtype = DType::kFp16, .layers = 2, .kv_heads = 2,
                  .head_dim = 16, .block_tokens = 16};
}
KvLayout KvLayout::SmallMla() {
  return KvLayout{.kind = LayoutKind::kMla, .dtype = DType::kBf16, .layers = 2,
                  .block_tokens = 16, .latent_rank = 32, .rope_dim = 8};
}

}  // namespace kvtier
