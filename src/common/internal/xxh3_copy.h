#pragma once
// A copy that computes XXH3-64 (seed 0) of the bytes it moves from the registers that carry them,
// so each byte is read from memory once: verifying a block read costs about what copying it does.
// Two instruction sets: AVX-512 (xxh3_copy_avx512.cc) and AVX2 (xxh3_copy_avx2.cc), chosen at run
// time;
// checksum.cc falls back to copying and hashing in cache-sized pieces where neither is there.
// The same loops without the hash (CopyLarge) copy payloads on the hot paths, so no large copy
// is left to glibc's memcpy, whose size heuristics take slow paths on some CPUs (rep movsb on
// AMD Zen between 2 KiB and the L2 size).

#include <cstddef>
#include <cstdint>

namespace kvtier::internal {

// Inputs this short take XXH3's short-input paths, which FusedCopyXxh3 does not implement.
constexpr size_t kFusedCopyMinBytes = 241;

// The instruction sets of the fused copy, narrowest first.
enum class CopyIsa : uint8_t {
  kNone = 0,    // glibc memcpy and XXH3 over cache-sized pieces
  kAvx2 = 1,    // two 32-byte vectors per 64-byte stripe
  kAvx512 = 2,  // one 64-byte vector per stripe
};
const char* CopyIsaName(CopyIsa isa);

// True where this CPU can run `isa` (kNone: always).
bool CpuHasCopyIsa(CopyIsa isa);

// The instruction set the copies of this process use: the widest this CPU has, capped by the
// environment variable KVTIER_COPY_ISA (none, avx2 or avx512; read once, at the first copy) or by
// SetCopyIsa. Tests force each narrower path this way to check its digests on any host.
CopyIsa ActiveCopyIsa();
// Caps the instruction set from now on (clamped to what the CPU has). For tests and benchmarks;
// not to be called while other threads copy.
void SetCopyIsa(CopyIsa isa);

// Copies `size` bytes from src to dst and returns XXH3_64bits(src, size) of the bytes copied.
// streamed: copies of 256 KiB or more write with non-temporal stores where dst allows (AVX-512:
// dst on a multiple of 8 bytes; AVX2: of 16), leaving dst out of the caches, and end with a
// store fence. Else plain stores, which leave dst in cache.
// REQUIRES: CpuHasCopyIsa(isa), isa != kNone; size >= kFusedCopyMinBytes; no overlap.
uint64_t FusedCopyXxh3(CopyIsa isa, void* dst, const void* src, size_t size, bool streamed);

// Copies `size` bytes with the vector loops of `isa` (stores as above).
// REQUIRES: CpuHasCopyIsa(isa), isa != kNone; no overlap.
void CopyLarge(CopyIsa isa, void* dst, const void* src, size_t size, bool streamed);

// The same for a block that arrives in pieces (a Get's payload, as gRPC hands it over): Begin,
// Copy each piece in order to the next bytes of dst, then Finish for XXH3_64bits of the whole.
// A stripe split between two pieces is hashed from a 64-byte carry. Plain stores only.
class FusedCopyXxh3Stream {
 public:
  // REQUIRES: CpuHasCopyIsa(isa), isa != kNone; size >= kFusedCopyMinBytes.
  void Begin(CopyIsa isa, void* dst, size_t size);
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
  CopyIsa isa_ = CopyIsa::kNone;
};

}  // namespace kvtier::internal
