// CUDA kernels of decode attention; see cuda_attention.h.
//
// GQA (dense and head-sparse): one thread block per (split of the context, KV head). Its four
// warps take the split's tokens in turn; for a token a warp reads the K and V rows (lane i holds
// elements i, i+32, ...: coalesced), reduces the dot product with each query head of the group
// across the warp, and updates that head's online softmax. The warps' partial states are merged
// in shared memory, and the splits' results by a second kernel, by log-sum-exp. A local head of a
// head-sparse profile only walks its sinks and window, so the blocks between are never read.
//
// MLA: one thread block per (split, 4 heads); a token's latent ++ rope row is read once per warp
// and scored against the 4 heads' absorbed queries; the output is the weighted latent.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "gpu/cuda_attention.h"
#include "gpu/unit_cache.h"

namespace kvtier::gpu::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxGroup = 8;  // query heads per KV head
constexpr int kMaxHeadDim = 256;
constexpr int kMlaHeads = 4;     // MLA heads per thread block
constexpr int kMlaMaxRow = 768;  // latent_rank + rope_dim
constexpr int kMlaMaxRank = 512;
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
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm[w * hs + h]);
    if (mx == -INFINITY) {  // nothing attended in this split
      part_out[at * dim + i] = 0.0f;
      if (i == 0) part_lse[at] = -INFINITY;
      continue;
    }
    float sum = 0.0f, o = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (sm[w * hs + h] == -INFINITY) continue;
      const float f = expf(sm[w * hs + h] - mx);
      sum += sl[w * hs + h] * f;
      o += sacc[w * as + h * dim + i] * f;
    }
    part_out[at * dim + i] = o / sum;
    if (i == 0) part_lse[at] = mx + logf(sum);
  }
}

struct GqaParams {
  const void* const* blocks;
  int block_tokens, kv_heads, head_dim, layer, group, q_heads;
  size_t slice_elems;  // block_tokens * head_dim
  const float* q;      // [q_heads][head_dim]
  float scale;
  const unsigned char* recall;  // [kv_heads] of this layer; null: every head is recall
  int sink, window, context, split_len;
  float* part_out;  // [splits][q_heads][head_dim]
  float* part_lse;  // [splits][q_heads]
};

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

  // The tokens this head attends to within the split: one range, or a local head's sinks and
  // window (at most two).
  const int begin = split * p.split_len, end = min(p.context, begin + p.split_len);
  int rb[2], re[2], nr = 0;
  if (p.recall == nullptr || p.recall[kvh]) {
    if (begin < end) rb[nr] = begin, re[nr++] = end;
  } else {
    const int sink_end = min(p.sink, p.context);
    const int window_begin = max(sink_end, p.context - p.window);
    if (max(0, begin) < min(sink_end, end)) rb[nr] = max(0, begin), re[nr++] = min(sink_end, end);
    if (max(window_begin, begin) < end) rb[nr] = max(window_begin, begin), re[nr++] = end;
  }

  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][PL];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
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
          const float s = WarpSum(dot) * p.scale;
          const float new_m = fmaxf(m[h], s);
          const float correction = expf(m[h] - new_m);  // 0 for the first token
          const float w = expf(s - new_m);
          l[h] = l[h] * correction + w;
#pragma unroll
          for (int j = 0; j < PL; ++j) acc[h][j] = acc[h][j] * correction + w * v[j];
          m[h] = new_m;
        }
      }
    }
  }
  // Merge the warps.
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h < g) {
      if (lane == 0) sm[warp][h] = m[h], sl[warp][h] = l[h];
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

// out[h][i] and lse[h] from the splits' normalised outputs and log-sum-exps.
__global__ void CombineKernel(const float* part_out, const float* part_lse, int splits, int heads,
                              int dim, float* out, float* lse) {
  const int h = blockIdx.x;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[size_t(s) * heads + h]);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    if (mx == -INFINITY) {
      out[size_t(h) * dim + i] = 0.0f;
      continue;
    }
    float sum = 0.0f, o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ls = part_lse[size_t(s) * heads + h];
      if (ls == -INFINITY) continue;
      const float f = expf(ls - mx);
      sum += f;
      o += f * part_out[(size_t(s) * heads + h) * dim + i];
    }
    out[size_t(h) * dim + i] = o / sum;
  }
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ls = part_lse[size_t(s) * heads + h];
      if (ls != -INFINITY) sum += expf(ls - mx);
    }
    lse[h] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
  }
}

