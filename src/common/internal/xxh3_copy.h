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

}  // namespace kvtier::internal
