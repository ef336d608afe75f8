#pragma once
// Block checksums: XXH3-64 (seed 0) over the payload bytes. Every read path verifies one.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/internal/xxh3_copy.h"

struct XXH3_state_s;

namespace kvtier {

uint64_t Checksum(const void* data, size_t size);

// Copies `size` bytes from src to dst and returns the checksum of the copied bytes. On AVX-512
// CPUs the hash is computed from the registers that carry the bytes (internal/xxh3_copy.h), and
// copies of 256 KiB or more bypass the caches as memcpy's do; elsewhere it copies and hashes in
// cache-sized chunks, so the hash reads what the copy just brought into cache.
uint64_t CopyWithChecksum(void* dst, const void* src, size_t size);

// The checksum of a block that arrives in pieces (a Get streamed in several buffers), computed
// while each piece is copied to its place, as CopyWithChecksum does for one piece: on AVX-512
// CPUs from the registers that carry the bytes (internal::FusedCopyXxh3Stream), elsewhere by
// hashing each cache-sized chunk just after copying it.
class ChecksumCopier {
 public:
  ChecksumCopier();
  ~ChecksumCopier();
  ChecksumCopier(const ChecksumCopier&) = delete;
  ChecksumCopier& operator=(const ChecksumCopier&) = delete;

  // A new block of `size` bytes, to be copied to dst[0, size).
  void Reset(void* dst, size_t size);
  // Copies the block's next `n` bytes from src to the next `n` bytes of dst.
  // REQUIRES: no more than the bytes still to come.
  void Copy(const void* src, size_t n);
  // Of the block. REQUIRES: all its bytes copied.
  uint64_t Digest() const;

 private:
  struct FreeState {
    void operator()(XXH3_state_s* s) const;
  };
  std::unique_ptr<XXH3_state_s, FreeState> state_;  // where the fused copy is not used
  internal::FusedCopyXxh3Stream fused_;
  bool use_fused_ = false;
  uint8_t* dst_ = nullptr;
  size_t done_ = 0;
};

}  // namespace kvtier
