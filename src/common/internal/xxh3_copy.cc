#include "common/internal/xxh3_copy.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/internal/xxh3_copy_kernels.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtier::internal {
namespace {

CopyIsa WidestOfCpu() {
  if (__builtin_cpu_supports("avx512f")) return CopyIsa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return CopyIsa::kAvx2;
  return CopyIsa::kNone;
}

CopyIsa FromEnvironment() {
  const char* v = std::getenv("KVTIER_COPY_ISA");
  const CopyIsa widest = WidestOfCpu();
  if (v == nullptr) return widest;
  const std::string_view s(v);
  CopyIsa cap = widest;
  if (s == "none") cap = CopyIsa::kNone;
  if (s == "avx2") cap = CopyIsa::kAvx2;
  return std::min(cap, widest);
}

std::atomic<CopyIsa>& Active() {
  static std::atomic<CopyIsa> isa{FromEnvironment()};
  return isa;
}

}  // namespace

const char* CopyIsaName(CopyIsa isa) {
  switch (isa) {
    case CopyIsa::kAvx512:
      return "avx512";
    case CopyIsa::kAvx2:
      return "avx2";
    case CopyIsa::kNone:
      break;
  }
  return "none";
}

bool CpuHasCopyIsa(CopyIsa isa) { return isa <= WidestOfCpu(); }

CopyIsa ActiveCopyIsa() { return Active().load(std::memory_order_relaxed); }

void SetCopyIsa(CopyIsa isa) {
  Active().store(std::min(isa, WidestOfCpu()), std::memory_order_relaxed);
}

uint64_t FusedCopyXxh3(CopyIsa isa, void* dst, const void* src, size_t size, bool streamed) {
  return isa == CopyIsa::kAvx512 ? avx512::Copy(dst, src, size, streamed)
                                 : avx2::Copy(dst, src, size, streamed);
}

void CopyLarge(CopyIsa isa, void* dst, const void* src, size_t size, bool streamed) {
  if (isa == CopyIsa::kAvx512) {
    avx512::CopyLarge(dst, src, size, streamed);
  } else {
    avx2::CopyLarge(dst, src, size, streamed);
  }
}

void FusedCopyXxh3Stream::Begin(CopyIsa isa, void* dst, size_t size) {
  constexpr uint64_t kInit[8] = XXH3_INIT_ACC;
  std::memcpy(acc_, kInit, sizeof(acc_));
  carry_bytes_ = 0;
  dst_ = static_cast<uint8_t*>(dst);
  size_ = size;
  done_ = 0;
  stripes_ = (size - 1) / kStripe;
  hashed_ = 0;
  isa_ = isa;
}

void FusedCopyXxh3Stream::Copy(const void* src_v, size_t n) {
  auto stripes = isa_ == CopyIsa::kAvx512 ? avx512::Stripes : avx2::Stripes;
  const auto* src = static_cast<const uint8_t*>(src_v);
  uint8_t* d = dst_ + done_;
  done_ += n;
  if (carry_bytes_ > 0) {  // finish the stripe the last piece began
    const size_t m = std::min(kStripe - carry_bytes_, n);
    std::memcpy(carry_ + carry_bytes_, src, m);
    std::memcpy(d, src, m);
    carry_bytes_ += m;
    src += m;
    d += m;
    n -= m;
    if (carry_bytes_ < kStripe) return;
    stripes(acc_, carry_, nullptr, 1, hashed_++);
    carry_bytes_ = 0;
  }
  const size_t whole = std::min(n / kStripe, stripes_ - hashed_);
  stripes(acc_, src, d, whole, hashed_);
  hashed_ += whole;
  src += whole * kStripe;
  d += whole * kStripe;
  n -= whole * kStripe;
  if (n > 0) {
    std::memcpy(d, src, n);
    if (hashed_ < stripes_) {  // n < 64: the start of the next stripe
      std::memcpy(carry_, src, n);
      carry_bytes_ = n;
    }
  }
}

uint64_t FusedCopyXxh3Stream::Finish() const {
  // The input's last 64 bytes are read back from dst, where every piece has landed.
  const uint8_t* last = dst_ + size_ - kStripe;
  return isa_ == CopyIsa::kAvx512 ? avx512::Digest(acc_, last, size_)
                                  : avx2::Digest(acc_, last, size_);
}

}  // namespace kvtier::internal
