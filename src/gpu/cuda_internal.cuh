#pragma once
// What the CUDA files of src/gpu share and callers of cuda_attention.h never see: the device's
// properties (cuda_device.cu), device memory and per-call workspaces (cuda_memory.cu), and the
// decode kernels' parameters and launchers (cuda_kernels.cu). Included only by .cu files.

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "gpu/attention.h"

namespace kvtier::gpu::cuda::internal {

// Shapes the kernels take (cuda_attention.h states them for callers).
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxGroup = 8;  // query heads per KV head
constexpr int kMaxHeadDim = 256;
constexpr int kMlaHeads = 4;     // MLA heads per thread block
constexpr int kMlaMaxRow = 768;  // latent_rank + rope_dim
constexpr int kMlaMaxRank = 512;

// True on success; else *error names `what` and CUDA's reason.
bool Check(cudaError_t err, const char* what, std::string* error);

// The device this process computes on, read once (the first call) and kept: the kernels size
// their grids from the SM count on every call, and cudaGetDeviceProperties costs milliseconds.
struct DeviceProps {
  bool ok = false;
  std::string why;  // when !ok: why there is no device
  int device = 0;
  int sms = 1;
  int major = 0, minor = 0;
  std::string name;
};
const DeviceProps& Props();

// Device memory that frees itself and grows (never shrinks) when asked for more.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t size = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  // At least `bytes`; a smaller buffer is replaced (its contents lost).
  bool Allocate(size_t bytes, std::string* error);
  // Allocate, then a synchronous copy of `bytes` from host `src`.
  bool CopyIn(const void* src, size_t bytes, std::string* error);
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

// A DeviceKv's scratch for its decode steps: page table, queries, per-split partial results,
// outputs and timing events. Taken from a process-wide pool when a DeviceKv is made and given
// back when it is destroyed, so the worker's DeviceKv per layer and request reuses the buffers
// and events of earlier ones instead of allocating its own.
struct Workspace {
  int device = 0;
  DeviceBuffer table, q, q_rope, recall, part_out, part_lse, out, lse;
  cudaEvent_t start = nullptr, stop = nullptr;
  // Cleared after a failure: work may still be queued on these buffers, so they are freed
  // rather than handed to the next user.
  bool reusable = true;
  ~Workspace();
};
struct WorkspaceReturn {
  void operator()(Workspace* w) const;
};
using WorkspacePtr = std::unique_ptr<Workspace, WorkspaceReturn>;
// A workspace of the current device (from the pool, or new); nullptr with *error set.
WorkspacePtr AcquireWorkspace(std::string* error);

// Copies the distinct blocks among pages[0, used) into one allocation (*blocks) and sets
// *device_pages to the page table over it.
bool UploadBlocks(const std::vector<const void*>& pages, int used, size_t block_bytes,
                  DeviceBuffer* blocks, std::vector<const void*>* device_pages, std::string* error);

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

// Tokens per split for `context` tokens over `units` thread-block rows (KV heads, or MLA head
// groups): enough thread blocks to fill every SM several times, no split shorter than a minimum.
int SplitLen(int context, int units);

// The kernels, queued on the current thread's default stream (no synchronisation).
// Whether the wide GQA kernel (16-byte loads, several tokens per warp) takes `dtype` and
// `head_dim` (it also needs every block's rows 16-byte aligned: the caller checks the pages).
bool WideGqaFits(ElemType dtype, int head_dim);
// The split kernel: the wide one when `wide` (REQUIRES: WideGqaFits and aligned pages), else the
// narrow one.
void LaunchGqaSplit(const GqaParams& p, ElemType dtype, int splits, bool wide);
// Whether the wide MLA kernel (16-byte loads) takes `dtype` and the row (16-byte aligned pages
// needed too).
bool WideMlaFits(ElemType dtype, int rank, int rope);
void LaunchMlaSplit(const MlaParams& p, ElemType dtype, int splits, bool wide);
// out[h][:] and lse[h] for `heads` heads from `splits` partial results.
void LaunchCombine(const float* part_out, const float* part_lse, int splits, int heads, int dim,
                   float* out, float* lse);

}  // namespace kvtier::gpu::cuda::internal
