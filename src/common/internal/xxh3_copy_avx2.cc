// The AVX2 kernels of xxh3_copy.h: two 32-byte vectors per XXH3 stripe, the lanes XXH3's own
// AVX2 loop keeps, so the accumulators are the AVX-512 kernels' lane for lane.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "common/internal/xxh3_copy_kernels.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtier::internal::avx2 {
namespace {

#define KVTIER_AVX2 __attribute__((target("avx2"), always_inline)) inline

static_assert(sizeof(XXH3_kSecret) == kSecretSize);

// acc[i ^ 1] += data[i]; acc[i] += lo32(data[i] ^ key[i]) * hi32(data[i] ^ key[i]).
KVTIER_AVX2 __m256i Accumulate(__m256i acc, __m256i data, __m256i key) {
  const __m256i data_key = _mm256_xor_si256(data, key);
  const __m256i data_key_hi = _mm256_shuffle_epi32(data_key, _MM_SHUFFLE(0, 3, 0, 1));
  const __m256i product = _mm256_mul_epu32(data_key, data_key_hi);
  const __m256i swapped = _mm256_shuffle_epi32(data, _MM_SHUFFLE(1, 0, 3, 2));
  return _mm256_add_epi64(acc, _mm256_add_epi64(product, swapped));
}

// acc = (acc ^ (acc >> 47) ^ key) * XXH_PRIME32_1, per 64-bit lane.
KVTIER_AVX2 __m256i Scramble(__m256i acc, __m256i key) {
  const __m256i prime = _mm256_set1_epi32(static_cast<int>(XXH_PRIME32_1));
  const __m256i mixed = _mm256_xor_si256(_mm256_xor_si256(acc, _mm256_srli_epi64(acc, 47)), key);
  const __m256i mixed_hi = _mm256_shuffle_epi32(mixed, _MM_SHUFFLE(0, 3, 0, 1));
  return _mm256_add_epi64(_mm256_mul_epu32(mixed, prime),
                          _mm256_slli_epi64(_mm256_mul_epu32(mixed_hi, prime), 32));
}

KVTIER_AVX2 __m256i Load(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The 8 lanes of a stripe's accumulators, as two vectors.
struct Lanes {
  __m256i lo, hi;
};

KVTIER_AVX2 Lanes Accumulate(Lanes acc, __m256i lo, __m256i hi, const uint8_t* key) {
  return {Accumulate(acc.lo, lo, Load(key)), Accumulate(acc.hi, hi, Load(key + 32))};
}

// XXH3-64 of `size` bytes: the long-input loop's accumulators, then the input's last 64 bytes
// (which may overlap the stripes before) with a key of their own, then the final merge.
KVTIER_AVX2 uint64_t DigestOf(Lanes acc, const uint8_t* last, size_t size) {
  const uint8_t* const secret = XXH3_kSecret;
  acc =
      Accumulate(acc, Load(last), Load(last + 32), secret + kSecretSize - kStripe - kLastAccStart);
  alignas(32) uint64_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc.lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 4), acc.hi);
  return XXH3_mergeAccs(lanes, secret + kMergeAccsStart,
                        static_cast<uint64_t>(size) * XXH_PRIME64_1);
}

// How a 32-byte vector is stored: plain, or non-temporal with dst on 32 or on 16 bytes.
enum Store { kPlain, kStream32, kStream16 };

template <Store kStore>
KVTIER_AVX2 void Put(uint8_t* at, __m256i v) {
  if constexpr (kStore == kPlain) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), v);
  } else if constexpr (kStore == kStream32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(at), v);
  } else {
    _mm_stream_si128(reinterpret_cast<__m128i*>(at), _mm256_castsi256_si128(v));
    _mm_stream_si128(reinterpret_cast<__m128i*>(at + 16), _mm256_extracti128_si256(v, 1));
  }
}

// Prefetches the source this far ahead: without it the loop waits on memory (measured on AMD
// Zen 2: 0.8x of memcpy's speed without, 1.0x with, for 1 MiB from DRAM). Past the end is harmless.
constexpr size_t kPrefetchAhead = 1024;

// Copies stripe i and hashes it with the key of stripe s of a block.
template <Store kStore>
KVTIER_AVX2 void CopyStripe(Lanes& acc, uint8_t* dst, const uint8_t* src, size_t i, size_t s) {
  _mm_prefetch(reinterpret_cast<const char*>(src + i * kStripe + kPrefetchAhead), _MM_HINT_T0);
  const __m256i lo = Load(src + i * kStripe);
  const __m256i hi = Load(src + i * kStripe + 32);
  Put<kStore>(dst + i * kStripe, lo);
  Put<kStore>(dst + i * kStripe + 32, hi);
  acc = Accumulate(acc, lo, hi, XXH3_kSecret + 8 * s);
}

