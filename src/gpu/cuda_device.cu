// The device context of cuda_attention.h: whether there is a GPU, its name, and the properties
// the kernels size themselves by, read once per process.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "gpu/cuda_attention.h"
#include "gpu/cuda_internal.cuh"

namespace kvtier::gpu::cuda {
namespace internal {

bool Check(cudaError_t err, const char* what, std::string* error) {
  if (err == cudaSuccess) return true;
  *error = std::string(what) + ": " + cudaGetErrorString(err);
  return false;
}

namespace {

DeviceProps ReadProps() {
  DeviceProps p;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    p.why = std::string("no CUDA device: ") + cudaGetErrorString(err);
    return p;
  }
  if (n == 0) {
    p.why = "no CUDA device";
    return p;
  }
  cudaDeviceProp prop;
  if (!Check(cudaGetDevice(&p.device), "cudaGetDevice", &p.why) ||
      !Check(cudaGetDeviceProperties(&prop, p.device), "cudaGetDeviceProperties", &p.why)) {
    return p;
  }
  p.ok = true;
  p.sms = std::max(prop.multiProcessorCount, 1);
  p.major = prop.major;
  p.minor = prop.minor;
  p.name = prop.name;
  return p;
}

}  // namespace

const DeviceProps& Props() {
  static const DeviceProps* props = new DeviceProps(ReadProps());  // thread-safe, once
  return *props;
}

}  // namespace internal

bool Available(std::string* why) {
  const internal::DeviceProps& p = internal::Props();
  if (!p.ok) *why = p.why;
  return p.ok;
}

std::string DeviceName() {
  const internal::DeviceProps& p = internal::Props();
  if (!p.ok) return "";
  return p.name + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.sms) + " SMs)";
}

}  // namespace kvtier::gpu::cuda
