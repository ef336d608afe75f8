#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "gpu/attention.h"
#include "gpu/half.h"
#include "gpu/quest.h"
#include "gpu/test_context.h"

namespace kvtier::gpu {
namespace {

TEST(Half, KnownValuesAndRoundTrips) {
  EXPECT_EQ(FloatToFp16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToFp16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToFp16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToFp16(1e6f), 0x7c00) << "overflow goes to infinity";
  EXPECT_EQ(FloatToFp16(5.9604645e-8f), 0x0001) << "smallest subnormal";
  EXPECT_EQ(Fp16ToFloat(0x0001), 5.9604645e-8f);
  EXPECT_TRUE(std::isnan(Fp16ToFloat(FloatToFp16(std::nanf("")))));
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite non-negative half survives a round trip
    ASSERT_EQ(FloatToFp16(Fp16ToFloat(static_cast<uint16_t>(h))), h) << h;
  }
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-100, 100);
  for (int i = 0; i < 10000; ++i) {
    const float f = dist(rng);
    EXPECT_NEAR(Fp16ToFloat(FloatToFp16(f)), f, std::abs(f) * 1e-3 + 1e-4);
    EXPECT_NEAR(Bf16ToFloat(FloatToBf16(f)), f, std::abs(f) * 8e-3 + 1e-4);
  }
}

// Attention computed the obvious way from the plain arrays, over the tokens `keep` allows.
template <typename Keep>
void Naive(const Context& c, int layer, float scale, Keep keep, std::vector<double>* out,
           std::vector<double>* lse) {
  const int d = c.shape.head_dim, group = c.q_heads / c.shape.kv_heads;
  out->assign(size_t(c.q_heads) * d, 0);
  lse->assign(c.q_heads, 0);
  for (int h = 0; h < c.q_heads; ++h) {
    const int kvh = h / group;
    std::vector<double> s;
    std::vector<int> toks;
    for (int t = 0; t < c.tokens; ++t) {
      if (!keep(kvh, t)) continue;
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(c.q[size_t(h) * d + i]) * c.K(layer, kvh, t, i);
      s.push_back(dot * scale);
      toks.push_back(t);
    }
    const double m = *std::max_element(s.begin(), s.end());
    double sum = 0;
    for (double x : s) sum += std::exp(x - m);
    for (size_t j = 0; j < s.size(); ++j) {
      const double w = std::exp(s[j] - m) / sum;
      for (int i = 0; i < d; ++i) (*out)[size_t(h) * d + i] += w * c.V(layer, kvh, toks[j], i);
    }
    (*lse)[h] = m + std::log(sum);
  }
}

void ExpectMatches(const DecodeResult& r, const std::vector<double>& out,
                   const std::vector<double>& lse, const std::string& what) {
  ASSERT_EQ(r.out.size(), out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_FALSE(std::isnan(r.out[i])) << what << ": an unused (NaN) slot was read";
    ASSERT_NEAR(r.out[i], out[i], 1e-5 * (1 + std::abs(out[i]))) << what << " at " << i;
  }
  for (size_t h = 0; h < lse.size(); ++h) {
    ASSERT_NEAR(r.lse[h], lse[h], 1e-5 * (1 + std::abs(lse[h]))) << what << " lse " << h;
  }
}

TEST(ReferenceDecode, MatchesTheObviousComputationOnAwkwardShapes) {
  uint32_t seed = 1;
  for (const Case& k : kAwkwardCases) {
    const std::string what = "tokens " + std::to_string(k.tokens) + " block " +
                             std::to_string(k.block_tokens) + " group " + std::to_string(k.group) +
                             " dim " + std::to_string(k.head_dim);
    GqaShape shape{.layers = 2,
                   .kv_heads = 2,
                   .head_dim = k.head_dim,
                   .block_tokens = k.block_tokens,
                   .dtype = k.dtype};
    const Context c = MakeContext(shape, k.tokens, k.group, seed++);
    const float scale = 1.0f / std::sqrt(float(k.head_dim));
    DecodeRequest req{.layer = 1, .q_heads = c.q_heads, .q = c.q.data(), .scale = scale};
    ASSERT_EQ(ValidateDecode(c.paged, req), "") << what;
    std::vector<double> out, lse;
    Naive(
        c, 1, scale, [](int, int) { return true; }, &out, &lse);
    ExpectMatches(ReferenceDecode(c.paged, req), out, lse, what);
  }
}

