#pragma once
// The CUDA kernels of decode attention (cuda_attention.cu): dense and head-sparse GQA with
// split-KV (flash-decoding; the splits merged by their log-sum-exp on the GPU), and MLA in latent
// space. Same inputs and outputs as the CPU paths in attention.h. This header has no CUDA types:
// callers build without the toolkit's headers, and the library links cudart statically.
//
// Shapes the kernels take: head_dim a multiple of 32 up to 256 and at most 8 query heads per KV
// head (GQA); latent_rank + rope_dim up to 768 with latent_rank a multiple of 32 up to 512 (MLA).
// Anything else is an error that says so (the CPU paths take every shape).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gpu/attention.h"

namespace kvtier::gpu::cuda {

// Which decode kernels run (process-wide; for checks and A/B runs). kWide: the wide kernels
// (16-byte loads; GQA several tokens per warp; the next tokens loaded before the math) where the
// element type is 2 bytes, the blocks are 16-byte aligned, and GQA's head_dim is 32, 64, 128 or
// 256 (MLA: latent_rank and latent_rank + rope_dim multiples of 8); else, and with kNarrow
// always, the narrow ones (one token per warp, 2- or 4-byte loads). $KVTIER_GPU_KERNELS=narrow
// sets kNarrow at start.
enum class KernelWidth { kWide, kNarrow };
void SetKernelWidth(KernelWidth width);

// Whether a CUDA device is there to run the kernels; else *why says why not.
bool Available(std::string* why);
// "NVIDIA H200 (sm_90, 132 SMs)", or "" without a device.
std::string DeviceName();

// A context's blocks uploaded to GPU memory once (one allocation, the page table kept), for
// repeated decode steps over it.
class DeviceKv {
 public:
  static std::unique_ptr<DeviceKv> Upload(const PagedKv& kv, std::string* error);
  static std::unique_ptr<DeviceKv> UploadMla(const MlaPagedKv& kv, std::string* error);
  ~DeviceKv();
  DeviceKv(const DeviceKv&) = delete;
  DeviceKv& operator=(const DeviceKv&) = delete;

  // Blocks already in GPU memory: kv.blocks are device addresses (DeviceUnits), used as they are
  // (only the page table is copied). They must stay there while this DeviceKv is used.
  static std::unique_ptr<DeviceKv> OnDevice(const PagedKv& kv, std::string* error);
  static std::unique_ptr<DeviceKv> OnDeviceMla(const MlaPagedKv& kv, std::string* error);

  // One step; *ms (if given) receives the kernels' time (CUDA events). An empty result with
  // *error set on failure. REQUIRES: ValidateDecode(kv, req).empty() for the uploaded kv.
  DecodeResult Decode(const DecodeRequest& req, float* ms, std::string* error);
  DecodeResult MlaDecode(const MlaRequest& req, float* ms, std::string* error);

  size_t bytes() const;  // of the uploaded blocks

 private:
  struct Impl;
  explicit DeviceKv(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class DeviceUnits;

// GPU copies of host buffers that a DeviceUnits::Map call queued, held in GPU memory until this is
// destroyed (which waits for the copies).
class DeviceMapping {
 public:
  ~DeviceMapping();
  DeviceMapping(const DeviceMapping&) = delete;
  DeviceMapping& operator=(const DeviceMapping&) = delete;
  const std::vector<const void*>& addresses() const;  // device addresses, in the sources' order
  uint64_t copied_bytes() const;                      // copied by this Map (the rest was there)
  // Makes the kernels launched next (on this thread's default stream) wait for the copies.
  bool OrderBefore(std::string* error) const;

 private:
  friend class DeviceUnits;
  struct Impl;
  explicit DeviceMapping(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The worker's blocks in GPU memory (src/gpu/unit_cache.h over cudaMalloc): a unit of the
// worker's pool that is still there at the same version is not copied again. Copies run on a
// stream of their own; kernels wait for them only where DeviceMapping::OrderBefore says so, so the
// next layer's copies overlap this layer's kernels. Thread-safe.
class DeviceUnits {
 public:
  struct Source {
    uint64_t id = 0;       // the host buffer
    uint64_t version = 0;  // of its bytes: a new version is copied again
    const void* host = nullptr;
    size_t bytes = 0;
  };
  struct Stats {
    uint64_t bytes = 0, units = 0, copied_bytes = 0, reused_bytes = 0, evictions = 0;
  };

  static std::unique_ptr<DeviceUnits> Create(uint64_t capacity_bytes, std::string* error);
  ~DeviceUnits();
  DeviceUnits(const DeviceUnits&) = delete;
  DeviceUnits& operator=(const DeviceUnits&) = delete;

  // GPU copies of `sources`, the missing ones queued for copying. The host buffers must stay
  // unchanged until the mapping's kernels have run (or the mapping is gone). nullptr with *error
  // set when GPU memory cannot be had.
  std::unique_ptr<DeviceMapping> Map(const std::vector<Source>& sources, std::string* error);
  Stats stats() const;

 private:
  struct Impl;
  explicit DeviceUnits(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Page-locked host memory (cudaHostAlloc, carved from 64 MiB slabs that are kept): copies from
// it to the GPU run asynchronously at the link's full speed. nullptr when it cannot be had, and
// for buffers over 16 MiB (the caller then uses ordinary memory).
void* AllocPinned(size_t bytes);
void FreePinned(void* p);

// Upload and one step, for tests.
DecodeResult Decode(const PagedKv& kv, const DecodeRequest& req, std::string* error);
DecodeResult MlaDecode(const MlaPagedKv& kv, const MlaRequest& req, std::string* error);

// Device-to-device cudaMemcpy of `bytes`, median GB/s over `reps` copies (read + write counted
// once, as the bytes a kernel reads); negative with *error set on failure.
double CopyGBps(size_t bytes, int reps, std::string* error);

}  // namespace kvtier::gpu::cuda
