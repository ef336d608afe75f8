#include "cache/memory_tier.h"

#include "common/checksum.h"

namespace kvtier {

std::optional<uint64_t> MemoryTier::Allocate(size_t bytes) {
  MutexLock l(&mu_);
  return alloc_.Allocate(bytes);
}

void MemoryTier::Free(uint64_t offset, size_t bytes) {
  MutexLock l(&mu_);
  alloc_.Free(offset, bytes);
}

size_t MemoryTier::AvailableBytes(size_t bytes) const {
  MutexLock l(&mu_);
  return alloc_.AvailableBytes(bytes);
}

size_t MemoryTier::capacity_bytes() const {
  MutexLock l(&mu_);
  return alloc_.capacity_bytes();
}

size_t MemoryTier::used_bytes() const {
  MutexLock l(&mu_);
  return alloc_.used_bytes();
}

absl::Status HostMemoryTier::CopyIn(uint64_t offset, const void* src, size_t bytes) {
  CopyBytes(HostPointer(offset), src, bytes, CopyTo::kMemory);
  return absl::OkStatus();
}

absl::Status HostMemoryTier::CopyOut(void* dst, uint64_t offset, size_t bytes) {
  CopyBytes(dst, HostPointer(offset), bytes, CopyTo::kCache);
  return absl::OkStatus();
}

}  // namespace kvtier
