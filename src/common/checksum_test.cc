#include "common/checksum.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace kvtier {
namespace {

TEST(Checksum, CopyWithChecksumEqualsChecksumOfTheBytes) {
  for (size_t size : {0ul, 1ul, 63ul, 65536ul, 65537ul, 1ul << 20, (1ul << 20) + 3}) {
    std::vector<uint8_t> src(size), dst(size);
    for (size_t i = 0; i < size; ++i) src[i] = static_cast<uint8_t>(i * 131 + 7);
    EXPECT_EQ(CopyWithChecksum(dst.data(), src.data(), size), Checksum(src.data(), size)) << size;
    EXPECT_EQ(src, dst);
  }
}

TEST(Checksum, CopierInPiecesEqualsChecksumOfTheBytes) {
  const size_t size = (1ul << 20) + 17;
  std::vector<uint8_t> src(size), dst(size);
  for (size_t i = 0; i < size; ++i) src[i] = static_cast<uint8_t>(i * 131 + 7);
  ChecksumCopier copier;
  EXPECT_EQ(copier.Digest(), Checksum(nullptr, 0));
  // Pieces of uneven sizes, below and above the copier's internal chunk, then a second block
  // after Reset.
  for (size_t piece : {7ul, 4095ul, 65536ul, 100'003ul, 1ul << 20}) {
    copier.Reset();
    std::fill(dst.begin(), dst.end(), 0);
    for (size_t off = 0; off < size; off += piece) {
      const size_t n = std::min(piece, size - off);
      copier.Copy(dst.data() + off, src.data() + off, n);
    }
    EXPECT_EQ(copier.Digest(), Checksum(src.data(), size)) << piece;
    EXPECT_EQ(src, dst) << piece;
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
