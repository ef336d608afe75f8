// The decode kernels of cuda_attention.h and their launchers.
//
// GQA (dense and head-sparse): one thread block per (split of the context, KV head). Its four
// warps take the split's tokens in turn. The wide kernel (fp16 and bf16, head_dim 32 to 256 in
// powers of two, 16-byte aligned rows) gives a token's row to head_dim / 8 lanes, each loading 16
// bytes of K and of V, so a warp reads 32 / (head_dim / 8) tokens at once and loads its next
// tokens before the math of these; the narrow kernel (every shape) reads one token per warp (lane
// i holds elements i, i+32, ...: coalesced). Either reduces the dot product with each query head
// of the group across the lanes of a token, and updates that head's online softmax. The warps' partial states are merged
// in shared memory, and the splits' results by a second kernel, by log-sum-exp. A local head of a
// head-sparse profile only walks its sinks and window, so the blocks between are never read.
//
// MLA: one thread block per (split, 4 heads); a token's latent ++ rope row is read once per warp
// and scored against the 4 heads' absorbed queries; the output is the weighted latent.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "gpu/cuda_internal.cuh"
#include "gpu/online_softmax.cuh"

namespace kvtier::gpu::cuda::internal {
namespace {

// No split shorter than this: each costs a partial result and its share of the merge.
constexpr int kMinSplitTokens = 64;

template <int DT>
__device__ __forceinline__ float Load(const void* base, size_t i) {
  if constexpr (DT == 0) return __half2float(static_cast<const __half*>(base)[i]);
  if constexpr (DT == 1) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The end of a split kernel: merges its warps' online-softmax states (per warp w: sm[w * hs + h],
// sl[w * hs + h] and the accumulators sacc[w * as + h * dim + i]) for `heads` heads, and writes
// each head's normalised output and log-sum-exp to row `row0 + h` of part_out / part_lse.
__device__ void MergeWarps(const float* sm, const float* sl, int hs, const float* sacc, int as,
                           int heads, int dim, size_t row0, float* part_out, float* part_lse) {
  for (int idx = threadIdx.x; idx < heads * dim; idx += blockDim.x) {
    const int h = idx / dim, i = idx % dim;
    const size_t at = row0 + h;
    OnlineSoftmax st;
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const SoftmaxFactors f = st.Merge(sm[w * hs + h], sl[w * hs + h]);
      o = o * f.self + f.other * sacc[w * as + h * dim + i];
    }
    part_out[at * dim + i] = st.Empty() ? 0.0f : o / st.l;  // empty: nothing attended here
    if (i == 0) part_lse[at] = st.Lse();
  }
}

// The tokens KV head `kvh` attends to within split `split`: one range, or a local head's sinks
// and window (at most two), as [rb[i], re[i]). Returns how many.
__device__ __forceinline__ int TokenRanges(const GqaParams& p, int split, int kvh, int* rb,
                                           int* re) {
  const int begin = split * p.split_len, end = min(p.context, begin + p.split_len);
  int nr = 0;
  if (p.recall == nullptr || p.recall[kvh]) {
    if (begin < end) rb[nr] = begin, re[nr++] = end;
  } else {
    const int sink_end = min(p.sink, p.context);
    const int window_begin = max(sink_end, p.context - p.window);
    if (max(0, begin) < min(sink_end, end)) rb[nr] = max(0, begin), re[nr++] = min(sink_end, end);
    if (max(window_begin, begin) < end) rb[nr] = max(window_begin, begin), re[nr++] = end;
  }
  return nr;
}

// The narrow kernel: one token per warp at a time, lane i holding elements i, i + 32, ... (2- or
// 4-byte loads). Every shape the kernels take.
// PL: elements per lane of a row, at most (head_dim = 32 * per_lane, per_lane <= PL).
template <int DT, int PL>
__global__ void __launch_bounds__(kThreads) GqaSplitKernel(GqaParams p) {
  const int split = blockIdx.x, kvh = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d = p.head_dim, g = p.group, per_lane = d / 32;
  __shared__ float sq[kMaxGroup * kMaxHeadDim];
  __shared__ float sacc[kWarps][kMaxGroup * kMaxHeadDim];
  __shared__ float sm[kWarps][kMaxGroup], sl[kWarps][kMaxGroup];
  for (int i = threadIdx.x; i < g * d; i += blockDim.x) sq[i] = p.q[size_t(kvh) * g * d + i];
  __syncthreads();

  int rb[2], re[2];
  const int nr = TokenRanges(p, split, kvh, rb, re);

  OnlineSoftmax st[kMaxGroup];
  float acc[kMaxGroup][PL];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
#pragma unroll
    for (int j = 0; j < PL; ++j) acc[h][j] = 0.0f;
  }
  const size_t k_off = (size_t(p.layer) * 2 * p.kv_heads + kvh) * p.slice_elems;
  const size_t v_off = ((size_t(p.layer) * 2 + 1) * p.kv_heads + kvh) * p.slice_elems;
  for (int r = 0; r < nr; ++r) {
    for (int t = rb[r] + warp; t < re[r]; t += kWarps) {
      const void* blk = p.blocks[t / p.block_tokens];
      const size_t row = size_t(t % p.block_tokens) * d;
      float k[PL], v[PL];
#pragma unroll
      for (int j = 0; j < PL; ++j) {
        k[j] = j < per_lane ? Load<DT>(blk, k_off + row + lane + 32 * j) : 0.0f;
        v[j] = j < per_lane ? Load<DT>(blk, v_off + row + lane + 32 * j) : 0.0f;
      }
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        if (h < g) {
          float dot = 0.0f;
#pragma unroll
          for (int j = 0; j < PL; ++j) {
            if (j < per_lane) dot += sq[h * d + lane + 32 * j] * k[j];
          }
          const SoftmaxFactors f = st[h].Add(WarpSum(dot) * p.scale);
#pragma unroll
          for (int j = 0; j < PL; ++j) acc[h][j] = acc[h][j] * f.self + f.other * v[j];
        }
      }
    }
  }
  // Merge the warps.
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h < g) {
      if (lane == 0) sm[warp][h] = st[h].m, sl[warp][h] = st[h].l;
#pragma unroll
      for (int j = 0; j < PL; ++j) {
        if (j < per_lane) sacc[warp][h * d + lane + 32 * j] = acc[h][j];
      }
    }
  }
  __syncthreads();
  MergeWarps(&sm[0][0], &sl[0][0], kMaxGroup, &sacc[0][0], kMaxGroup * kMaxHeadDim, g, d,
             size_t(split) * p.q_heads + size_t(kvh) * g, p.part_out, p.part_lse);
}