struct MlaParams {
  const void* const* blocks;
  int block_tokens, rank, rope, layer, heads;
  const float* q_latent;  // [heads][rank]
  const float* q_rope;    // [heads][rope]
  float scale;
  int context, split_len;
  float* part_out;  // [splits][heads][rank]
  float* part_lse;  // [splits][heads]
};

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
  float m[kMlaHeads], l[kMlaHeads], acc[kMlaHeads][kMlaRankPerLane];
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
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
        const float s = WarpSum(dot) * p.scale;
        const float new_m = fmaxf(m[h], s);
        const float correction = expf(m[h] - new_m);
        const float w = expf(s - new_m);
        l[h] = l[h] * correction + w;
#pragma unroll
        for (int j = 0; j < kMlaRankPerLane; ++j) {
          if (j < rank_lanes) acc[h][j] = acc[h][j] * correction + w * c[j];
        }
        m[h] = new_m;
      }
    }
  }
#pragma unroll
  for (int h = 0; h < kMlaHeads; ++h) {
    if (h < nh) {
      if (lane == 0) sm[warp][h] = m[h], sl[warp][h] = l[h];
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

bool Check(cudaError_t err, const char* what, std::string* error) {
  if (err == cudaSuccess) return true;
  *error = std::string(what) + ": " + cudaGetErrorString(err);
  return false;
}

// Device memory that frees itself.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t size = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  bool Allocate(size_t bytes, std::string* error) {
    if (bytes <= size) return true;
    if (ptr != nullptr) cudaFree(ptr);
    ptr = nullptr;
    size = 0;
    if (!Check(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc", error)) return false;
    size = bytes;
    return true;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

int SmCount() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 1;
  }
  return std::max(sms, 1);
}

// Tokens per split: enough thread blocks for about four per SM over `units` (KV heads or head
// groups), and no split shorter than kMinSplitTokens.
int SplitLen(int context, int units) {
  const int want_splits = std::max(1, 4 * SmCount() / std::max(units, 1));
  return std::max(kMinSplitTokens, (context + want_splits - 1) / want_splits);
}

int UsedBlocks(int context, int block_tokens) {
  return (context + block_tokens - 1) / block_tokens;
}

}  // namespace

struct DeviceKv::Impl {
  bool mla = false;
  GqaShape shape;
  MlaShape mla_shape;
  int context = 0;
  size_t block_bytes = 0;
  DeviceBuffer blocks, table, q, q_rope, recall, part_out, part_lse, out, lse;
  cudaEvent_t start = nullptr, stop = nullptr;
  ~Impl() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
  }

  // Copies the distinct blocks of `pages` into one allocation and builds the page table.
  bool UploadBlocks(const std::vector<const void*>& pages, int used, std::string* error) {
    std::vector<const void*> host_table(used);
    std::vector<const void*> distinct;
    std::vector<size_t> slot(used);
    for (int i = 0; i < used; ++i) {
      auto it = std::find(distinct.begin(), distinct.end(), pages[i]);
      slot[i] = it - distinct.begin();
      if (it == distinct.end()) distinct.push_back(pages[i]);
    }
    if (!blocks.Allocate(distinct.size() * block_bytes, error)) return false;
    for (size_t b = 0; b < distinct.size(); ++b) {
      if (!Check(cudaMemcpy(blocks.as<uint8_t>() + b * block_bytes, distinct[b], block_bytes,
                            cudaMemcpyHostToDevice),
                 "copy of a block to the GPU", error)) {
        return false;
      }
    }
    for (int i = 0; i < used; ++i) host_table[i] = blocks.as<uint8_t>() + slot[i] * block_bytes;
    return SetTable(host_table, error);
  }

  // The page table of blocks that are in GPU memory (device addresses), and the timing events.
  bool SetTable(const std::vector<const void*>& device_pages, std::string* error) {
    const size_t bytes = device_pages.size() * sizeof(void*);
    if (!table.Allocate(bytes, error)) return false;
    if (!Check(cudaMemcpy(table.ptr, device_pages.data(), bytes, cudaMemcpyHostToDevice),
               "copy of the page table", error)) {
      return false;
    }
    return Check(cudaEventCreate(&start), "cudaEventCreate", error) &&
           Check(cudaEventCreate(&stop), "cudaEventCreate", error);
  }

  // A GQA context's state before its blocks are placed; nullptr (with *error) for a shape the
  // kernels do not take.
  static std::unique_ptr<Impl> ForGqa(const PagedKv& kv, std::string* error) {
    const GqaShape& s = kv.shape;
    if (s.head_dim % 32 != 0 || s.head_dim > kMaxHeadDim) {
      *error = "the GPU kernels take head_dim a multiple of 32 up to 256, not " +
               std::to_string(s.head_dim);
      return nullptr;
    }
    auto impl = std::make_unique<Impl>();
    impl->shape = s;
    impl->context = kv.context_tokens;
    impl->block_bytes = s.BlockBytes();
    return impl;
  }

  static std::unique_ptr<Impl> ForMla(const MlaPagedKv& kv, std::string* error) {
    const MlaShape& s = kv.shape;
    if (s.latent_rank % 32 != 0 || s.latent_rank > kMlaMaxRank ||
        s.latent_rank + s.rope_dim > kMlaMaxRow) {
      *error =
          "the GPU MLA kernel takes latent_rank a multiple of 32 up to 512 and latent_rank + "
          "rope_dim up to 768";
      return nullptr;
    }
    auto impl = std::make_unique<Impl>();
    impl->mla = true;
    impl->mla_shape = s;
    impl->context = kv.context_tokens;
    impl->block_bytes = s.BlockBytes();
    return impl;
  }

  // A context with its blocks placed: copied to the GPU (upload), or already there (kv.blocks
  // are device addresses).
  template <typename Kv>
  static std::unique_ptr<DeviceKv> Place(const Kv& kv, bool upload, std::string* error) {
    std::unique_ptr<Impl> impl;
    if constexpr (std::is_same_v<Kv, MlaPagedKv>) {
      impl = ForMla(kv, error);
    } else {
      impl = ForGqa(kv, error);
    }
    if (impl == nullptr) return nullptr;
    const int used = UsedBlocks(kv.context_tokens, kv.shape.block_tokens);
    const bool ok =
        upload ? impl->UploadBlocks(kv.blocks, used, error)
               : impl->SetTable(
                     std::vector<const void*>(kv.blocks.begin(), kv.blocks.begin() + used), error);
    return ok ? std::unique_ptr<DeviceKv>(new DeviceKv(std::move(impl))) : nullptr;
  }

  bool CopyIn(DeviceBuffer& buf, const void* src, size_t bytes, std::string* error) {
    if (!buf.Allocate(bytes, error)) return false;
    return bytes == 0 ||
           Check(cudaMemcpy(buf.ptr, src, bytes, cudaMemcpyHostToDevice), "copy to the GPU", error);
  }

  DecodeResult Finish(int heads, int dim, float* ms, std::string* error) {
    DecodeResult r;
    if (!Check(cudaGetLastError(), "kernel launch", error) ||
        !Check(cudaEventSynchronize(stop), "kernel", error)) {
      return r;
    }
    if (ms != nullptr) cudaEventElapsedTime(ms, start, stop);
    r.out.resize(size_t(heads) * dim);
    r.lse.resize(heads);
    if (!Check(cudaMemcpy(r.out.data(), out.ptr, r.out.size() * 4, cudaMemcpyDeviceToHost),
               "copy of the output", error) ||
        !Check(cudaMemcpy(r.lse.data(), lse.ptr, r.lse.size() * 4, cudaMemcpyDeviceToHost),
               "copy of the lse", error)) {
      return {};
    }
    return r;
  }
};

