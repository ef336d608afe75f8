#include "common/checksum.h"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
// Debian's libxxhash picks the widest vector unit (AVX2/AVX-512) at run time through these entry
// points; the plain ones are SSE2 only, three times slower on long inputs. Same hash values.
#include <xxh_x86dispatch.h>

#include <cstring>

namespace kvtier {

uint64_t Checksum(const void* data, size_t size) { return XXH3_64bits(data, size); }

uint64_t CopyWithChecksum(void* dst, const void* src, size_t size) {
  constexpr size_t kChunk = 64 * 1024;
  if (size <= kChunk) {
    std::memcpy(dst, src, size);
    return XXH3_64bits(dst, size);
  }
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t off = 0; off < size; off += kChunk) {
    const size_t n = size - off < kChunk ? size - off : kChunk;
    std::memcpy(d + off, s + off, n);
    XXH3_64bits_update(&state, d + off, n);
  }
  return XXH3_64bits_digest(&state);
}

}  // namespace kvtier
