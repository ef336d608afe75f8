#include "common/kv_layout.h"

#include <gtest/gtest.h>

#include <set>

namespace kvtier {
namespace {

TEST(KvLayout, ReferenceShapes) {
  EXPECT_EQ(KvLayout::Llama3_8B().BytesPerBlock(), 2u << 20);
  EXPECT_EQ(KvLayout::DeepSeekV3().BytesPerTokenPerLayer(), 1152u);
  EXPECT_EQ(KvLayout::DeepSeekV3().BytesPerBlock(), 61u * 16 * 1152);
  EXPECT_EQ(KvLayout::SmallGqa().BytesPerBlock(), 4096u);
  EXPECT_EQ(KvLayout::SmallMla().BytesPerBlock(), 2560u);
  for (const auto& l : {KvLayout::Llama3_8B(), KvLayout::DeepSeekV3(), KvLayout::SmallGqa(),
                        KvLayout::SmallMla()}) {
    EXPECT_TRUE(l.Validate().ok()) << l.DebugString();
  }
}

TEST(KvLayout, HeadSlicesTileTheBlockInOrder) {
  const KvLayout l = KvLayout::SmallGqa();
  uint64_t expected_offset = 0;
  for (uint32_t layer = 0; layer < l.layers; ++layer) {
    for (KvPart part : {KvPart::kKey, KvPart::kValue}) {
      for (uint32_t head = 0; head < l.kv_heads; ++head) {
        auto r = l.HeadSlice(layer, part, head);
        ASSERT_TRUE(r.ok());
        EXPECT_EQ(r->offset, expected_offset);
        EXPECT_EQ(r->length, 16u * 16 * 2);
        expected_offset += r->length;
      }
    }
  }
  EXPECT_EQ(expected_offset, l.BytesPerBlock());
  // Llama: layer 3, V, head 5.
  auto r = KvLayout::Llama3_8B().HeadSlice(3, KvPart::kValue, 5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->length, 16u * 128 * 2);
  EXPECT_EQ(r->offset, ((3u * 2 + 1) * 8 + 5) * r->length);
  EXPECT_EQ(l.HeadSlice(2, KvPart::kKey, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(l.HeadSlice(0, KvPart::kKey, 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(KvLayout::SmallMla().HeadSlice(0, KvPart::kKey, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(KvLayout, LayerSlices) {
  const KvLayout m = KvLayout::DeepSeekV3();
  auto r = m.LayerSlice(60);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->offset + r->length, m.BytesPerBlock());
  EXPECT_EQ(m.LayerSlice(61).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(KvLayout, FingerprintIsStableAndSensitive) {
  std::set<uint64_t> seen;
  KvLayout base = KvLayout::SmallGqa();
  seen.insert(base.Fingerprint());
  KvLayout v = base;
  v.layers = 3;
  seen.insert(v.Fingerprint());
  v = base;
  v.dtype = DType::kBf16;
  seen.insert(v.Fingerprint());
  v = base;
  v.block_tokens = 32;
  seen.insert(v.Fingerprint());
  v = base;
  v.kv_heads = 4;
  seen.insert(v.Fingerprint());
  EXPECT_EQ(seen.size(), 5u);
  // Fields that do not apply to the kind do not change the fingerprint.
  v = base;
  v.latent_rank = 99;
  EXPECT_EQ(v.Fingerprint(), base.Fingerprint());
  KvLayout m = KvLayout::SmallMla();
  KvLayout m2 = m;
  m2.kv_heads = 8;
  EXPECT_EQ(m.Fingerprint(), m2.Fingerprint());
}

TEST(KvLayout, ValidateNamesTheField) {
  auto check = [](KvLayout l, const std::string& field) {
    absl::Status s = l.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  KvLayout l = KvLayout::SmallGqa();
  l.layers = 0;
  check(l, "layers");
  l = KvLayout::SmallGqa();
  l.kv_heads = 0;
  check(l, "kv_heads");
  l = KvLayout::SmallGqa();
  l.head_dim = 0;
  check(l, "head_dim");
  l = KvLayout::SmallGqa();
  l.block_tokens = 0;
  check(l, "block_tokens");
  l = KvLayout::SmallMla();
  l.latent_rank = 0;
  check(l, "latent_rank");
  l = KvLayout::SmallGqa();
  l.dtype = static_cast<DType>(9);
  check(l, "dtype");
  l = KvLayout::SmallGqa();
  l.kind = static_cast<LayoutKind>(0);
  check(l, "kind");
  l = KvLayout::SmallGqa();
  l.layers = 1u << 31;
  l.kv_heads = 1u << 31;
  check(l, "exceeds");
  EXPECT_EQ(ParseDType("int4").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