bool Available(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    *why = std::string("no CUDA device: ") + cudaGetErrorString(err);
    return false;
  }
  if (n == 0) {
    *why = "no CUDA device";
    return false;
  }
  return true;
}

std::string DeviceName() {
  std::string why;
  if (!Available(&why)) return "";
  int device = 0;
  cudaDeviceProp prop;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    return "";
  }
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs)";
}

DeviceKv::DeviceKv(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceKv::~DeviceKv() = default;
size_t DeviceKv::bytes() const { return impl_->blocks.size; }

std::unique_ptr<DeviceKv> DeviceKv::Upload(const PagedKv& kv, std::string* error) {
  return Impl::Place(kv, true, error);
}
std::unique_ptr<DeviceKv> DeviceKv::UploadMla(const MlaPagedKv& kv, std::string* error) {
  return Impl::Place(kv, true, error);
}
std::unique_ptr<DeviceKv> DeviceKv::OnDevice(const PagedKv& kv, std::string* error) {
  return Impl::Place(kv, false, error);
}
std::unique_ptr<DeviceKv> DeviceKv::OnDeviceMla(const MlaPagedKv& kv, std::string* error) {
  return Impl::Place(kv, false, error);
}

DecodeResult DeviceKv::Decode(const DecodeRequest& req, float* ms, std::string* error) {
  Impl& k = *impl_;
  const GqaShape& s = k.shape;
  const int group = req.q_heads / s.kv_heads;
  if (k.mla || group > kMaxGroup) {
    *error = k.mla ? "an MLA context takes MlaDecode"
                   : "the GPU kernels take at most 8 query heads per KV head";
    return {};
  }
  const int d = s.head_dim;
  if (!k.CopyIn(k.q, req.q, size_t(req.q_heads) * d * 4, error)) return {};
  const unsigned char* recall = nullptr;
  int sink = 0, window = 0;
  if (req.profile != nullptr && !req.profile->recall.empty()) {
    std::vector<unsigned char> flags(s.kv_heads);
    for (int h = 0; h < s.kv_heads; ++h) flags[h] = req.profile->IsRecall(req.layer, h);
    if (!k.CopyIn(k.recall, flags.data(), flags.size(), error)) return {};
    recall = k.recall.as<unsigned char>();
    sink = req.profile->sink;
    window = req.profile->window;
  }
  const int split_len = SplitLen(k.context, s.kv_heads);
  const int splits = (k.context + split_len - 1) / split_len;
  if (!k.part_out.Allocate(size_t(splits) * req.q_heads * d * 4, error) ||
      !k.part_lse.Allocate(size_t(splits) * req.q_heads * 4, error) ||
      !k.out.Allocate(size_t(req.q_heads) * d * 4, error) ||
      !k.lse.Allocate(size_t(req.q_heads) * 4, error)) {
    return {};
  }
  GqaParams p;
  p.blocks = k.table.as<const void* const>();
  p.block_tokens = s.block_tokens;
  p.kv_heads = s.kv_heads;
  p.head_dim = d;
  p.layer = req.layer;
  p.group = group;
  p.q_heads = req.q_heads;
  p.slice_elems = s.HeadSliceElems();
  p.q = k.q.as<const float>();
  p.scale = req.scale;
  p.recall = recall;
  p.sink = sink;
  p.window = window;
  p.context = k.context;
  p.split_len = split_len;
  p.part_out = k.part_out.as<float>();
  p.part_lse = k.part_lse.as<float>();
  const dim3 grid(splits, s.kv_heads);
  cudaEventRecord(k.start);
  const int pl = d / 32;
  auto launch = [&](auto dt) {
    constexpr int DT = decltype(dt)::value;
    if (pl <= 2) {
      GqaSplitKernel<DT, 2><<<grid, kThreads>>>(p);
    } else if (pl <= 4) {
      GqaSplitKernel<DT, 4><<<grid, kThreads>>>(p);
    } else {
      GqaSplitKernel<DT, 8><<<grid, kThreads>>>(p);
    }
  };
  switch (s.dtype) {
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
  CombineKernel<<<req.q_heads, kThreads>>>(k.part_out.as<const float>(),
                                           k.part_lse.as<const float>(), splits, req.q_heads, d,
                                           k.out.as<float>(), k.lse.as<float>());
  cudaEventRecord(k.stop);
  return k.Finish(req.q_heads, d, ms, error);
}

DecodeResult DeviceKv::MlaDecode(const MlaRequest& req, float* ms, std::string* error) {
  Impl& k = *impl_;
  if (!k.mla) {
    *error = "a GQA context takes Decode";
    return {};
  }
  const MlaShape& s = k.mla_shape;
  if (!k.CopyIn(k.q, req.q_latent, size_t(req.heads) * s.latent_rank * 4, error) ||
      !k.CopyIn(k.q_rope, req.q_rope, size_t(req.heads) * s.rope_dim * 4, error)) {
    return {};
  }
  const int head_groups = (req.heads + kMlaHeads - 1) / kMlaHeads;
  const int split_len = SplitLen(k.context, head_groups);
  const int splits = (k.context + split_len - 1) / split_len;
  if (!k.part_out.Allocate(size_t(splits) * req.heads * s.latent_rank * 4, error) ||
      !k.part_lse.Allocate(size_t(splits) * req.heads * 4, error) ||
      !k.out.Allocate(size_t(req.heads) * s.latent_rank * 4, error) ||
      !k.lse.Allocate(size_t(req.heads) * 4, error)) {
    return {};
  }
  MlaParams p;
  p.blocks = k.table.as<const void* const>();
  p.block_tokens = s.block_tokens;
  p.rank = s.latent_rank;
  p.rope = s.rope_dim;
  p.layer = req.layer;
  p.heads = req.heads;
  p.q_latent = k.q.as<const float>();
  p.q_rope = k.q_rope.as<const float>();
  p.scale = req.scale;
  p.context = k.context;
  p.split_len = split_len;
  p.part_out = k.part_out.as<float>();
  p.part_lse = k.part_lse.as<float>();
  const dim3 grid(splits, head_groups);
  cudaEventRecord(k.start);
  switch (s.dtype) {
    case ElemType::kFp16:
      MlaSplitKernel<0><<<grid, kThreads>>>(p);
      break;
    case ElemType::kBf16:
      MlaSplitKernel<1><<<grid, kThreads>>>(p);
      break;
    case ElemType::kFp32:
      MlaSplitKernel<2><<<grid, kThreads>>>(p);
      break;
  }
  CombineKernel<<<req.heads, kThreads>>>(k.part_out.as<const float>(), k.part_lse.as<const float>(),
                                         splits, req.heads, s.latent_rank, k.out.as<float>(),
                                         k.lse.as<float>());
  cudaEventRecord(k.stop);
  return k.Finish(req.heads, s.latent_rank, ms, error);
}

DecodeResult Decode(const PagedKv& kv, const DecodeRequest& req, std::string* error) {
  auto d = DeviceKv::Upload(kv, error);
  if (d == nullptr) return {};
  return d->Decode(req, nullptr, error);
}

DecodeResult MlaDecode(const MlaPagedKv& kv, const MlaRequest& req, std::string* error) {
  auto d = DeviceKv::UploadMla(kv, error);
  if (d == nullptr) return {};
  return d->MlaDecode(req, nullptr, error);
}

namespace {

// UnitCache's memory: cudaMalloc, and copies queued on the cache's stream.
struct CudaMemory {
  cudaStream_t stream = nullptr;
  void* Allocate(size_t bytes, std::string* error) {
    void* p = nullptr;
    if (!Check(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc of the block cache",
               error)) {
      return nullptr;
    }
    return p;
  }
  void Free(void* p) {
    if (p != nullptr) cudaFree(p);
  }
  bool Copy(void* dst, const void* src, size_t bytes, std::string* error) {
    return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream),
                 "copy of a block to the GPU", error);
  }
};

using DeviceUnitCache = UnitCache<CudaMemory>;

}  // namespace

