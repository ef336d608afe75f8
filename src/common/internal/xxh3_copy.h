#pragma once
// A copy that computes XXH3-64 (seed 0) of the bytes it moves from the registers that carry them,
// so each byte is read from memory once: verifying a block read costs about what copying it does.
// AVX-512 only; checksum.cc uses it where the CPU has AVX-512 and otherwise copies and hashes in
// cache-sized pieces.

#include <cstddef>
#include <cstdint>

namespace kvtier::internal {

// Inputs this short take XXH3's short-input paths, which FusedCopyXxh3 does not implement.
constexpr size_t kFusedCopyMinBytes = 241;

// True where this CPU can run FusedCopyXxh3 (AVX-512F).
bool HasFusedCopyXxh3();

// Copies `size` bytes from src to dst and returns XXH3_64bits(src, size) of the bytes copied.
// Copies of 256 KiB or more write with non-temporal stores (they leave dst out of the caches, as
// memcpy does for large copies), and end with a store fence.
// REQUIRES: HasFusedCopyXxh3(); size >= kFusedCopyMinBytes; the ranges do not overlap.
uint64_t FusedCopyXxh3(void* dst, const void* src, size_t size);

// The same for a block that arrives in pieces (a Get's payload, as gRPC hands it over): Begin,
// Copy each piece in order to the next bytes of dst, then Finish for XXH3_64bits of the whole.
// A stripe split between two pieces is hashed from a 64-byte carry. Plain stores only.
class FusedCopyXxh3Stream {
 public:
  // REQUIRES: HasFusedCopyXxh3(); size >= kFusedCopyMinBytes.
  void Begin(void* dst, size_t size);
  void Copy(const void* src, size_t n);  // REQUIRES: no more than the bytes still to come
  uint64_t Finish() const;               // REQUIRES: all `size` bytes copied

 private:
  alignas(64) uint64_t acc_[8];
  alignas(64) uint8_t carry_[64];  // the start of a stripe the last piece ended inside
  size_t carry_bytes_ = 0;
  uint8_t* dst_ = nullptr;
  size_t size_ = 0;
  size_t done_ = 0;     // bytes copied
  size_t stripes_ = 0;  // that the long-input loop hashes: (size - 1) / 64
  size_t hashed_ = 0;   // of those, done
};

}  // namespace kvtier::internal
