#include "gpu/quest.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "gpu/half.h"

namespace kvtier::gpu {
namespace {

float LoadOne(const void* base, size_t index, ElemType t) {
  float f = 0;
  switch (t) {
    case ElemType::kFp16:
      f = Fp16ToFloat(static_cast<const uint16_t*>(base)[index]);
      break;
    case ElemType::kBf16:
      f = Bf16ToFloat(static_cast<const uint16_t*>(base)[index]);
      break;
    case ElemType::kFp32:
      f = static_cast<const float*>(base)[index];
      break;
  }
  return f;
}

}  // namespace

KeyBounds ComputeKeyBounds(const PagedKv& kv) {
  const GqaShape& s = kv.shape;
  KeyBounds b;
  b.shape = s;
  b.blocks = (kv.context_tokens + s.block_tokens - 1) / s.block_tokens;
  const size_t n = size_t(b.blocks) * s.layers * s.kv_heads * s.head_dim;
  b.min.assign(n, std::numeric_limits<float>::infinity());
  b.max.assign(n, -std::numeric_limits<float>::infinity());
  for (int blk = 0; blk < b.blocks; ++blk) {
    const int tokens = std::min(s.block_tokens, kv.context_tokens - blk * s.block_tokens);
    for (int l = 0; l < s.layers; ++l) {
      for (int h = 0; h < s.kv_heads; ++h) {
        float* mn = b.min.data() + b.Offset(blk, l, h);
        float* mx = b.max.data() + b.Offset(blk, l, h);
        const size_t base = s.SliceOffset(l, 0, h);
        for (int t = 0; t < tokens; ++t) {
          for (int i = 0; i < s.head_dim; ++i) {
            const float k = LoadOne(kv.blocks[blk], base + size_t(t) * s.head_dim + i, s.dtype);
            mn[i] = std::min(mn[i], k);
            mx[i] = std::max(mx[i], k);
          }
        }
      }
    }
  }
  return b;
}

float QuestBound(const float* q, const float* min, const float* max, int d) {
  float u = 0;
  for (int i = 0; i < d; ++i) u += std::max(q[i] * min[i], q[i] * max[i]);
  return u;
}

std::vector<std::vector<int>> SelectBlocks(const PagedKv& kv, const KeyBounds& bounds,
                                           const DecodeRequest& req, int budget) {
  const GqaShape& s = kv.shape;
  const int group = req.q_heads / s.kv_heads;
  const int last = bounds.blocks - 1;
  std::vector<std::vector<int>> chosen(s.kv_heads);
  std::vector<float> best(bounds.blocks);
  std::vector<int> order(bounds.blocks);
  for (int h = 0; h < s.kv_heads; ++h) {
    for (int blk = 0; blk < bounds.blocks; ++blk) {
      const float* mn = bounds.min.data() + bounds.Offset(blk, req.layer, h);
      const float* mx = bounds.max.data() + bounds.Offset(blk, req.layer, h);
      best[blk] = -std::numeric_limits<float>::infinity();
      for (int g = 0; g < group; ++g) {
        const float* q = req.q + size_t(h * group + g) * s.head_dim;
        best[blk] = std::max(best[blk], QuestBound(q, mn, mx, s.head_dim));
      }
    }
    std::iota(order.begin(), order.end(), 0);
    // The last block first (always kept), then by bound; equal bounds keep block order.
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      if ((a == last) != (b == last)) return a == last;
      return best[a] > best[b];
    });
    std::vector<int>& c = chosen[h];
    c.assign(order.begin(), order.begin() + std::min(budget, bounds.blocks));
    std::sort(c.begin(), c.end());
  }
  return chosen;
}

}  // namespace kvtier::gpu