// 8 fp16 or bf16 elements of one 16-byte load, as floats (element 0 in the low bits).
template <int DT>
__device__ __forceinline__ void Unpack8(const uint4& raw, float* out) {
  const unsigned int w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f;
    if constexpr (DT == 0) {
      f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    } else {
      f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    }
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// The wide kernel, for memory bandwidth: L lanes hold a token's row (head_dim = 8 L, each lane 8
// elements of one 16-byte load of K and one of V), so a warp takes 32 / L tokens at once, and
// loads the warp's next tokens before the math of these. Each group of L lanes keeps its own
// online-softmax states; a warp's groups are merged by shuffles at the end, then the warps as in
// the narrow kernel. Only 2-byte elements, rows 16-byte aligned (the launcher checks).
template <int DT, int L>
__global__ void __launch_bounds__(kThreads) GqaWideKernel(GqaParams p) {
  static_assert(L == 4 || L == 8 || L == 16 || L == 32, "L divides a warp");
  constexpr int kTokensPerStep = 32 / L;
  constexpr unsigned kAll = 0xffffffffu;
  const int split = blockIdx.x, kvh = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / L, part = lane % L;  // which token of a step; which 8 elements of it
  const int d = 8 * L, g = p.group;
  __shared__ float sacc[kWarps][kMaxGroup * kMaxHeadDim];
  __shared__ float sm[kWarps][kMaxGroup], sl[kWarps][kMaxGroup];

  float q[kMaxGroup][8];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      q[h][e] = h < g ? p.q[(size_t(kvh) * g + h) * d + 8 * part + e] : 0.0f;
    }
  }
  int rb[2], re[2];
  const int nr = TokenRanges(p, split, kvh, rb, re);

  OnlineSoftmax st[kMaxGroup];
  float acc[kMaxGroup][8];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
  }
  const size_t k_off = (size_t(p.layer) * 2 * p.kv_heads + kvh) * p.slice_elems;
  const size_t v_off = ((size_t(p.layer) * 2 + 1) * p.kv_heads + kvh) * p.slice_elems;
  // Token t's 8 elements of this lane, K and V.
  auto load = [&](int t, float* k, float* v) {
    const auto* blk = static_cast<const unsigned short*>(p.blocks[t / p.block_tokens]);
    const size_t row = size_t(t % p.block_tokens) * d + 8 * part;
    Unpack8<DT>(*reinterpret_cast<const uint4*>(blk + k_off + row), k);
    Unpack8<DT>(*reinterpret_cast<const uint4*>(blk + v_off + row), v);
  };
  constexpr int kStride = kWarps * kTokensPerStep;
  for (int r = 0; r < nr; ++r) {
    int t0 = rb[r] + warp * kTokensPerStep;  // the warp's step: tokens t0 .. t0 + 32 / L - 1
    float k[8] = {}, v[8] = {};
    bool valid = t0 + sub < re[r];
    if (valid) load(t0 + sub, k, v);
    while (t0 < re[r]) {  // the same for every lane of the warp
      const int next = t0 + kStride;
      const bool next_valid = next + sub < re[r];
      float kn[8] = {}, vn[8] = {};
      if (next_valid) load(next + sub, kn, vn);
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        if (h < g) {
          float dot = 0.0f;
#pragma unroll
          for (int e = 0; e < 8; ++e) dot += q[h][e] * k[e];
#pragma unroll
          for (int o = L / 2; o > 0; o /= 2) dot += __shfl_xor_sync(kAll, dot, o);
          if (valid) {
            const SoftmaxFactors f = st[h].Add(dot * p.scale);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * f.self + f.other * v[e];
          }
        }
      }
      t0 = next;
      valid = next_valid;
#pragma unroll
      for (int e = 0; e < 8; ++e) k[e] = kn[e], v[e] = vn[e];
    }
  }
  // The warp's token groups merged: lanes holding the same elements (part) of other groups.
