// cuda_attention.h in a build without the CUDA toolkit: no device is ever available, and every
// call says why. Callers pick the CPU paths after Available() says no.
#include "gpu/cuda_attention.h"

namespace kvtier::gpu::cuda {
namespace {

constexpr const char* kNoKernels = "this build has no CUDA kernels (no CUDA toolkit)";

}  // namespace

bool Available(std::string* why) {
  *why = kNoKernels;
  return false;
}
std::string DeviceName() { return ""; }

void SetKernelWidth(KernelWidth) {}

struct DeviceKv::Impl {};
DeviceKv::DeviceKv(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceKv::~DeviceKv() = default;
std::unique_ptr<DeviceKv> DeviceKv::Upload(const PagedKv&, std::string* error) {
  *error = kNoKernels;
  return nullptr;
}
std::unique_ptr<DeviceKv> DeviceKv::UploadMla(const MlaPagedKv&, std::string* error) {
  *error = kNoKernels;
  return nullptr;
}
std::unique_ptr<DeviceKv> DeviceKv::OnDevice(const PagedKv&, std::string* error) {
  *error = kNoKernels;
  return nullptr;
}
std::unique_ptr<DeviceKv> DeviceKv::OnDeviceMla(const MlaPagedKv&, std::string* error) {
  *error = kNoKernels;
  return nullptr;
}
DecodeResult DeviceKv::Decode(const DecodeRequest&, float*, std::string* error) {
  *error = kNoKernels;
  return {};
}
DecodeResult DeviceKv::MlaDecode(const MlaRequest&, float*, std::string* error) {
  *error = kNoKernels;
  return {};
}
size_t DeviceKv::bytes() const { return 0; }

struct DeviceMapping::Impl {
  std::vector<const void*> none;
};
DeviceMapping::DeviceMapping(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceMapping::~DeviceMapping() = default;
const std::vector<const void*>& DeviceMapping::addresses() const { return impl_->none; }
uint64_t DeviceMapping::copied_bytes() const { return 0; }
bool DeviceMapping::OrderBefore(std::string* error) const {
  *error = kNoKernels;
  return false;
}

struct DeviceUnits::Impl {};
DeviceUnits::DeviceUnits(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceUnits::~DeviceUnits() = default;
std::unique_ptr<DeviceUnits> DeviceUnits::Create(uint64_t, std::string* error) {
  *error = kNoKernels;
  return nullptr;
}
std::unique_ptr<DeviceMapping> DeviceUnits::Map(const std::vector<Source>&, std::string* error) {
  *error = kNoKernels;
  return nullptr;
}
DeviceUnits::Stats DeviceUnits::stats() const { return {}; }

void* AllocPinned(size_t) { return nullptr; }
void FreePinned(void*) {}

DecodeResult Decode(const PagedKv&, const DecodeRequest&, std::string* error) {
  *error = kNoKernels;
  return {};
}
DecodeResult MlaDecode(const MlaPagedKv&, const MlaRequest&, std::string* error) {
  *error = kNoKernels;
  return {};
}
double CopyGBps(size_t, int, std::string* error) {
  *error = kNoKernels;
  return -1;
}

}  // namespace kvtier::gpu::cuda