TEST(ReferenceDecode, HeadSparseProfiles) {
  GqaShape shape{
      .layers = 1, .kv_heads = 4, .head_dim = 64, .block_tokens = 16, .dtype = ElemType::kBf16};
  const Context c = MakeContext(shape, 1000, 2, 7);
  DecodeRequest req{.layer = 0, .q_heads = c.q_heads, .q = c.q.data(), .scale = 0.125f};
  std::vector<double> dense_out, dense_lse, out, lse;
  Naive(
      c, 0, 0.125f, [](int, int) { return true; }, &dense_out, &dense_lse);

  HeadProfile all_recall{.recall = {{true, true, true, true}}};
  req.profile = &all_recall;
  ExpectMatches(ReferenceDecode(c.paged, req), dense_out, dense_lse, "all recall");

  HeadProfile wide{.sink = 4, .window = 5000, .recall = {{false, false, false, false}}};
  req.profile = &wide;
  ExpectMatches(ReferenceDecode(c.paged, req), dense_out, dense_lse, "window longer than context");

  HeadProfile mixed{.sink = 4, .window = 64, .recall = {{true, false, false, true}}};
  req.profile = &mixed;
  Naive(
      c, 0, 0.125f, [&](int kvh, int t) { return kvh == 0 || kvh == 3 || t < 4 || t >= 1000 - 64; },
      &out, &lse);
  ExpectMatches(ReferenceDecode(c.paged, req), out, lse, "mixed profile");

  HeadProfile all_local{.sink = 4, .window = 64, .recall = {{false, false, false, false}}};
  req.profile = &all_local;
  Naive(
      c, 0, 0.125f, [&](int, int t) { return t < 4 || t >= 1000 - 64; }, &out, &lse);
  ExpectMatches(ReferenceDecode(c.paged, req), out, lse, "all local");
}

TEST(ReferenceDecode, LocalHeadsNeverTouchBlocksOutsideTheirWindow) {
  GqaShape shape{
      .layers = 1, .kv_heads = 1, .head_dim = 64, .block_tokens = 16, .dtype = ElemType::kFp16};
  Context c = MakeContext(shape, 640, 4, 3);
  HeadProfile local{.sink = 4, .window = 64, .recall = {{false}}};
  DecodeRequest req{.layer = 0, .q_heads = 4, .q = c.q.data(), .scale = 0.125f, .profile = &local};
  const DecodeResult before = ReferenceDecode(c.paged, req);
  // Blocks 1..35 hold neither sinks (block 0) nor the window (blocks 36..39): point them at a
  // block of NaN. Reading any of it would poison the output.
  std::vector<uint16_t> poison(shape.BlockBytes() / 2, FloatToFp16(std::nanf("")));
  PagedKv holes = c.paged;
  for (int b = 1; b < 36; ++b) holes.blocks[b] = poison.data();
  const DecodeResult after = ReferenceDecode(holes, req);
  EXPECT_EQ(before.out, after.out);
  EXPECT_EQ(before.lse, after.lse);
}

TEST(ReferenceDecode, SplitKvPartsCombineToTheWhole) {
  GqaShape shape{
      .layers = 1, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = ElemType::kBf16};
  const Context c = MakeContext(shape, 5000, 4, 11);
  HeadProfile mixed{.sink = 4, .window = 64, .recall = {{true, false}}};
  for (const HeadProfile* profile : std::vector<const HeadProfile*>{nullptr, &mixed}) {
    DecodeRequest req{
        .layer = 0, .q_heads = c.q_heads, .q = c.q.data(), .scale = 0.125f, .profile = profile};
    const DecodeResult whole = ReferenceDecode(c.paged, req);
    std::vector<DecodeResult> parts;
    for (auto [b, e] : {std::pair{0, 1000}, {1000, 1001}, {1001, 4096}, {4096, 5000}}) {
      parts.push_back(ReferencePartialDecode(c.paged, req, b, e));
    }
    // With the profile, local heads attend to nothing in the middle splits: lse -inf there.
    if (profile != nullptr) {
      EXPECT_TRUE(std::isinf(parts[2].lse[c.q_heads - 1]));
    }
    const DecodeResult merged = CombineSplits(parts);
    for (size_t i = 0; i < whole.out.size(); ++i) {
      ASSERT_NEAR(merged.out[i], whole.out[i], 1e-5 * (1 + std::abs(whole.out[i]))) << i;
    }
    for (size_t h = 0; h < whole.lse.size(); ++h) {
      ASSERT_NEAR(merged.lse[h], whole.lse[h], 1e-5 * (1 + std::abs(whole.lse[h]))) << h;
    }
  }
}

