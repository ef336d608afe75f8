// DeviceArena on the CUDA runtime API (linked statically; no kernels, so no nvcc needed here).
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "cache/device_arena.h"

namespace kvtier {
namespace {

absl::Status CudaError(const char* what, cudaError_t err) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

class CudaDeviceArena final : public DeviceArena {
 public:
  CudaDeviceArena(int device, void* base, size_t size, std::string name)
      : device_(device), base_(base), size_(size), name_(std::move(name)) {}
  ~CudaDeviceArena() override {
    cudaSetDevice(device_);
    cudaFree(base_);
  }
  size_t size() const override { return size_; }
  void* device_base() const override { return base_; }
  std::string description() const override { return name_; }

  absl::Status CopyToDevice(uint64_t offset, const void* src, size_t bytes) override {
    if (offset + bytes > size_) return absl::OutOfRangeError("HBM copy past the arena");
    cudaSetDevice(device_);
    cudaError_t err =
        cudaMemcpy(static_cast<uint8_t*>(base_) + offset, src, bytes, cudaMemcpyHostToDevice);
    return err == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpy to HBM", err);
  }
  absl::Status CopyToHost(void* dst, uint64_t offset, size_t bytes) override {
    if (offset + bytes > size_) return absl::OutOfRangeError("HBM copy past the arena");
    cudaSetDevice(device_);
    cudaError_t err =
        cudaMemcpy(dst, static_cast<uint8_t*>(base_) + offset, bytes, cudaMemcpyDeviceToHost);
    return err == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpy from HBM", err);
  }

 private:
  int device_;
  void* base_;
  size_t size_;
  std::string name_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceArena>> OpenDeviceArena(size_t bytes, int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return absl::UnavailableError(
        absl::StrCat("HBM tier: no usable GPU (",
                     err == cudaSuccess ? "none found" : cudaGetErrorString(err), ")"));
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("hbm.device: ", device, " but the machine has ", count, " GPU(s)"));
  }
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError("cudaSetDevice", err);
  void* base = nullptr;
  if ((err = cudaMalloc(&base, bytes)) != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("HBM tier: cudaMalloc of ", bytes, " bytes: ", cudaGetErrorString(err)));
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device);
  return std::unique_ptr<DeviceArena>(
      new CudaDeviceArena(device, base, bytes, absl::StrCat("GPU ", device, " (", prop.name, ")")));
}

}  // namespace kvtier