#pragma unroll
  for (int o = L; o < 32; o *= 2) {
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h < g) {
        const float om = __shfl_xor_sync(kAll, st[h].m, o);
        const float ol = __shfl_xor_sync(kAll, st[h].l, o);
        float oa[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) oa[e] = __shfl_xor_sync(kAll, acc[h][e], o);
        const SoftmaxFactors f = st[h].Merge(om, ol);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * f.self + f.other * oa[e];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h < g && sub == 0) {
      if (lane == 0) sm[warp][h] = st[h].m, sl[warp][h] = st[h].l;
#pragma unroll
      for (int e = 0; e < 8; ++e) sacc[warp][h * d + 8 * part + e] = acc[h][e];
    }
  }
  __syncthreads();
  MergeWarps(&sm[0][0], &sl[0][0], kMaxGroup, &sacc[0][0], kMaxGroup * kMaxHeadDim, g, d,
             size_t(split) * p.q_heads + size_t(kvh) * g, p.part_out, p.part_lse);
}

// out[h][i] and lse[h] from the splits' normalised outputs and log-sum-exps: split s is the
// partial state (max lse_s, sum 1, accumulator out_s).
__global__ void CombineKernel(const float* part_out, const float* part_lse, int splits, int heads,
                              int dim, float* out, float* lse) {
  const int h = blockIdx.x;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    OnlineSoftmax st;
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const SoftmaxFactors f = st.Merge(part_lse[size_t(s) * heads + h], 1.0f);
      o = o * f.self + f.other * part_out[(size_t(s) * heads + h) * dim + i];
    }
    out[size_t(h) * dim + i] = st.Empty() ? 0.0f : o / st.l;
    if (i == 0) lse[h] = st.Lse();
  }
}

