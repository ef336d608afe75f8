// The served-read messages: what one side encodes the other decodes, and bytes that are not a
// request are refused, never read past their end.
#include "transfer/served_read.h"

#include <gtest/gtest.h>

#include <random>

namespace kvtier::transfer {
namespace {

std::vector<RegionRange> OneRange() { return {{0, 1}}; }

TEST(ServedRead, RequestsRoundTrip) {
  const RegionRange ranges[] = {{0, 1}, {1 << 20, 4096}, {~uint64_t{0} - 7, 8}};
  const std::string bytes = EncodeServedReadRequest(42, 0xfeedfacecafebeef, ranges, 1 << 20);
  auto r = DecodeServedReadRequest(bytes.data(), bytes.size());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->id, 42u);
  EXPECT_EQ(r->lease, 0xfeedfacecafebeefu);
  EXPECT_EQ(r->staging_offset, 1u << 20);
  ASSERT_EQ(r->ranges.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r->ranges[i].offset, ranges[i].offset);
    EXPECT_EQ(r->ranges[i].length, ranges[i].length);
  }
}

TEST(ServedRead, MalformedRequestsAreRefused) {
  const RegionRange one[] = {{0, 1}};
  const std::string good = EncodeServedReadRequest(1, 2, one);
  // Every prefix, and one byte more.
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(DecodeServedReadRequest(good.data(), n).ok()) << n;
  }
  std::string longer = good + "x";
  EXPECT_FALSE(DecodeServedReadRequest(longer.data(), longer.size()).ok());
  // A wrong tag; no ranges; a count past the limit.
  std::string bad = good;
  bad[0] ^= 1;
  EXPECT_FALSE(DecodeServedReadRequest(bad.data(), bad.size()).ok());
  const std::string none = EncodeServedReadRequest(1, 2, {});
  EXPECT_FALSE(DecodeServedReadRequest(none.data(), none.size()).ok());
  std::vector<RegionRange> many(kMaxServedRanges + 1, RegionRange{0, 1});
  const std::string too_many = EncodeServedReadRequest(1, 2, many);
  EXPECT_FALSE(DecodeServedReadRequest(too_many.data(), too_many.size()).ok());
  many.pop_back();
  const std::string most = EncodeServedReadRequest(1, 2, many);
  EXPECT_TRUE(DecodeServedReadRequest(most.data(), most.size()).ok());
  // Random bytes: refused or decoded, never a crash.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string junk(rng() % 80, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    if (rng() % 2 == 0 && junk.size() >= 4) junk.replace(0, 4, good.substr(0, 4));
    (void)DecodeServedReadRequest(junk.data(), junk.size());
  }
}

TEST(ServedRead, HeadersRoundTrip) {
  const ServedDataHeader d{.id = ~uint64_t{0}, .range = 65535, .offset = uint64_t{1} << 40};
  const ServedHeaderBytes db = EncodeHeader(d);
  ServedDataHeader d2;
  ASSERT_TRUE(DecodeHeader(db.data(), db.size(), &d2));
  EXPECT_EQ(d2.id, d.id);
  EXPECT_EQ(d2.range, d.range);
  EXPECT_EQ(d2.offset, d.offset);
  const ServedDoneHeader e{.id = 9, .code = 7, .bytes = 12345};
  const ServedHeaderBytes eb = EncodeHeader(e);
  ServedDoneHeader e2;
  ASSERT_TRUE(DecodeHeader(eb.data(), eb.size(), &e2));
  EXPECT_EQ(e2.id, 9u);
  EXPECT_EQ(e2.code, 7u);
  EXPECT_EQ(e2.bytes, 12345u);
  EXPECT_FALSE(DecodeHeader(eb.data(), eb.size() - 1, &e2));
  const ServedHeaderBytes sb = EncodeHeader(ServedStagingHeader{.base = 0x7f00001000, .bytes = 9});
  ServedStagingHeader s2;
  ASSERT_TRUE(DecodeHeader(sb.data(), sb.size(), &s2));
  EXPECT_EQ(s2.base, 0x7f00001000u);
  EXPECT_EQ(s2.bytes, 9u);
  const std::string sent = EncodeServedReadRequest(1, 2, OneRange());
  EXPECT_EQ(DecodeServedReadRequest(sent.data(), sent.size())->staging_offset, kNotStaged);
  EXPECT_FALSE(DecodeHeader(db.data(), 0, &d2));
}

}  // namespace
}  // namespace kvtier::transfer
