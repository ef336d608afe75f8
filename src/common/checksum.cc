#include "common/checksum.h"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
// Debian's libxxhash picks the widest vector unit (AVX2/AVX-512) at run time through these entry
// points; the plain ones are SSE2 only, three times slower on long inputs. Same hash values.
#include <xxh_x86dispatch.h>

#include <cstring>
#include <new>

#include "common/internal/xxh3_copy.h"

namespace kvtier {

uint64_t Checksum(const void* data, size_t size) { return XXH3_64bits(data, size); }

namespace {

// Copy and hash in pieces that stay in L1/L2 between the two.
constexpr size_t kChunk = 64 * 1024;
// Copies this short are glibc's (its small-copy paths are fast everywhere); longer ones may take
// `rep movsb`, which is slow on some CPUs.
constexpr size_t kVectorCopyMinBytes = 4096;

void CopyAndUpdate(XXH3_state_t* state, void* dst, const void* src, size_t size) {
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t off = 0; off < size; off += kChunk) {
    const size_t n = size - off < kChunk ? size - off : kChunk;
    std::memcpy(d + off, s + off, n);
    XXH3_64bits_update(state, d + off, n);
  }
}

}  // namespace

void CopyBytes(void* dst, const void* src, size_t size, CopyTo to) {
  const internal::CopyIsa isa = internal::ActiveCopyIsa();
  if (size >= kVectorCopyMinBytes && isa != internal::CopyIsa::kNone) {
    internal::CopyLarge(isa, dst, src, size, to == CopyTo::kMemory);
  } else {
    std::memcpy(dst, src, size);
  }
}

uint64_t CopyWithChecksum(void* dst, const void* src, size_t size, CopyTo to) {
  const internal::CopyIsa isa = internal::ActiveCopyIsa();
  if (size >= internal::kFusedCopyMinBytes && isa != internal::CopyIsa::kNone) {
    return internal::FusedCopyXxh3(isa, dst, src, size, to == CopyTo::kMemory);
  }
  if (size <= kChunk) {
    // memcpy's pointers must not be null even for 0 bytes (an empty vector's data() is).
    if (size > 0) std::memcpy(dst, src, size);
    return XXH3_64bits(dst, size);
  }
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  CopyAndUpdate(&state, dst, src, size);
  return XXH3_64bits_digest(&state);
}

void ChecksumCopier::FreeState::operator()(XXH3_state_s* s) const { XXH3_freeState(s); }
void ChecksumStream::FreeState::operator()(XXH3_state_s* s) const { XXH3_freeState(s); }

ChecksumStream::ChecksumStream() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(state_.get());
}
ChecksumStream::~ChecksumStream() = default;
void ChecksumStream::Update(const void* data, size_t n) {
  XXH3_64bits_update(state_.get(), data, n);
}
uint64_t ChecksumStream::Digest() const { return XXH3_64bits_digest(state_.get()); }

ChecksumCopier::ChecksumCopier() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  Reset(nullptr, 0);
}

ChecksumCopier::~ChecksumCopier() = default;

void ChecksumCopier::Reset(void* dst, size_t size) {
  dst_ = static_cast<uint8_t*>(dst);
  done_ = 0;
  const internal::CopyIsa isa = internal::ActiveCopyIsa();
  use_fused_ = size >= internal::kFusedCopyMinBytes && isa != internal::CopyIsa::kNone;
  if (use_fused_) {
    fused_.Begin(isa, dst, size);
  } else {
    XXH3_64bits_reset(state_.get());
  }
}

void ChecksumCopier::Copy(const void* src, size_t n) {
  if (use_fused_) {
    fused_.Copy(src, n);
  } else {
    CopyAndUpdate(state_.get(), dst_ + done_, src, n);
  }
  done_ += n;
}

uint64_t ChecksumCopier::Digest() const {
  return use_fused_ ? fused_.Finish() : XXH3_64bits_digest(state_.get());
}

}  // namespace kvtier