// MLA: attention with the query absorbed into latent space must equal the expanded computation
// (decompress K and V from the latent with W_UK and W_UV, ordinary attention).
TEST(ReferenceMla, AbsorbedEqualsExpanded) {
  for (ElemType dtype : {ElemType::kFp32, ElemType::kBf16}) {
    constexpr int kHeads = 4, kRank = 32, kRope = 8, kNope = 16, kDv = 16, kTokens = 77;
    MlaShape shape{
        .layers = 2, .latent_rank = kRank, .rope_dim = kRope, .block_tokens = 16, .dtype = dtype};
    std::mt19937 rng(5);
    std::normal_distribution<float> dist(0, 0.5f);
    const int nblocks = (kTokens + 15) / 16;
    std::vector<uint8_t> pool(shape.BlockBytes() * nblocks);
    MlaPagedKv kv{shape, {}, kTokens};
    for (int b = 0; b < nblocks; ++b) kv.blocks.push_back(pool.data() + b * shape.BlockBytes());
    const int layer = 1;
    std::vector<double> c(size_t(kTokens) * kRank), kr(size_t(kTokens) * kRope);
    for (int t = 0; t < kTokens; ++t) {
      void* block = pool.data() + (t / 16) * shape.BlockBytes();
      const size_t base = (size_t(layer) * 16 + t % 16) * shape.TokenElems();
      for (int i = 0; i < kRank + kRope; ++i) {
        float deq = 0;
        Store(block, base + i, dtype, dist(rng), &deq);
        if (i < kRank)
          c[size_t(t) * kRank + i] = deq;
        else
          kr[size_t(t) * kRope + i - kRank] = deq;
      }
    }
    std::vector<double> wuk(size_t(kHeads) * kNope * kRank), wuv(size_t(kHeads) * kDv * kRank);
    for (double& x : wuk) x = dist(rng);
    for (double& x : wuv) x = dist(rng);
    std::vector<float> q_nope(size_t(kHeads) * kNope), q_rope(size_t(kHeads) * kRope);
    for (float& x : q_nope) x = dist(rng);
    for (float& x : q_rope) x = dist(rng);
    const float scale = 1.0f / std::sqrt(float(kNope + kRope));

    // Absorbed: q_latent = W_UK^T q_nope; attention in latent space; project with W_UV.
    std::vector<float> q_latent(size_t(kHeads) * kRank, 0.0f);
    for (int h = 0; h < kHeads; ++h) {
      for (int r = 0; r < kRank; ++r) {
        double sum = 0;
        for (int j = 0; j < kNope; ++j)
          sum += wuk[(size_t(h) * kNope + j) * kRank + r] * q_nope[h * kNope + j];
        q_latent[size_t(h) * kRank + r] = static_cast<float>(sum);
      }
    }
    MlaRequest req{.layer = layer,
                   .heads = kHeads,
                   .q_latent = q_latent.data(),
                   .q_rope = q_rope.data(),
                   .scale = scale};
    const DecodeResult absorbed = ReferenceMlaDecode(kv, req);

    for (int h = 0; h < kHeads; ++h) {
      // Expanded: per token, k = [W_UK c ; k_rope], v = W_UV c.
      std::vector<double> s(kTokens);
      double m = -1e300;
      for (int t = 0; t < kTokens; ++t) {
        double dot = 0;
        for (int j = 0; j < kNope; ++j) {
          double k = 0;
          for (int r = 0; r < kRank; ++r)
            k += wuk[(size_t(h) * kNope + j) * kRank + r] * c[size_t(t) * kRank + r];
          dot += double(q_nope[h * kNope + j]) * k;
        }
        for (int i = 0; i < kRope; ++i)
          dot += double(q_rope[h * kRope + i]) * kr[size_t(t) * kRope + i];
        s[t] = dot * scale;
        m = std::max(m, s[t]);
      }
      double sum = 0;
      for (double x : s) sum += std::exp(x - m);
      for (int j = 0; j < kDv; ++j) {
        double expanded = 0, projected = 0;
        for (int t = 0; t < kTokens; ++t) {
          double v = 0;
          for (int r = 0; r < kRank; ++r)
            v += wuv[(size_t(h) * kDv + j) * kRank + r] * c[size_t(t) * kRank + r];
          expanded += std::exp(s[t] - m) / sum * v;
        }
        for (int r = 0; r < kRank; ++r) {
          projected += wuv[(size_t(h) * kDv + j) * kRank + r] * absorbed.out[size_t(h) * kRank + r];
        }
        ASSERT_NEAR(projected, expanded, 1e-5 * (1 + std::abs(expanded)))
            << "head " << h << " dim " << j;
      }
      ASSERT_NEAR(absorbed.lse[h], m + std::log(sum), 1e-5 * (1 + std::abs(m))) << "head " << h;
    }
  }
}

