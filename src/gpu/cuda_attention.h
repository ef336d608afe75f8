#pragma once
// The CUDA kernels of decode attention (cuda_attention.cu): dense and head-sparse GQA with
// split-KV (flash-decoding; the splits merged by their log-sum-exp on the GPU), and MLA in latent
// space. Same inputs and outputs as the CPU paths in attention.h. This header has no CUDA types:
// callers build without the toolkit's headers, and the library links cudart statically.
//
// Shapes the kernels take: head_dim a multiple of 32 up to 256 and at most 8 query heads per KV
// head (GQA); latent_rank + rope_dim up to 768 with latent_rank a multiple of 32 up to 512 (MLA).
// Anything else is an error that says so (the CPU paths take every shape).

#include <memory>
#include <string>

#include "gpu/attention.h"

namespace kvtier::gpu::cuda {

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

// Upload and one step, for tests.
DecodeResult Decode(const PagedKv& kv, const DecodeRequest& req, std::string* error);
DecodeResult MlaDecode(const MlaPagedKv& kv, const MlaRequest& req, std::string* error);

// Device-to-device cudaMemcpy of `bytes`, median GB/s over `reps` copies (read + write counted
// once, as the bytes a kernel reads); negative with *error set on failure.
double CopyGBps(size_t bytes, int reps, std::string* error);

}  // namespace kvtier::gpu::cuda
