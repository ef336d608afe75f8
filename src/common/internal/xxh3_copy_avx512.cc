// The AVX-512 kernels of xxh3_copy.h: one 64-byte vector per XXH3 stripe.
#include <immintrin.h>

#include <cstring>

#include "common/internal/xxh3_copy_kernels.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

// GCC 12 takes the intrinsics' deliberately undefined pass-through operand
// (_mm512_undefined_epi32) for an uninitialized variable.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvtier::internal::avx512 {
namespace {

#define KVTIER_AVX512 __attribute__((target("avx512f"), always_inline)) inline

static_assert(sizeof(XXH3_kSecret) == kSecretSize);

// acc[i ^ 1] += data[i]; acc[i] += lo32(data[i] ^ key[i]) * hi32(data[i] ^ key[i]).
KVTIER_AVX512 __m512i Accumulate(__m512i acc, __m512i data, __m512i key) {
  const __m512i data_key = _mm512_xor_si512(data, key);
  const __m512i data_key_hi = _mm512_shuffle_epi32(data_key, _MM_PERM_CDAB);
  const __m512i product = _mm512_mul_epu32(data_key, data_key_hi);
  const __m512i swapped = _mm512_shuffle_epi32(data, _MM_PERM_BADC);
  return _mm512_add_epi64(acc, _mm512_add_epi64(product, swapped));
}

// acc = (acc ^ (acc >> 47) ^ key) * XXH_PRIME32_1, per 64-bit lane.
KVTIER_AVX512 __m512i Scramble(__m512i acc, __m512i key) {
  const __m512i prime = _mm512_set1_epi32(static_cast<int>(XXH_PRIME32_1));
  const __m512i mixed = _mm512_xor_si512(_mm512_xor_si512(acc, _mm512_srli_epi64(acc, 47)), key);
  const __m512i mixed_hi = _mm512_shuffle_epi32(mixed, _MM_PERM_CDAB);
  return _mm512_add_epi64(_mm512_mul_epu32(mixed, prime),
                          _mm512_slli_epi64(_mm512_mul_epu32(mixed_hi, prime), 32));
}

// XXH3-64 of `size` bytes: the long-input loop's accumulators, then the input's last 64 bytes
// (which may overlap the stripes before) with a key of their own, then the final merge.
KVTIER_AVX512 uint64_t DigestOf(__m512i acc, __m512i last, size_t size) {
  const uint8_t* const secret = XXH3_kSecret;
  acc = Accumulate(acc, last, _mm512_loadu_si512(secret + kSecretSize - kStripe - kLastAccStart));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, acc);
  return XXH3_mergeAccs(lanes, secret + kMergeAccsStart,
                        static_cast<uint64_t>(size) * XXH_PRIME64_1);
}

// Puts stripe i (64 bytes of the input at offset 64 i) at dst + 64 i, in input order.
// kShift < 0: plain unaligned stores. kShift 0..7: non-temporal stores of whole 64-byte lines,
// dst being kShift 8-byte words past a line's start; each line then joins the end of one stripe
// to the start of the next, and the partial lines at both ends get masked plain stores.
template <int kShift>
class StripeWriter {
 public:
  KVTIER_AVX512 explicit StripeWriter(uint8_t* dst)
      : dst_(dst), previous_(_mm512_setzero_si512()) {}

  KVTIER_AVX512 void Put(size_t i, __m512i stripe) {
    uint8_t* at = dst_ + i * kStripe;
    if constexpr (kShift < 0) {
      _mm512_storeu_si512(at, stripe);
    } else if constexpr (kShift == 0) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(at), stripe);
    } else if (i == 0) {
      _mm512_mask_storeu_epi64(at, static_cast<__mmask8>((1u << (8 - kShift)) - 1), stripe);
    } else {
      // The line that starts kShift words before stripe i.
      _mm512_stream_si512(reinterpret_cast<__m512i*>(at - kShift * 8),
                          _mm512_alignr_epi64(stripe, previous_, 8 - kShift));
    }
    previous_ = stripe;
  }

  // After the last Put, `count` stripes in all: writes what is still held, and orders the
  // non-temporal stores before anything that follows.
  KVTIER_AVX512 void Finish(size_t count) {
    if constexpr (kShift > 0) {
      if (count > 0) {
        _mm512_mask_storeu_epi64(dst_ + (count - 1) * kStripe,
                                 static_cast<__mmask8>(0xff00u >> kShift), previous_);
      }
    }
    if constexpr (kShift >= 0) _mm_sfence();
  }

 private:
  uint8_t* const dst_;
  __m512i previous_;
};