// The fast path against the reference. Both read the same dequantized inputs; the fast path
// accumulates in float, so the tolerance is that of float sums over up to 12,345 tokens.
TEST(CpuDecode, MatchesTheReferenceOnAwkwardShapesAndProfiles) {
  uint32_t seed = 100;
  for (const Case& k : kAwkwardCases) {
    GqaShape shape{.layers = 2, .kv_heads = 2, .head_dim = k.head_dim,
                   .block_tokens = k.block_tokens, .dtype = k.dtype};
    const Context c = MakeContext(shape, k.tokens, k.group, seed++);
    HeadProfile local{.sink = 4, .window = 64, .recall = {{true, false}, {false, true}}};
    HeadProfile all_local{.sink = 4, .window = 64, .recall = {{false, false}, {false, false}}};
    HeadProfile all_recall{.sink = 4, .window = 64, .recall = {{true, true}, {true, true}}};
    HeadProfile wide{.sink = 2, .window = 1 << 20, .recall = {{false, false}, {false, false}}};
    for (const HeadProfile* profile :
         std::vector<const HeadProfile*>{nullptr, &local, &all_local, &all_recall, &wide}) {
      for (int threads : {1, 2, 5}) {
        const std::string what = "tokens " + std::to_string(k.tokens) + " block " +
                                 std::to_string(k.block_tokens) + " group " +
                                 std::to_string(k.group) + " threads " + std::to_string(threads) +
                                 (profile ? " sparse" : " dense");
        DecodeRequest req{.layer = 1, .q_heads = c.q_heads, .q = c.q.data(),
                          .scale = 1.0f / std::sqrt(float(k.head_dim)), .profile = profile};
        const DecodeResult ref = ReferenceDecode(c.paged, req);
        const DecodeResult fast = CpuDecode(c.paged, req, threads);
        for (size_t i = 0; i < ref.out.size(); ++i) {
          ASSERT_FALSE(std::isnan(fast.out[i])) << what;
          ASSERT_NEAR(fast.out[i], ref.out[i], 2e-4 * (1 + std::abs(ref.out[i]))) << what << " " << i;
        }
        for (size_t h = 0; h < ref.lse.size(); ++h) {
          ASSERT_NEAR(fast.lse[h], ref.lse[h], 2e-4 * (1 + std::abs(ref.lse[h]))) << what;
        }
      }
    }
  }
}

// MLA's fast path against the reference: contexts around block and split edges, shuffled pages,
// a partial last block whose unused slots hold NaN, fp16 and bf16.
TEST(CpuMlaDecode, MatchesTheReference) {
  uint32_t seed = 900;
  for (ElemType dtype : {ElemType::kBf16, ElemType::kFp16}) {
    for (int tokens : {1, 63, 64, 65, 4099}) {
      for (int block_tokens : {16, 13}) {
        MlaShape shape{.layers = 2, .latent_rank = 64, .rope_dim = 16,
                       .block_tokens = block_tokens, .dtype = dtype};
        constexpr int kHeads = 6;
        const MlaContext c = MakeMlaContext(shape, tokens, kHeads, seed++);
        const MlaPagedKv& kv = c.paged;
        const std::vector<float>&ql = c.q_latent, &qr = c.q_rope;
        MlaRequest req{.layer = 1, .heads = kHeads, .q_latent = ql.data(), .q_rope = qr.data(),
                       .scale = 0.125f};
        const DecodeResult ref = ReferenceMlaDecode(kv, req);
        for (int threads : {1, 3}) {
          const DecodeResult fast = CpuMlaDecode(kv, req, threads);
          const std::string what = "tokens " + std::to_string(tokens) + " block " +
                                   std::to_string(block_tokens) + " threads " +
                                   std::to_string(threads);
          for (size_t i = 0; i < ref.out.size(); ++i) {
            ASSERT_NEAR(fast.out[i], ref.out[i], 2e-4 * (1 + std::abs(ref.out[i]))) << what;
          }
          for (size_t h = 0; h < ref.lse.size(); ++h) {
            ASSERT_NEAR(fast.lse[h], ref.lse[h], 2e-4 * (1 + std::abs(ref.lse[h]))) << what;
          }
        }
      }
    }
  }
}

