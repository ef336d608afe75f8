#pragma once
// Contexts for testing attention implementations (no test framework: the GPU check program
// uses them too): blocks in a shuffled pool whose unused slots hold NaN, so that an
// implementation reading past the context poisons its output, and the shapes that break kernels.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gpu/attention.h"
#include "gpu/half.h"

namespace kvtier::gpu {

// A context in a shuffled block pool, plus the same values laid out plainly for a naive check.
struct Context {
  GqaShape shape;
  int tokens;
  std::vector<uint8_t> pool;  // blocks in shuffled order; unused slots hold NaN
  PagedKv paged;
  std::vector<double> k, v;  // [layer][kv_head][token][dim], dequantized
  std::vector<float> q;      // [q_heads][dim]
  int q_heads;

  double K(int l, int h, int t, int i) const {
    return k[((size_t(l) * shape.kv_heads + h) * tokens + t) * shape.head_dim + i];
  }
  double V(int l, int h, int t, int i) const {
    return v[((size_t(l) * shape.kv_heads + h) * tokens + t) * shape.head_dim + i];
  }
};

inline void Store(void* base, size_t index, ElemType t, float value, float* dequantized) {
  switch (t) {
    case ElemType::kFp16: {
      const uint16_t h = FloatToFp16(value);
      static_cast<uint16_t*>(base)[index] = h;
      *dequantized = Fp16ToFloat(h);
      break;
    }
    case ElemType::kBf16: {
      const uint16_t h = FloatToBf16(value);
      static_cast<uint16_t*>(base)[index] = h;
      *dequantized = Bf16ToFloat(h);
      break;
    }
    case ElemType::kFp32:
      static_cast<float*>(base)[index] = value;
      *dequantized = value;
      break;
  }
}

inline Context MakeContext(GqaShape shape, int tokens, int group, uint32_t seed) {
  Context c{shape, tokens, {}, {}, {}, {}, {}, shape.kv_heads * group};
  const int nblocks = (tokens + shape.block_tokens - 1) / shape.block_tokens;
  const size_t block_bytes = shape.BlockBytes();
  c.pool.resize(block_bytes * nblocks);
  // Every element NaN first: a kernel that reads an unused slot poisons its output.
  const size_t elems = c.pool.size() / ElemBytes(shape.dtype);
  float unused;
  for (size_t i = 0; i < elems; ++i) {
    Store(c.pool.data(), i, shape.dtype, std::numeric_limits<float>::quiet_NaN(), &unused);
  }
  std::vector<int> order(nblocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  for (int b = 0; b < nblocks; ++b)
    c.paged.blocks.push_back(c.pool.data() + order[b] * block_bytes);
  c.paged.shape = shape;
  c.paged.context_tokens = tokens;
  std::normal_distribution<float> dist(0, 1);
  c.k.resize(size_t(shape.layers) * shape.kv_heads * tokens * shape.head_dim);
  c.v.resize(c.k.size());
  for (int l = 0; l < shape.layers; ++l) {
    for (int h = 0; h < shape.kv_heads; ++h) {
      for (int t = 0; t < tokens; ++t) {
        void* block = const_cast<void*>(c.paged.blocks[t / shape.block_tokens]);
        for (int i = 0; i < shape.head_dim; ++i) {
          const size_t at = ((size_t(l) * shape.kv_heads + h) * tokens + t) * shape.head_dim + i;
          float kq = 0, vq = 0;
          Store(block,
                shape.SliceOffset(l, 0, h) + size_t(t % shape.block_tokens) * shape.head_dim + i,
                shape.dtype, dist(rng), &kq);
          Store(block,
                shape.SliceOffset(l, 1, h) + size_t(t % shape.block_tokens) * shape.head_dim + i,
                shape.dtype, dist(rng), &vq);
          c.k[at] = kq;
          c.v[at] = vq;
        }
      }
    }
  }
  c.q.resize(size_t(c.q_heads) * shape.head_dim);
  for (float& x : c.q) x = dist(rng);
  return c;
}

struct Case {
  int tokens, block_tokens, group, head_dim;
  ElemType dtype;
};

// Shapes that break kernels: contexts at and around block edges, odd block sizes, every group
// size, both head dims, every element type. Every implementation is checked on all of them.
inline constexpr Case kAwkwardCases[] = {
    {1, 16, 1, 64, ElemType::kBf16},   {63, 16, 4, 64, ElemType::kFp16},
    {64, 16, 8, 128, ElemType::kBf16}, {65, 64, 4, 128, ElemType::kFp16},
    {4099, 7, 4, 64, ElemType::kBf16}, {12345, 64, 8, 64, ElemType::kFp16},
    {100, 7, 1, 128, ElemType::kFp32}, {2000, 16, 1, 128, ElemType::kFp32},
    {300, 16, 2, 32, ElemType::kBf16}, {777, 16, 2, 256, ElemType::kFp16},
};

// An MLA context of `tokens` tokens in a shuffled pool (unused slots NaN), values N(0, 0.5),
// and the absorbed queries of `heads` heads.
struct MlaContext {
  std::vector<uint8_t> pool;
  MlaPagedKv paged;
  std::vector<float> q_latent, q_rope;
};

inline MlaContext MakeMlaContext(MlaShape shape, int tokens, int heads, uint32_t seed) {
  MlaContext c;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0, 0.5f);
  const int block_tokens = shape.block_tokens;
  const int nblocks = (tokens + block_tokens - 1) / block_tokens;
  c.pool.resize(shape.BlockBytes() * nblocks);
  const size_t elems = shape.BlockBytes() / ElemBytes(shape.dtype);
  for (size_t b = 0; b < size_t(nblocks); ++b) {
    for (size_t e = 0; e < elems; ++e) {
      float unused;
      Store(c.pool.data() + b * shape.BlockBytes(), e, shape.dtype, NAN, &unused);
    }
  }
  std::vector<int> order(nblocks);
  for (int b = 0; b < nblocks; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), rng);
  c.paged = MlaPagedKv{shape, {}, tokens};
  for (int b = 0; b < nblocks; ++b) {
    c.paged.blocks.push_back(c.pool.data() + size_t(order[b]) * shape.BlockBytes());
  }
  for (int t = 0; t < tokens; ++t) {
    void* block = const_cast<void*>(c.paged.blocks[t / block_tokens]);
    for (int layer = 0; layer < shape.layers; ++layer) {
      const size_t base = (size_t(layer) * block_tokens + t % block_tokens) * shape.TokenElems();
      for (size_t i = 0; i < shape.TokenElems(); ++i) {
        float unused;
        Store(block, base + i, shape.dtype, dist(rng), &unused);
      }
    }
  }
  c.q_latent.resize(size_t(heads) * shape.latent_rank);
  c.q_rope.resize(size_t(heads) * shape.rope_dim);
  for (float& x : c.q_latent) x = dist(rng);
  for (float& x : c.q_rope) x = dist(rng);
  return c;
}

}  // namespace kvtier::gpu
