#pragma once
// Quest-style block selection (Tang et al., 2024): for each block, layer and KV head, the
// elementwise minimum and maximum of its keys. For a query q, the bound
//   U(q) = sum_i max(q_i * min_i, q_i * max_i)
// is at least q . k for every key k in the block, so the blocks with the highest bounds are the
// only ones that can hold the highest-scoring tokens: decode attention may read just those.
// Dependency-free, like attention.h.

#include <vector>

#include "gpu/attention.h"

namespace kvtier::gpu {

// Bounds of a context: [block][layer][kv_head][head_dim] for min and for max, over the block's
// tokens within the context only (unused slots of a partial last block are never read).
struct KeyBounds {
  GqaShape shape;
  int blocks = 0;
  std::vector<float> min, max;

  size_t Offset(int block, int layer, int kv_head) const {
    return ((size_t(block) * shape.layers + layer) * shape.kv_heads + kv_head) * shape.head_dim;
  }
};

KeyBounds ComputeKeyBounds(const PagedKv& kv);

// U(q) for one block's bounds (d elements each), in float.
float QuestBound(const float* q, const float* min, const float* max, int d);

// For each KV head of req.layer, the indices (ascending) of at most `budget` blocks with the
// highest bound for any of its query heads; the block holding the last token is always kept.
// REQUIRES: ValidateDecode(kv, req).empty(), bounds from ComputeKeyBounds(kv), budget >= 1.
std::vector<std::vector<int>> SelectBlocks(const PagedKv& kv, const KeyBounds& bounds,
                                           const DecodeRequest& req, int budget);

}  // namespace kvtier::gpu
