#pragma once
// Block checksums: XXH3-64 (seed 0) over the payload bytes. Every read path verifies one.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/internal/xxh3_copy.h"

struct XXH3_state_s;

namespace kvtier {

uint64_t Checksum(const void* data, size_t size);

// Where a copy's destination is read next, which decides how a large copy stores it.
enum class CopyTo : uint8_t {
  // Soon, by this core: a buffer that is sent or reused next. Plain stores keep it in cache.
  kCache,
  // Later, or by another device: a destination larger than the caches (a batch of reads into
  // registered buffers). Copies of 256 KiB or more use non-temporal stores, which spare the
  // read of each destination line and the eviction of what the caches hold.
  kMemory,
};

// Copies `size` bytes from src to dst and returns the checksum of the copied bytes. On AVX2 and
// AVX-512 CPUs the hash is computed from the registers that carry the bytes
// (internal/xxh3_copy.h), and stored as `to` says;
// elsewhere (or with KVTIER_COPY_ISA=none) it copies and hashes in cache-sized chunks, so the
// hash reads what the copy just brought into cache.
uint64_t CopyWithChecksum(void* dst, const void* src, size_t size, CopyTo to = CopyTo::kMemory);

// Copies `size` bytes with the same vector loops, without the hash: the payload copies of hot
// paths, which glibc's memcpy would serve with `rep movsb` on some CPUs at a fraction of the
// memory's speed.
void CopyBytes(void* dst, const void* src, size_t size, CopyTo to = CopyTo::kMemory);

// The checksum of bytes that arrive in pieces, without copying them (their copy goes elsewhere,
// to a GPU for one).
class ChecksumStream {
 public:
  ChecksumStream();
  ~ChecksumStream();
  ChecksumStream(const ChecksumStream&) = delete;
  ChecksumStream& operator=(const ChecksumStream&) = delete;
  void Update(const void* data, size_t n);
  uint64_t Digest() const;

 private:
  struct FreeState {
    void operator()(XXH3_state_s* s) const;
  };
  std::unique_ptr<XXH3_state_s, FreeState> state_;
};

// The checksum of a block that arrives in pieces (a Get streamed in several buffers), computed
// while each piece is copied to its place, as CopyWithChecksum does for one piece: on AVX2 and
// AVX-512 CPUs from the registers that carry the bytes (internal::FusedCopyXxh3Stream),
// elsewhere by hashing each cache-sized chunk just after copying it.
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
