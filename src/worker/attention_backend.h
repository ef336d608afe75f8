#pragma once
// AttentionBackend: where the worker computes a sequence's attention, layer by layer, over the
// blocks in its pool: the CPU fast path of src/gpu, or the CUDA kernels with the pool's blocks
// mirrored in GPU memory. The worker runs a request on its backend and, when a GPU step fails
// (a shape its kernels do not take, a device error), the rest of the request on the CPU.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gpu/attention.h"
#include "worker/block_pool.h"

namespace kvtier::worker {

// A sequence's blocks made ready for its layers (on a GPU: their copies queued).
class StagedLayers {
 public:
  virtual ~StagedLayers() = default;
  uint64_t copied_bytes = 0;  // moved to the device for this sequence (the rest was there)
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  // "cpu", or the GPU's name.
  virtual const std::string& device() const = 0;
  // Readies the sequence's blocks, layer after layer: units[i][b] is block b of its layer i (in
  // host memory; unchanged until the sequence's layers have run). Null when there is nothing to
  // stage, or it cannot be (a GPU then copies each layer's blocks as it runs).
  virtual std::unique_ptr<StagedLayers> Stage(
      const std::vector<std::vector<const BlockPool::Unit*>>& units) = 0;
  // One layer (the sequence's layer `i`, staged by `staged` if not null) over kv.blocks, host
  // addresses. An error means this backend could not compute it.
  virtual absl::StatusOr<gpu::DecodeResult> Decode(const gpu::PagedKv& kv,
                                                   const gpu::DecodeRequest& req,
                                                   StagedLayers* staged, size_t i) = 0;
  virtual absl::StatusOr<gpu::DecodeResult> MlaDecode(const gpu::MlaPagedKv& kv,
                                                      const gpu::MlaRequest& req,
                                                      StagedLayers* staged, size_t i) = 0;
  // Bytes of blocks kept in device memory (0 on the CPU).
  virtual uint64_t device_pool_bytes() const { return 0; }
  // The memory fetched blocks should land in: page-locked for a GPU (its copies then run
  // asynchronously, beside the kernels), ordinary otherwise.
  virtual UnitMemory unit_memory() const { return {}; }
};

// The CPU fast path, on up to `threads` threads a layer (0: every core): the caller's and those
// of one pool that every request shares.
std::unique_ptr<AttentionBackend> NewCpuBackend(int threads);

// The CUDA kernels on this process's GPU, blocks kept in up to `pool_bytes` of GPU memory
// (0: copied per step). Null with *why when there is no GPU (or the build has no CUDA).
std::unique_ptr<AttentionBackend> NewCudaBackend(uint64_t pool_bytes, std::string* why);

}  // namespace kvtier::worker
