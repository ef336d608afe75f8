#pragma once
// DeviceArena: the HBM tier's memory, one CUDA allocation made at start on one GPU. The CPU cannot
// touch it; blocks move in and out with explicit copies. Built with the CUDA runtime where the
// toolkit exists (device_arena_cuda.cc), else as a build that reports no device
// (device_arena_none.cc). Either way the choice of whether a GPU is there is made at run time.
// Copies are synchronous and thread-safe.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier {

class DeviceArena {
 public:
  virtual ~DeviceArena() = default;
  virtual size_t size() const = 0;
  // Device pointer of the arena's first byte (for CUDA IPC handles and kernels).
  virtual void* device_base() const = 0;
  virtual std::string description() const = 0;
  virtual absl::Status CopyToDevice(uint64_t offset, const void* src, size_t bytes) = 0;
  virtual absl::Status CopyToHost(void* dst, uint64_t offset, size_t bytes) = 0;
};

// A DeviceArena of `bytes` on GPU `device`. UNAVAILABLE when this build has no CUDA support or the
// machine has no usable GPU (the message says which); RESOURCE_EXHAUSTED when the allocation fails.
absl::StatusOr<std::unique_ptr<DeviceArena>> OpenDeviceArena(size_t bytes, int device);

// Makes the HBM tier's arena: OpenDeviceArena, or a stand-in (StoreOptions::device_arena).
using DeviceArenaFactory =
    std::function<absl::StatusOr<std::unique_ptr<DeviceArena>>(size_t bytes, int device)>;

// A DeviceArena in host memory that only copies reach, as a GPU's would be: the HBM tier's paths
// (puts into HBM, reads out of it, demotion to host) then run on any machine.
std::unique_ptr<DeviceArena> NewHostMemoryDeviceArena(size_t bytes);

}  // namespace kvtier
