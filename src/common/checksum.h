#pragma once
// Block checksums: XXH3-64 (seed 0) over the payload bytes. Every read path verifies one.

#include <cstddef>
#include <cstdint>
#include <memory>

struct XXH3_state_s;

namespace kvtier {

uint64_t Checksum(const void* data, size_t size);

// Copies `size` bytes from src to dst and returns the checksum of the copied bytes. On AVX-512
// CPUs the hash is computed from the registers that carry the bytes (internal/xxh3_copy.h), and
// copies of 256 KiB or more bypass the caches as memcpy's do; elsewhere it copies and hashes in
// cache-sized chunks, so the hash reads what the copy just brought into cache.
uint64_t CopyWithChecksum(void* dst, const void* src, size_t size);

// The checksum of a block that arrives in pieces (a Get streamed in several buffers), computed
// while each piece is copied to its place, as CopyWithChecksum does for one piece.
class ChecksumCopier {
 public:
  ChecksumCopier();
  ~ChecksumCopier();
  ChecksumCopier(const ChecksumCopier&) = delete;
  ChecksumCopier& operator=(const ChecksumCopier&) = delete;

  void Reset();  // a new block
  // Copies the block's next `size` bytes from src to dst.
  void Copy(void* dst, const void* src, size_t size);
  uint64_t Digest() const;  // of the bytes copied since Reset

 private:
  struct FreeState {
    void operator()(XXH3_state_s* s) const;
  };
  std::unique_ptr<XXH3_state_s, FreeState> state_;
};

}  // namespace kvtier