template <Store kStore>
__attribute__((target("avx2"))) uint64_t CopyStripes(uint8_t* dst, const uint8_t* src,
                                                     size_t size) {
  alignas(32) uint64_t acc_init[8] = XXH3_INIT_ACC;
  Lanes acc{_mm256_load_si256(reinterpret_cast<const __m256i*>(acc_init)),
            _mm256_load_si256(reinterpret_cast<const __m256i*>(acc_init + 4))};
  const uint8_t* const secret = XXH3_kSecret;
  const uint8_t* const scramble_key = secret + kSecretSize - kStripe;

  // As XXH3_hashLong_internal_loop: whole blocks of 16 stripes, each followed by a scramble;
  // then the stripes of the last block that start before the input's last byte; then Digest.
  const size_t blocks = (size - 1) / kBlock;
  size_t i = 0;  // stripes done
  for (size_t b = 0; b < blocks; ++b) {
    for (size_t s = 0; s < kStripesPerBlock; ++s, ++i) CopyStripe<kStore>(acc, dst, src, i, s);
    acc.lo = Scramble(acc.lo, Load(scramble_key));
    acc.hi = Scramble(acc.hi, Load(scramble_key + 32));
  }
  const size_t tail_stripes = ((size - 1) - blocks * kBlock) / kStripe;
  for (size_t s = 0; s < tail_stripes; ++s, ++i) CopyStripe<kStore>(acc, dst, src, i, s);
  if constexpr (kStore != kPlain) _mm_sfence();
  // The last 64 bytes, which may overlap the stripes before: plain stores after the fence.
  const uint8_t* last = src + size - kStripe;
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + size - kStripe), Load(last));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + size - 32), Load(last + 32));
  return DigestOf(acc, last, size);
}

template <Store kStore>
__attribute__((target("avx2"))) void CopyOnly(uint8_t* dst, const uint8_t* src, size_t size) {
  const size_t stripes = size / kStripe;
  for (size_t i = 0; i < stripes; ++i) {
    Put<kStore>(dst + i * kStripe, Load(src + i * kStripe));
    Put<kStore>(dst + i * kStripe + 32, Load(src + i * kStripe + 32));
  }
  if constexpr (kStore != kPlain) _mm_sfence();
  std::memcpy(dst + stripes * kStripe, src + stripes * kStripe, size - stripes * kStripe);
}

// Calls f(dst, src, size) with the stores that fit dst, size and `streamed`, as a constant.
template <typename R, typename F>
R WithStores(void* dst_v, const void* src_v, size_t size, bool streamed, F f) {
  auto* dst = static_cast<uint8_t*>(dst_v);
  const auto* src = static_cast<const uint8_t*>(src_v);
  const auto misaligned = reinterpret_cast<uintptr_t>(dst) % 32;
  if (!streamed || size < kNonTemporalMinBytes || misaligned % 16 != 0) {
    return f(std::integral_constant<Store, kPlain>(), dst, src, size);
  }
  if (misaligned == 0) return f(std::integral_constant<Store, kStream32>(), dst, src, size);
  return f(std::integral_constant<Store, kStream16>(), dst, src, size);
}

}  // namespace

uint64_t Copy(void* dst, const void* src, size_t size, bool streamed) {
  return WithStores<uint64_t>(dst, src, size, streamed, [](auto store, auto... args) {
    return CopyStripes<decltype(store)::value>(args...);
  });
}

void CopyLarge(void* dst, const void* src, size_t size, bool streamed) {
  WithStores<void>(dst, src, size, streamed,
                   [](auto store, auto... args) { CopyOnly<decltype(store)::value>(args...); });
}

__attribute__((target("avx2"))) void Stripes(uint64_t* acc_lanes, const uint8_t* src, uint8_t* dst,
                                             size_t count, size_t first) {
  const uint8_t* const secret = XXH3_kSecret;
  auto* lanes = reinterpret_cast<__m256i*>(acc_lanes);
  Lanes acc{_mm256_loadu_si256(lanes), _mm256_loadu_si256(lanes + 1)};
  for (size_t g = first; g < first + count; ++g, src += kStripe) {
    _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetchAhead), _MM_HINT_T0);
    const __m256i lo = Load(src);
    const __m256i hi = Load(src + 32);
    if (dst != nullptr) {
      Put<kPlain>(dst, lo);
      Put<kPlain>(dst + 32, hi);
      dst += kStripe;
    }
    const size_t s = g % kStripesPerBlock;
    acc = Accumulate(acc, lo, hi, secret + 8 * s);
    if (s == kStripesPerBlock - 1) {
      const uint8_t* key = secret + kSecretSize - kStripe;
      acc.lo = Scramble(acc.lo, Load(key));
      acc.hi = Scramble(acc.hi, Load(key + 32));
    }
  }
  _mm256_storeu_si256(lanes, acc.lo);
  _mm256_storeu_si256(lanes + 1, acc.hi);
}

__attribute__((target("avx2"))) uint64_t Digest(const uint64_t* acc, const uint8_t* last,
                                                size_t size) {
  const auto* lanes = reinterpret_cast<const __m256i*>(acc);
  return DigestOf({_mm256_loadu_si256(lanes), _mm256_loadu_si256(lanes + 1)}, last, size);
}

}  // namespace kvtier::internal::avx2
