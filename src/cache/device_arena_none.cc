// DeviceArena for builds without the CUDA toolkit: there is never a device.
#include "cache/device_arena.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<DeviceArena>> OpenDeviceArena(size_t, int) {
  return absl::UnavailableError("HBM tier: this build of kvtier has no CUDA support");
}

}  // namespace kvtier