constexpr int kMlaRowPerLane = kMlaMaxRow / 32;    // 24
constexpr int kMlaRankPerLane = kMlaMaxRank / 32;  // 16

template <int DT>
__global__ void __launch_bounds__(kThreads) MlaSplitKernel(MlaParams p) {
  const int split = blockIdx.x, h0 = blockIdx.y * kMlaHeads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_elems = p.rank + p.rope, nh = min(kMlaHeads, p.heads - h0);
  const int row_lanes = (row_elems + 31) / 32, rank_lanes = p.rank / 32;
  __shared__ float sq[kMlaHeads * kMlaMaxRow];
  __shared__ float sacc[kWarps][kMlaHeads * kMlaMaxRank];
  __shared__ float sm[kWarps][kMlaHeads], sl[kWarps][kMlaHeads];
  for (int idx = threadIdx.x; idx < nh * row_elems; idx += blockDim.x) {
    const int h = idx / row_elems, i = idx % row_elems;
    sq[h * row_elems + i] = i < p.rank ? p.q_latent[size_t(h0 + h) * p.rank + i]
                                       : p.q_rope[size_t(h0 + h) * p.rope + (i - p.rank)];
  }
  __syncthreads();
  const int begin = split * p.split_len, end = min(p.context, begin + p.split_len);
  OnlineSoftmax st[kMlaHeads];
  float acc[kMlaHeads][kMlaRankPerLane];
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
#pragma unroll
    for (int j = 0; j < kMlaRankPerLane; ++j) acc[h][j] = 0.0f;
  }
  for (int t = begin + warp; t < end; t += kWarps) {
    const void* blk = p.blocks[t / p.block_tokens];
    const size_t row = (size_t(p.layer) * p.block_tokens + t % p.block_tokens) * row_elems;
    float c[kMlaRowPerLane];
#pragma unroll
    for (int j = 0; j < kMlaRowPerLane; ++j) {
      const int i = lane + 32 * j;
      c[j] = j < row_lanes && i < row_elems ? Load<DT>(blk, row + i) : 0.0f;
    }
#pragma unroll
    for (int h = 0; h < kMlaHeads; ++h) {
      if (h < nh) {
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < kMlaRowPerLane; ++j) {
          const int i = lane + 32 * j;
          if (j < row_lanes && i < row_elems) dot += sq[h * row_elems + i] * c[j];
        }
        const SoftmaxFactors f = st[h].Add(WarpSum(dot) * p.scale);
#pragma unroll
        for (int j = 0; j < kMlaRankPerLane; ++j) {
          if (j < rank_lanes) acc[h][j] = acc[h][j] * f.self + f.other * c[j];
        }
      }
    }
  }
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
    if (h < nh) {
      if (lane == 0) sm[warp][h] = st[h].m, sl[warp][h] = st[h].l;
#pragma unroll
      for (int j = 0; j < kMlaRankPerLane; ++j) {
        if (j < rank_lanes) sacc[warp][h * p.rank + lane + 32 * j] = acc[h][j];
      }
    }
  }
  __syncthreads();
  MergeWarps(&sm[0][0], &sl[0][0], kMlaHeads, &sacc[0][0], kMlaHeads * kMlaMaxRank, nh, p.rank,
             size_t(split) * p.heads + h0, p.part_out, p.part_lse);
}

