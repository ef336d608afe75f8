#include "common/layout_proto.h"

namespace kvtier {

absl::StatusOr<KvLayout> LayoutFromProto(const v1::KvLayout& p) {
  KvLayout l;
  switch (p.kind()) {
    case v1::LAYOUT_KIND_GQA:
      l.kind = LayoutKind::kGqa;
      break;
    case v1::LAYOUT_KIND_MLA:
      l.kind = LayoutKind::kMla;
      break;
    default:
      return absl::InvalidArgumentError("layout.kind: must be GQA or MLA");
  }
  switch (p.dtype()) {
    case v1::DTYPE_FP16:
      l.dtype = DType::kFp16;
      break;
    case v1::DTYPE_BF16:
      l.dtype = DType::kBf16;
      break;
    case v1::DTYPE_FP8_E4M3:
      l.dtype = DType::kFp8E4M3;
      break;
    default:
      return absl::InvalidArgumentError("layout.dtype: must be fp16, bf16 or fp8-e4m3");
  }
  l.layers = p.layers();
  l.kv_heads = p.kv_heads();
  l.head_dim = p.head_dim();
  l.block_tokens = p.block_tokens();
  l.latent_rank = p.latent_rank();
  l.rope_dim = p.rope_dim();
  absl::Status st = l.Validate();
  if (!st.ok()) return st;
  return l;
}

void LayoutToProto(const KvLayout& l, v1::KvLayout* p) {
  p->set_kind(l.kind == LayoutKind::kGqa ? v1::LAYOUT_KIND_GQA : v1::LAYOUT_KIND_MLA);
  p->set_dtype(l.dtype == DType::kFp16   ? v1::DTYPE_FP16
               : l.dtype == DType::kBf16 ? v1::DTYPE_BF16
                                         : v1::DTYPE_FP8_E4M3);
  p->set_layers(l.layers);
  p->set_kv_heads(l.kv_heads);
  p->set_head_dim(l.head_dim);
  p->set_block_tokens(l.block_tokens);
  p->set_latent_rank(l.latent_rank);
  p->set_rope_dim(l.rope_dim);
}

}  // namespace kvtier
