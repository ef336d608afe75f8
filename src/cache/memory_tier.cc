#include "cache/memory_tier.h"

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

}  // namespace kvtier