// The wide MLA kernel: a warp reads a token's latent ++ rope row in 16-byte chunks (lane i
// holds chunks i, i + 32, i + 64: 8 elements each), its queries in registers, and loads its next
// token before the math of this one. Only 2-byte elements, latent_rank and the row a multiple of
// 8 elements, 16-byte aligned blocks (the launcher checks); otherwise as MlaSplitKernel.
constexpr int kMlaRowChunksPerLane = kMlaMaxRow / 8 / 32;    // 3
constexpr int kMlaRankChunksPerLane = kMlaMaxRank / 8 / 32;  // 2

template <int DT>
__global__ void __launch_bounds__(kThreads) MlaWideKernel(MlaParams p) {
  const int split = blockIdx.x, h0 = blockIdx.y * kMlaHeads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_elems = p.rank + p.rope, nh = min(kMlaHeads, p.heads - h0);
  const int chunks = row_elems / 8, rank_chunks = p.rank / 8;
  __shared__ float sacc[kWarps][kMlaHeads * kMlaMaxRank];
  __shared__ float sm[kWarps][kMlaHeads], sl[kWarps][kMlaHeads];

  // This lane's chunks of the heads' queries (latent, then rope).
  float q[kMlaHeads][kMlaRowChunksPerLane][8];
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
#pragma unroll
    for (int j = 0; j < kMlaRowChunksPerLane; ++j) {
      const int c = lane + 32 * j;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int i = 8 * c + e;
        q[h][j][e] = h >= nh || c >= chunks ? 0.0f
                     : i < p.rank           ? p.q_latent[size_t(h0 + h) * p.rank + i]
                                            : p.q_rope[size_t(h0 + h) * p.rope + (i - p.rank)];
      }
    }
  }
  const int begin = split * p.split_len, end = min(p.context, begin + p.split_len);
  OnlineSoftmax st[kMlaHeads];
  float acc[kMlaHeads][kMlaRankChunksPerLane][8];
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
#pragma unroll
    for (int j = 0; j < kMlaRankChunksPerLane; ++j) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[h][j][e] = 0.0f;
    }
  }
  // Token t's chunks of this lane, as loaded (unpacked when used).
  auto load = [&](int t, uint4* raw) {
    const auto* blk = static_cast<const unsigned short*>(p.blocks[t / p.block_tokens]);
    const size_t row = (size_t(p.layer) * p.block_tokens + t % p.block_tokens) * row_elems;
#pragma unroll
    for (int j = 0; j < kMlaRowChunksPerLane; ++j) {
      const int c = lane + 32 * j;
      raw[j] = c < chunks ? *reinterpret_cast<const uint4*>(blk + row + 8 * c) : uint4{0, 0, 0, 0};
    }
  };
  int t = begin + warp;
  uint4 raw[kMlaRowChunksPerLane];
  if (t < end) load(t, raw);
  while (t < end) {  // the same for every lane of the warp
    const int next = t + kWarps;
    uint4 next_raw[kMlaRowChunksPerLane];
    if (next < end) load(next, next_raw);
    float x[kMlaRowChunksPerLane][8];
#pragma unroll
    for (int j = 0; j < kMlaRowChunksPerLane; ++j) Unpack8<DT>(raw[j], x[j]);
#pragma unroll
    for (int h = 0; h < kMlaHeads; ++h) {
      if (h < nh) {
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < kMlaRowChunksPerLane; ++j) {
#pragma unroll
          for (int e = 0; e < 8; ++e) dot += q[h][j][e] * x[j][e];  // zero past the row
        }
        const SoftmaxFactors f = st[h].Add(WarpSum(dot) * p.scale);
#pragma unroll
        for (int j = 0; j < kMlaRankChunksPerLane; ++j) {
          if (lane + 32 * j < rank_chunks) {
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[h][j][e] = acc[h][j][e] * f.self + f.other * x[j][e];
          }
        }
      }
    }
    t = next;
