#pragma once
// MemoryTier: a tier whose blocks live in one arena of memory (host RAM, or HBM), cut into chunks
// by a SlabAllocator. Where the CPU can reach the memory, HostPointer gives readers the bytes
// themselves; the HBM tier copies in and out. Allocation is thread-safe (the tier's
// own leaf lock); copies need no lock (the caller owns the chunk or holds a pin on its block).
//
// HostMemoryTier is the host tier (HostArena); DeviceMemoryTier is the HBM tier, over any
// DeviceArena: the CUDA one where a GPU is present, or a host-memory stand-in
// (NewHostMemoryDeviceArena) with which the HBM paths run in tests without a GPU.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "cache/device_arena.h"
#include "cache/host_arena.h"
#include "cache/slab_allocator.h"
#include "common/mutex.h"
#include "common/tier.h"

namespace kvtier {

class MemoryTier {
 public:
  virtual ~MemoryTier() = default;
  Tier tier() const { return tier_; }

  // The offset of a chunk of at least `bytes`, or nullopt when the tier is full.
  std::optional<uint64_t> Allocate(size_t bytes);
  void Free(uint64_t offset, size_t bytes);
  // Bytes that allocations of `bytes` each could still get.
  size_t AvailableBytes(size_t bytes) const;
  size_t capacity_bytes() const;
  size_t used_bytes() const;

  // The chunk's bytes, where this process's CPU can address them; else nullptr (copy instead).
  virtual uint8_t* HostPointer(uint64_t offset) const = 0;

 protected:
  MemoryTier(Tier tier, size_t region_bytes, size_t slab_bytes)
      : tier_(tier), alloc_(region_bytes, slab_bytes) {}

 private:
  const Tier tier_;
  mutable Mutex mu_;
  SlabAllocator alloc_ ABSL_GUARDED_BY(mu_);
};

class HostMemoryTier final : public MemoryTier {
 public:
  // REQUIRES: region_bytes <= arena->size().
  HostMemoryTier(std::unique_ptr<HostArena> arena, size_t region_bytes, size_t slab_bytes)
      : MemoryTier(Tier::kHost, region_bytes, slab_bytes), arena_(std::move(arena)) {}
  uint8_t* HostPointer(uint64_t offset) const override { return arena_->base() + offset; }
  const HostArena& arena() const { return *arena_; }

 private:
  std::unique_ptr<HostArena> arena_;
};

class DeviceMemoryTier final : public MemoryTier {
 public:
  DeviceMemoryTier(std::unique_ptr<DeviceArena> arena, size_t slab_bytes)
      : MemoryTier(Tier::kHbm, arena->size(), slab_bytes), arena_(std::move(arena)) {}
  uint8_t* HostPointer(uint64_t) const override { return nullptr; }
  absl::Status CopyIn(uint64_t offset, const void* src, size_t bytes) {
    return arena_->CopyToDevice(offset, src, bytes);
  }
  absl::Status CopyOut(void* dst, uint64_t offset, size_t bytes) {
    return arena_->CopyToHost(dst, offset, bytes);
  }
  std::string description() const { return arena_->description(); }
  const DeviceArena& arena() const { return *arena_; }

 private:
  std::unique_ptr<DeviceArena> arena_;
};

}  // namespace kvtier