struct DeviceUnits::Impl {
  cudaStream_t stream = nullptr;
  std::unique_ptr<DeviceUnitCache> cache;
  ~Impl() {
    cache.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

struct DeviceMapping::Impl {
  std::unique_ptr<DeviceUnitCache::Mapping> held;
  cudaEvent_t copied = nullptr;  // recorded on the copy stream after this mapping's copies
  ~Impl() {
    // The bytes may be dropped (and the host buffers reused) only once they are copied.
    if (copied != nullptr) {
      cudaEventSynchronize(copied);
      cudaEventDestroy(copied);
    }
  }
};

DeviceMapping::DeviceMapping(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceMapping::~DeviceMapping() = default;
const std::vector<const void*>& DeviceMapping::addresses() const {
  return impl_->held->addresses();
}
uint64_t DeviceMapping::copied_bytes() const { return impl_->held->copied_bytes(); }
bool DeviceMapping::OrderBefore(std::string* error) const {
  return Check(cudaStreamWaitEvent(0, impl_->copied, 0), "wait for the block copies", error);
}

DeviceUnits::DeviceUnits(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceUnits::~DeviceUnits() = default;

std::unique_ptr<DeviceUnits> DeviceUnits::Create(uint64_t capacity_bytes, std::string* error) {
  auto impl = std::make_unique<Impl>();
  // Non-blocking: the copies do not wait for kernels on the default stream, nor they for them.
  if (!Check(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking), "cudaStreamCreate",
             error)) {
    return nullptr;
  }
  impl->cache = std::make_unique<DeviceUnitCache>(CudaMemory{impl->stream}, capacity_bytes);
  return std::unique_ptr<DeviceUnits>(new DeviceUnits(std::move(impl)));
}

std::unique_ptr<DeviceMapping> DeviceUnits::Map(const std::vector<Source>& sources,
                                                std::string* error) {
  std::vector<DeviceUnitCache::Source> src;
  src.reserve(sources.size());
  for (const Source& s : sources) src.push_back({s.id, s.version, s.host, s.bytes});
  auto m = std::make_unique<DeviceMapping::Impl>();
  m->held = impl_->cache->Map(src, error);
  if (m->held == nullptr) {
    // Copies queued before the failure read host buffers the caller may now reuse.
    cudaStreamSynchronize(impl_->stream);
    return nullptr;
  }
  if (!Check(cudaEventCreateWithFlags(&m->copied, cudaEventDisableTiming), "cudaEventCreate",
             error) ||
      !Check(cudaEventRecord(m->copied, impl_->stream), "cudaEventRecord", error)) {
    cudaStreamSynchronize(impl_->stream);
    return nullptr;
  }
  return std::unique_ptr<DeviceMapping>(new DeviceMapping(std::move(m)));
}

DeviceUnits::Stats DeviceUnits::stats() const {
  const auto s = impl_->cache->stats();
  Stats out;
  out.bytes = s.bytes;
  out.units = s.units;
  out.copied_bytes = s.copied_bytes;
  out.reused_bytes = s.reused_bytes;
  out.evictions = s.evictions;
  return out;
}

namespace {

// Page-locked memory in 64 MiB slabs: cudaHostAlloc costs far more than a copy of a small buffer,
// and the worker's units are small (one layer of one block) and come and go by the thousand.
// Freed buffers wait in a list per size for the next of that size; slabs stay until exit, so
// the memory held is the most ever in use at once.
class PinnedSlabs {
 public:
  void* Alloc(size_t bytes) {
    bytes = (std::max<size_t>(bytes, 1) + 255) & ~size_t{255};
    std::lock_guard lock(mu_);
    auto& spare = free_[bytes];
    if (!spare.empty()) {
      void* p = spare.back();
      spare.pop_back();
      size_of_[p] = bytes;
      return p;
    }
    if (bytes > kSlabBytes / 4) return nullptr;  // large buffers: ordinary memory
    if (left_ < bytes) {
      void* slab = nullptr;
      if (cudaHostAlloc(&slab, kSlabBytes, cudaHostAllocPortable) != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it
        return nullptr;
      }
      next_ = static_cast<uint8_t*>(slab);
      left_ = kSlabBytes;
    }
    void* p = next_;
    next_ += bytes;
    left_ -= bytes;
    size_of_[p] = bytes;
    return p;
  }
  void Free(void* p) {
    if (p == nullptr) return;
    std::lock_guard lock(mu_);
    auto it = size_of_.find(p);
    if (it == size_of_.end()) return;
    free_[it->second].push_back(p);
    size_of_.erase(it);
  }

 private:
  static constexpr size_t kSlabBytes = 64 << 20;
  std::mutex mu_;
  uint8_t* next_ = nullptr;  // the current slab's unused part
  size_t left_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_;  // by rounded size
  std::unordered_map<void*, size_t> size_of_;            // buffers in use
};

PinnedSlabs& Pinned() {
  static auto* slabs = new PinnedSlabs();  // outlives every user; never destroyed
  return *slabs;
}

}  // namespace

void* AllocPinned(size_t bytes) { return Pinned().Alloc(bytes); }

void FreePinned(void* p) { Pinned().Free(p); }

double CopyGBps(size_t bytes, int reps, std::string* error) {
  DeviceBuffer a, b;
  if (!a.Allocate(bytes, error) || !b.Allocate(bytes, error)) return -1;
  if (!Check(cudaMemset(a.ptr, 1, bytes), "cudaMemset", error)) return -1;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int i = 0; i <= reps; ++i) {
    cudaEventRecord(start);
    cudaMemcpy(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    if (i > 0) ms.push_back(t);  // the first is a warm-up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!Check(cudaGetLastError(), "device copy", error)) return -1;
  std::sort(ms.begin(), ms.end());
  const float median = ms[ms.size() / 2];
  return double(bytes) / (median / 1e3) / 1e9;
}

}  // namespace kvtier::gpu::cuda