#pragma unroll
    for (int j = 0; j < kMlaRowChunksPerLane; ++j) raw[j] = next_raw[j];
  }
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
    if (h < nh) {
      if (lane == 0) sm[warp][h] = st[h].m, sl[warp][h] = st[h].l;
#pragma unroll
      for (int j = 0; j < kMlaRankChunksPerLane; ++j) {
        const int c = lane + 32 * j;
        if (c < rank_chunks) {
#pragma unroll
          for (int e = 0; e < 8; ++e) sacc[warp][h * p.rank + 8 * c + e] = acc[h][j][e];
        }
      }
    }
  }
  __syncthreads();
  MergeWarps(&sm[0][0], &sl[0][0], kMlaHeads, &sacc[0][0], kMlaHeads * kMlaMaxRank, nh, p.rank,
             size_t(split) * p.heads + h0, p.part_out, p.part_lse);
}

}  // namespace

int SplitLen(int context, int units) {
  // About four thread blocks per SM.
  const int want_splits = std::max(1, 4 * Props().sms / std::max(units, 1));
  return std::max(kMinSplitTokens, (context + want_splits - 1) / want_splits);
}

bool WideGqaFits(ElemType dtype, int head_dim) {
  return dtype != ElemType::kFp32 &&
         (head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256);
}

void LaunchGqaSplit(const GqaParams& p, ElemType dtype, int splits, bool wide) {
  const dim3 grid(splits, p.kv_heads);
  const int pl = p.head_dim / 32;
  auto launch = [&](auto dt) {
    constexpr int DT = decltype(dt)::value;
    if constexpr (DT != 2) {
      if (wide) {
        switch (p.head_dim) {
          case 32:
            GqaWideKernel<DT, 4><<<grid, kThreads>>>(p);
            return;
          case 64:
            GqaWideKernel<DT, 8><<<grid, kThreads>>>(p);
            return;
          case 128:
            GqaWideKernel<DT, 16><<<grid, kThreads>>>(p);
            return;
          case 256:
            GqaWideKernel<DT, 32><<<grid, kThreads>>>(p);
            return;
        }
      }
    }
    if (pl <= 2) {
      GqaSplitKernel<DT, 2><<<grid, kThreads>>>(p);
    } else if (pl <= 4) {
      GqaSplitKernel<DT, 4><<<grid, kThreads>>>(p);
    } else {
      GqaSplitKernel<DT, 8><<<grid, kThreads>>>(p);
    }
  };
  switch (dtype) {
    case ElemType::kFp16:
      launch(std::integral_constant<int, 0>());
      break;
    case ElemType::kBf16:
      launch(std::integral_constant<int, 1>());
      break;
    case ElemType::kFp32:
      launch(std::integral_constant<int, 2>());
      break;
  }
}

bool WideMlaFits(ElemType dtype, int rank, int rope) {
  return dtype != ElemType::kFp32 && rank % 8 == 0 && (rank + rope) % 8 == 0;
}

void LaunchMlaSplit(const MlaParams& p, ElemType dtype, int splits, bool wide) {
  const dim3 grid(splits, (p.heads + kMlaHeads - 1) / kMlaHeads);
  switch (dtype) {
    case ElemType::kFp16:
      if (wide) {
        MlaWideKernel<0><<<grid, kThreads>>>(p);
      } else {
        MlaSplitKernel<0><<<grid, kThreads>>>(p);
      }
      break;
    case ElemType::kBf16:
      if (wide) {
        MlaWideKernel<1><<<grid, kThreads>>>(p);
      } else {
        MlaSplitKernel<1><<<grid, kThreads>>>(p);
      }
      break;
    case ElemType::kFp32:
      MlaSplitKernel<2><<<grid, kThreads>>>(p);
      break;
  }
}

void LaunchCombine(const float* part_out, const float* part_lse, int splits, int heads, int dim,
                   float* out, float* lse) {
  CombineKernel<<<heads, kThreads>>>(part_out, part_lse, splits, heads, dim, out, lse);
}

}  // namespace kvtier::gpu::cuda::internal
