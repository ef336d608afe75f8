#pragma once
// The per-instruction-set kernels behind xxh3_copy.h, one namespace each; only xxh3_copy.cc
// calls them. XXH3's constants come from xxhash.h in each kernel file, so every result is
// XXH3_64bits by construction; only the long-input loop is written out, fused with the copy.

#include <cstddef>
#include <cstdint>

namespace kvtier::internal {

constexpr size_t kStripe = 64;                                    // XXH_STRIPE_LEN
constexpr size_t kSecretSize = 192;                               // sizeof(XXH3_kSecret)
constexpr size_t kStripesPerBlock = (kSecretSize - kStripe) / 8;  // XXH_SECRET_CONSUME_RATE
constexpr size_t kBlock = kStripe * kStripesPerBlock;
constexpr size_t kLastAccStart = 7;     // XXH_SECRET_LASTACC_START
constexpr size_t kMergeAccsStart = 11;  // XXH_SECRET_MERGEACCS_START
// Copies this large may write with non-temporal stores (xxh3_copy.h, `streamed`).
constexpr size_t kNonTemporalMinBytes = 256 << 10;

#define KVTIER_COPY_KERNELS                                                                  \
  /* FusedCopyXxh3. */                                                                       \
  uint64_t Copy(void* dst, const void* src, size_t size, bool streamed);                     \
  /* CopyLarge. */                                                                           \
  void CopyLarge(void* dst, const void* src, size_t size, bool streamed);                    \
  /* Copies stripes [first, first + count) of the long-input loop from src to dst (plain */  \
  /* stores; no copy when dst is null) and hashes them into acc, XXH3's 8 lanes. */          \
  void Stripes(uint64_t* acc, const uint8_t* src, uint8_t* dst, size_t count, size_t first); \
  /* XXH3_64bits of `size` bytes from the lanes and the input's last 64 bytes. */            \
  uint64_t Digest(const uint64_t* acc, const uint8_t* last_stripe, size_t size);

namespace avx512 {
KVTIER_COPY_KERNELS
}  // namespace avx512
namespace avx2 {
KVTIER_COPY_KERNELS
}  // namespace avx2

#undef KVTIER_COPY_KERNELS

}  // namespace kvtier::internal