TEST(ReferenceDecode, ValidationNamesTheProblem) {
  GqaShape shape{.layers = 1, .kv_heads = 2, .head_dim = 8, .block_tokens = 4};
  std::vector<uint8_t> block(shape.BlockBytes());
  PagedKv kv{shape, {block.data()}, 4};
  std::vector<float> q(3 * 8);
  DecodeRequest req{.layer = 0, .q_heads = 3, .q = q.data()};
  EXPECT_NE(ValidateDecode(kv, req).find("multiple of kv_heads"), std::string::npos);
  req.q_heads = 2;
  kv.context_tokens = 5;
  EXPECT_NE(ValidateDecode(kv, req).find("exceeds"), std::string::npos);
  kv.context_tokens = 4;
  req.layer = 1;
  EXPECT_NE(ValidateDecode(kv, req).find("layer"), std::string::npos);
  req.layer = 0;
  EXPECT_EQ(ValidateDecode(kv, req), "");
}

// The Quest bound is never below the true best score in its block: on awkward shapes, every
// dtype, shuffled pages, a partial last block whose unused slots hold NaN.
TEST(Quest, TheBoundIsNeverBelowTheBestScoreInItsBlock) {
  for (ElemType dtype : {ElemType::kFp16, ElemType::kBf16, ElemType::kFp32}) {
    for (int tokens : {1, 63, 65, 1000}) {
      const GqaShape shape{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16,
                           .dtype = dtype};
      const Context c = MakeContext(shape, tokens, /*group=*/4, tokens * 7 + 1);
      const KeyBounds b = ComputeKeyBounds(c.paged);
      ASSERT_EQ(b.blocks, (tokens + 15) / 16);
      for (int l = 0; l < shape.layers; ++l) {
        for (int qh = 0; qh < c.q_heads; ++qh) {
          const int h = qh / 4;
          const float* q = c.q.data() + size_t(qh) * shape.head_dim;
          for (int blk = 0; blk < b.blocks; ++blk) {
            const float u = QuestBound(q, b.min.data() + b.Offset(blk, l, h),
                                       b.max.data() + b.Offset(blk, l, h), shape.head_dim);
            ASSERT_TRUE(std::isfinite(u)) << "an unused slot reached the bounds";
            double best = -1e300;
            for (int t = blk * 16; t < std::min(tokens, blk * 16 + 16); ++t) {
              double dot = 0;
              for (int i = 0; i < shape.head_dim; ++i) dot += double(q[i]) * c.K(l, h, t, i);
              best = std::max(best, dot);
            }
            // Float sums of 64 terms: allow their rounding.
            ASSERT_GE(double(u), best - 1e-4 * (1 + std::fabs(best)))
                << "tokens " << tokens << " layer " << l << " head " << qh << " block " << blk;
          }
        }
      }
    }
  }
}

TEST(Quest, SelectionKeepsTheNeedleBlockAndTheLastBlock) {
  const GqaShape shape{.layers = 1, .kv_heads = 2, .head_dim = 32, .block_tokens = 16,
                       .dtype = ElemType::kFp32};
  Context c = MakeContext(shape, 16 * 20 - 3, /*group=*/2, 11);
  // Block 7 of KV head 1 holds a key along query head 2's query: its bound is the highest.
  const int needle = 7 * 16 + 5;
  float* k = static_cast<float*>(const_cast<void*>(c.paged.blocks[7])) +
             shape.SliceOffset(0, 0, 1) + size_t(needle % 16) * shape.head_dim;
  for (int i = 0; i < shape.head_dim; ++i) k[i] = 10.0f * c.q[2 * shape.head_dim + i];
  const KeyBounds b = ComputeKeyBounds(c.paged);
  DecodeRequest req{.layer = 0, .q_heads = 4, .q = c.q.data(), .scale = 1.0f};
  const auto chosen = SelectBlocks(c.paged, b, req, /*budget=*/2);
  EXPECT_EQ(chosen[1], (std::vector<int>{7, 19}));
  EXPECT_EQ(chosen[0].size(), 2u);
  EXPECT_EQ(chosen[0].back(), 19) << "the most recent block is always read";
  const auto all = SelectBlocks(c.paged, b, req, /*budget=*/100);
  EXPECT_EQ(all[0].size(), 20u);
}

}  // namespace
}  // namespace kvtier::gpu