template <int kShift>
__attribute__((target("avx512f"))) uint64_t CopyStripes(uint8_t* dst, const uint8_t* src,
                                                        size_t size) {
  alignas(64) uint64_t acc_init[8] = XXH3_INIT_ACC;
  __m512i acc = _mm512_load_si512(acc_init);
  const uint8_t* const secret = XXH3_kSecret;
  __m512i keys[kStripesPerBlock];
  for (size_t s = 0; s < kStripesPerBlock; ++s) keys[s] = _mm512_loadu_si512(secret + 8 * s);
  const __m512i scramble_key = _mm512_loadu_si512(secret + kSecretSize - kStripe);

  // As XXH3_hashLong_internal_loop: whole blocks of 16 stripes, each followed by a scramble;
  // then the stripes of the last block that start before the input's last byte; then Digest.
  StripeWriter<kShift> out(dst);
  const size_t blocks = (size - 1) / kBlock;
  size_t i = 0;  // stripes done
  for (size_t b = 0; b < blocks; ++b) {
    for (size_t s = 0; s < kStripesPerBlock; ++s, ++i) {
      const __m512i data = _mm512_loadu_si512(src + i * kStripe);
      out.Put(i, data);
      acc = Accumulate(acc, data, keys[s]);
    }
    acc = Scramble(acc, scramble_key);
  }
  const size_t tail_stripes = ((size - 1) - blocks * kBlock) / kStripe;
  for (size_t s = 0; s < tail_stripes; ++s, ++i) {
    const __m512i data = _mm512_loadu_si512(src + i * kStripe);
    out.Put(i, data);
    acc = Accumulate(acc, data, keys[s]);
  }
  out.Finish(i);
  const __m512i last = _mm512_loadu_si512(src + size - kStripe);
  _mm512_storeu_si512(dst + size - kStripe, last);
  return DigestOf(acc, last, size);
}

// Plain copy: 64-byte vectors, non-temporal when large and dst is on a whole word.
template <int kShift>
__attribute__((target("avx512f"))) void CopyOnly(uint8_t* dst, const uint8_t* src, size_t size) {
  StripeWriter<kShift> out(dst);
  const size_t stripes = size / kStripe;
  for (size_t i = 0; i < stripes; ++i) out.Put(i, _mm512_loadu_si512(src + i * kStripe));
  out.Finish(stripes);
  std::memcpy(dst + stripes * kStripe, src + stripes * kStripe, size - stripes * kStripe);
}

// One instance per whole-word offset of dst within its line; -1 for plain stores.
template <template <int> class F, typename R>
R Dispatch(uint8_t* d, const uint8_t* s, size_t size, bool streamed) {
  const auto misaligned = reinterpret_cast<uintptr_t>(d) % 64;
  if (!streamed || size < kNonTemporalMinBytes || misaligned % 8 != 0) {
    return F<-1>::Run(d, s, size);
  }
  static constexpr R (*kStreamed[8])(uint8_t*, const uint8_t*, size_t) = {
      F<0>::Run, F<1>::Run, F<2>::Run, F<3>::Run, F<4>::Run, F<5>::Run, F<6>::Run, F<7>::Run};
  return kStreamed[misaligned / 8](d, s, size);
}
template <int kShift>
struct FusedRun {
  static uint64_t Run(uint8_t* d, const uint8_t* s, size_t n) {
    return CopyStripes<kShift>(d, s, n);
  }
};
template <int kShift>
struct PlainRun {
  static void Run(uint8_t* d, const uint8_t* s, size_t n) { CopyOnly<kShift>(d, s, n); }
};

}  // namespace

uint64_t Copy(void* dst, const void* src, size_t size, bool streamed) {
  return Dispatch<FusedRun, uint64_t>(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src),
                                      size, streamed);
}

void CopyLarge(void* dst, const void* src, size_t size, bool streamed) {
  Dispatch<PlainRun, void>(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), size,
                           streamed);
}

__attribute__((target("avx512f"))) void Stripes(uint64_t* acc_lanes, const uint8_t* src,
                                                uint8_t* dst, size_t count, size_t first) {
  const uint8_t* const secret = XXH3_kSecret;
  __m512i acc = _mm512_loadu_si512(acc_lanes);
  for (size_t g = first; g < first + count; ++g, src += kStripe) {
    const __m512i data = _mm512_loadu_si512(src);
    if (dst != nullptr) {
      _mm512_storeu_si512(dst, data);
      dst += kStripe;
    }
    const size_t s = g % kStripesPerBlock;
    acc = Accumulate(acc, data, _mm512_loadu_si512(secret + 8 * s));
    if (s == kStripesPerBlock - 1) {
      acc = Scramble(acc, _mm512_loadu_si512(secret + kSecretSize - kStripe));
    }
  }
  _mm512_storeu_si512(acc_lanes, acc);
}

__attribute__((target("avx512f"))) uint64_t Digest(const uint64_t* acc, const uint8_t* last,
                                                   size_t size) {
  return DigestOf(_mm512_loadu_si512(acc), _mm512_loadu_si512(last), size);
}

}  // namespace kvtier::internal::avx512
