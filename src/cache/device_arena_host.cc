// The host-memory stand-in for a GPU's arena (device_arena.h).
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cache/device_arena.h"
#include "common/checksum.h"

namespace kvtier {
namespace {

class HostMemoryDeviceArena final : public DeviceArena {
 public:
  explicit HostMemoryDeviceArena(size_t bytes) : bytes_(new uint8_t[bytes]), size_(bytes) {}
  size_t size() const override { return size_; }
  void* device_base() const override { return bytes_.get(); }
  std::string description() const override {
    return absl::StrCat("host memory standing in for a GPU (", size_ >> 20, " MiB)");
  }
  absl::Status CopyToDevice(uint64_t offset, const void* src, size_t bytes) override {
    if (offset + bytes > size_) return absl::OutOfRangeError("HBM copy past the arena");
    CopyBytes(bytes_.get() + offset, src, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyToHost(void* dst, uint64_t offset, size_t bytes) override {
    if (offset + bytes > size_) return absl::OutOfRangeError("HBM copy past the arena");
    CopyBytes(dst, bytes_.get() + offset, bytes, CopyTo::kCache);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<uint8_t[]> bytes_;
  size_t size_;
};

}  // namespace

std::unique_ptr<DeviceArena> NewHostMemoryDeviceArena(size_t bytes) {
  return std::make_unique<HostMemoryDeviceArena>(bytes);
}

}  // namespace kvtier
