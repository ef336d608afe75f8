#include "common/checksum.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <random>
#include <vector>

#include "common/internal/xxh3_copy.h"

namespace kvtier {
namespace internal {
void PrintTo(CopyIsa isa, std::ostream* os) { *os << CopyIsaName(isa); }
}  // namespace internal
namespace {

using internal::CopyIsa;

// Runs a test once per copy instruction set this CPU has, narrowest first, each forced with
// SetCopyIsa as KVTIER_COPY_ISA would; the sets it lacks are named in the output.
class EveryCopyIsa : public ::testing::TestWithParam<CopyIsa> {
 protected:
  void SetUp() override {
    if (!internal::CpuHasCopyIsa(GetParam())) {
      GTEST_SKIP() << "this CPU has no " << internal::CopyIsaName(GetParam());
    }
    saved_ = internal::ActiveCopyIsa();
    internal::SetCopyIsa(GetParam());
    ASSERT_EQ(internal::ActiveCopyIsa(), GetParam());
  }
  void TearDown() override { internal::SetCopyIsa(saved_); }
  CopyIsa saved_ = CopyIsa::kNone;
};
INSTANTIATE_TEST_SUITE_P(Checksum, EveryCopyIsa,
                         ::testing::Values(CopyIsa::kNone, CopyIsa::kAvx2, CopyIsa::kAvx512),
                         [](const auto& info) { return internal::CopyIsaName(info.param); });

TEST_P(EveryCopyIsa, CopyWithChecksumEqualsChecksumOfTheBytes) {
  for (size_t size : {0ul, 1ul, 63ul, 65536ul, 65537ul, 1ul << 20, (1ul << 20) + 3}) {
    std::vector<uint8_t> src(size), dst(size);
    for (size_t i = 0; i < size; ++i) src[i] = static_cast<uint8_t>(i * 131 + 7);
    EXPECT_EQ(CopyWithChecksum(dst.data(), src.data(), size), Checksum(src.data(), size)) << size;
    EXPECT_EQ(src, dst);
  }
}

// Every size around the vector loops' edges, at destinations on and off 16-, 32- and 64-byte
// boundaries (large copies to the aligned ones take non-temporal stores); nothing outside the
// destination is written.
TEST_P(EveryCopyIsa, CopyBytesCopiesExactlyTheBytes) {
  const size_t max = (1 << 20) + 4096;
  std::vector<uint8_t> src(max + 64);
  std::mt19937_64 rng(11);
  for (auto& b : src) b = static_cast<uint8_t>(rng());
  auto* dst = static_cast<uint8_t*>(std::aligned_alloc(64, max + 192));
  ASSERT_NE(dst, nullptr);
  const std::vector<size_t> sizes = {0,         1,
                                     63,        64,
                                     4095,      4096,
                                     4097,      65536 + 17,
                                     256 << 10, (256 << 10) + 1,
                                     (1 << 20), (1 << 20) + 4095};
  for (size_t size : sizes) {
    for (size_t dst_off : {0, 8, 16, 24, 32, 48, 3, 61}) {
      for (CopyTo to : {CopyTo::kCache, CopyTo::kMemory}) {
        std::fill(dst, dst + dst_off + size + 64, 0xee);
        CopyBytes(dst + dst_off, src.data() + dst_off % 7, size, to);
        ASSERT_EQ(std::memcmp(dst + dst_off, src.data() + dst_off % 7, size), 0)
            << "size " << size << " dst +" << dst_off;
        for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(dst[i], 0xee) << size << " before " << i;
        for (size_t i = dst_off + size; i < dst_off + size + 64; ++i) {
          ASSERT_EQ(dst[i], 0xee) << size << " after " << i;
        }
      }
    }
  }
  std::free(dst);
}

// Every length from the shortest the fused copy takes up to a few of XXH3's 1 KiB blocks, then
// long ones, at every source offset and at destinations on and off 64-byte lines (the ones off
// by a multiple of 8 (AVX-512) or 16 (AVX2) take the non-temporal stores).
TEST_P(EveryCopyIsa, FusedCopyEqualsXxh3AtEveryLengthAndAlignment) {
  if (GetParam() == CopyIsa::kNone) GTEST_SKIP() << "no fused copy without AVX2";
  const size_t max = (1 << 20) + 4096;
  std::vector<uint8_t> src(max + 64);
  std::mt19937_64 rng(42);
  for (auto& b : src) b = static_cast<uint8_t>(rng());
  auto* dst = static_cast<uint8_t*>(std::aligned_alloc(64, max + 128));
  ASSERT_NE(dst, nullptr);
  auto check = [&](size_t size, size_t src_off, size_t dst_off, bool streamed = true) {
    const size_t end = dst_off + size + 64;  // the bytes looked at after the copy
    std::fill(dst, dst + end, 0xee);
    const uint64_t got =
        internal::FusedCopyXxh3(GetParam(), dst + dst_off, src.data() + src_off, size, streamed);
    ASSERT_EQ(got, Checksum(src.data() + src_off, size))
        << "size " << size << " src +" << src_off << " dst +" << dst_off;
    ASSERT_EQ(std::memcmp(dst + dst_off, src.data() + src_off, size), 0)
        << "size " << size << " src +" << src_off << " dst +" << dst_off;
    // Nothing written outside the destination.
    for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(dst[i], 0xee) << size << " before " << i;
    for (size_t i = dst_off + size; i < end; ++i) ASSERT_EQ(dst[i], 0xee) << size << " after " << i;
  };
  for (size_t size = internal::kFusedCopyMinBytes; size < 4200; ++size) {
    check(size, size % 64, (size * 7) % 64);
  }
  const std::vector<size_t> sizes = {256 << 10,     (256 << 10) + 1, (256 << 10) + 63,
                                     (1 << 20) - 1, 1 << 20,         (1 << 20) + 4095};
  for (size_t size : sizes) {
    for (size_t dst_off : {0, 8, 16, 24, 32, 40, 48, 56, 3, 61}) {
      check(size, dst_off % 5, dst_off);
      check(size, dst_off % 5, dst_off, /*streamed=*/false);
    }
  }
  for (int i = 0; i < 30; ++i) {
    check(internal::kFusedCopyMinBytes + rng() % (max - internal::kFusedCopyMinBytes), rng() % 64,
          rng() % 64);
  }
  std::free(dst);
}

// Blocks of every size class (XXH3's short paths, the fused copy's shortest, whole and partial
// 1 KiB blocks, a megabyte) in pieces of every kind: single bytes, pieces that end inside a
// 64-byte stripe or exactly on one, large ones, random ones; with the same copier reused.
TEST_P(EveryCopyIsa, CopierInPiecesEqualsChecksumOfTheBytes) {
  const size_t max = (1ul << 20) + 17;
  std::vector<uint8_t> src(max);
  std::mt19937_64 rng(7);
  for (auto& b : src) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> dst(max + 64);
  ChecksumCopier copier;
  EXPECT_EQ(copier.Digest(), Checksum(nullptr, 0));
  const std::vector<size_t> sizes = {0,    1,    240,  241,   255,       256, 1024,
                                     1025, 4097, 9999, 65536, 1ul << 20, max};
  // 0: random pieces of 1 to 200 bytes; 1: random pieces up to 200 KB.
  const std::vector<size_t> pieces = {1, 7, 63, 64, 65, 4095, 65536, 100'003, max, 0, 1};
  for (size_t size : sizes) {
    for (size_t p = 0; p < pieces.size(); ++p) {
      if (pieces[p] == 1 && p == 0 && size > 70'000) continue;  // a megabyte byte by byte: slow
      std::fill(dst.begin(), dst.end(), 0xee);
      copier.Reset(dst.data(), size);
      for (size_t off = 0; off < size;) {
        size_t n = pieces[p];
        if (p == pieces.size() - 2) n = 1 + rng() % 200;
        if (p == pieces.size() - 1) n = 1 + rng() % 200'000;
        n = std::min(n, size - off);
        copier.Copy(src.data() + off, n);
        off += n;
      }
      ASSERT_EQ(copier.Digest(), Checksum(src.data(), size)) << size << " in pieces #" << p;
      ASSERT_EQ(std::memcmp(dst.data(), src.data(), size), 0) << size << " in pieces #" << p;
      for (size_t i = size; i < dst.size(); ++i) ASSERT_EQ(dst[i], 0xee) << size << " after";
    }
  }
}

TEST(Checksum, DetectsASingleFlippedBit) {
  std::vector<uint8_t> a(4096, 0x5a);
  const uint64_t c = Checksum(a.data(), a.size());
  a[1234] ^= 0x10;
  EXPECT_NE(Checksum(a.data(), a.size()), c);
}

}  // namespace
}  // namespace kvtier
