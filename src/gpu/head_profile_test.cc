#include "gpu/head_profile.h"

#include <gtest/gtest.h>

#include <random>

namespace kvtier::gpu {
namespace {

HeadProfileFile Sample() {
  HeadProfileFile f;
  f.model = "llama-like";
  f.layers = 3;
  f.kv_heads = 4;
  f.recall_fraction = 0.25;
  f.profile.sink = 2;
  f.profile.window = 32;
  f.profile.recall = {
      {true, false, false, false}, {false, false, false, false}, {false, true, false, true}};
  return f;
}

TEST(HeadProfileFile, RoundTrips) {
  const HeadProfileFile f = Sample();
  std::string error;
  auto back = ParseHeadProfile(HeadProfileToJson(f), &error);
  ASSERT_TRUE(back.has_value()) << error;
  EXPECT_EQ(back->model, f.model);
  EXPECT_EQ(back->layers, 3);
  EXPECT_EQ(back->kv_heads, 4);
  EXPECT_EQ(back->profile.sink, 2);
  EXPECT_EQ(back->profile.window, 32);
  EXPECT_DOUBLE_EQ(back->recall_fraction, 0.25);
  EXPECT_EQ(back->profile.recall, f.profile.recall);
}

TEST(HeadProfileFile, DefaultsForSinkAndWindow) {
  std::string error;
  auto f = ParseHeadProfile(
      R"({"format": "kvtier.head_profile.v1", "layers": 1, "kv_heads": 2, "recall": [[1]]})",
      &error);
  ASSERT_TRUE(f.has_value()) << error;
  EXPECT_EQ(f->profile.sink, 4);
  EXPECT_EQ(f->profile.window, 64);
  EXPECT_FALSE(f->profile.IsRecall(0, 0));
  EXPECT_TRUE(f->profile.IsRecall(0, 1));
}

TEST(HeadProfileFile, BadFilesNameTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {"not json", "JSON"},
      {R"({"format": "other", "layers": 1, "kv_heads": 1, "recall": [[]]})", "format"},
      {R"({"format": "kvtier.head_profile.v1", "kv_heads": 1, "recall": [[]]})", "layers"},
      {R"({"format": "kvtier.head_profile.v1", "layers": 2, "kv_heads": 1, "recall": [[]]})",
       "recall"},
      {R"({"format": "kvtier.head_profile.v1", "layers": 1, "kv_heads": 2, "recall": [[2]]})",
       "recall[0]"},
      {R"({"format": "kvtier.head_profile.v1", "layers": 1, "kv_heads": 2, "recall": [[0]],
           "window": -1})",
       "window"},
      {R"({"format": "kvtier.head_profile.v1", "layers": 1, "kv_heads": 2, "recall": [[0]],
           "recall_fraction": 2})",
       "recall_fraction"},
  };
  for (const auto& [text, field] : cases) {
    std::string error;
    EXPECT_FALSE(ParseHeadProfile(text, &error).has_value()) << text;
    EXPECT_NE(error.find(field), std::string::npos) << text << ": " << error;
  }
}

TEST(HeadScoring, MeansOverProbesAndTheBestHeadsBecomeRecallHeads) {
  std::string error;
  auto scores = ScoreHeads(R"({"format": "kvtier.head_stats.v1", "layers": 2, "kv_heads": 2,
      "probes": [{"name": "a", "needle_mass": [[0.9, 0.1], [0.0, 0.5]]},
                 {"name": "b", "needle_mass": [[0.7, 0.1], [0.2, 0.3]]}]})",
                           &error);
  ASSERT_TRUE(scores.has_value()) << error;
  EXPECT_DOUBLE_EQ((*scores)[0][0], 0.8);
  EXPECT_DOUBLE_EQ((*scores)[1][1], 0.4);
  const HeadProfile one = SelectRecallHeads(*scores, 0.25, 4, 64);
  EXPECT_EQ(one.recall, (std::vector<std::vector<bool>>{{true, false}, {false, false}}));
  const HeadProfile two = SelectRecallHeads(*scores, 0.3, 4, 64);  // ceil(1.2) = 2
  EXPECT_EQ(two.recall, (std::vector<std::vector<bool>>{{true, false}, {false, true}}));
  EXPECT_EQ(SelectRecallHeads(*scores, 0, 4, 64).recall,
            (std::vector<std::vector<bool>>{{false, false}, {false, false}}));
}

TEST(HeadScoring, BadStatisticsNameTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"format": "kvtier.head_stats.v1", "layers": 1, "kv_heads": 1, "probes": []})", "probes"},
      {R"({"format": "kvtier.head_stats.v1", "layers": 1, "kv_heads": 2,
           "probes": [{"needle_mass": [[0.5]]}]})",
       "probes[0].needle_mass[0]"},
      {R"({"format": "kvtier.head_stats.v1", "layers": 1, "kv_heads": 1,
           "probes": [{"needle_mass": [[1.5]]}]})",
       "[0, 1]"},
  };
  for (const auto& [text, field] : cases) {
    std::string error;
    EXPECT_FALSE(ScoreHeads(text, &error).has_value()) << text;
    EXPECT_NE(error.find(field), std::string::npos) << text << ": " << error;
  }
}

// A small model whose retrieval heads (layer 0 head 2, layer 1 head 0) put their attention on
// the needle: recorded with AttentionMass over a few probes, scored, and selected, exactly those
// become the recall heads.
TEST(HeadScoring, RetrievalHeadsAreFoundFromRecordedNeedleAttention) {
  const GqaShape shape{
      .layers = 2, .kv_heads = 4, .head_dim = 16, .block_tokens = 16, .dtype = ElemType::kFp32};
  const int context = 200, q_heads = 8;
  const std::vector<std::pair<int, int>> retrieval = {{0, 2}, {1, 0}};
  std::mt19937_64 rng(3);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  std::vector<float> q(q_heads * 16);
  for (float& x : q) x = noise(rng);

  std::string stats =
      R"({"format": "kvtier.head_stats.v1", "layers": 2, "kv_heads": 4, "probes": [)";
  for (int probe = 0; probe < 3; ++probe) {
    const int needle = 30 + probe * 50;
    std::vector<std::vector<float>> blocks(13, std::vector<float>(shape.BlockBytes() / 4));
    for (auto& b : blocks) {
      for (float& x : b) x = noise(rng);
    }
    for (auto [layer, kvh] : retrieval) {
      for (int t = needle; t < needle + 3; ++t) {  // keys along the heads' queries
        float* k = blocks[t / 16].data() + shape.SliceOffset(layer, 0, kvh) + (t % 16) * 16;
        for (int i = 0; i < 16; ++i) {
          k[i] = 20.0f * (q[(2 * kvh) * 16 + i] + q[(2 * kvh + 1) * 16 + i]);
        }
      }
    }
    PagedKv kv{.shape = shape, .context_tokens = context};
    for (auto& b : blocks) kv.blocks.push_back(b.data());
    if (probe > 0) stats += ",";
    stats += R"({"needle_mass": [)";
    for (int layer = 0; layer < 2; ++layer) {
      DecodeRequest req{.layer = layer, .q_heads = q_heads, .q = q.data(), .scale = 0.25f};
      const std::vector<int> needle_tokens = {needle, needle + 1, needle + 2};
      const std::vector<double> mass = AttentionMass(kv, req, needle_tokens);
      stats += layer ? ",[" : "[";
      for (int kvh = 0; kvh < 4; ++kvh) {  // a kv head's mass: the mean of its query heads
        if (kvh > 0) stats += ",";
        stats += std::to_string((mass[2 * kvh] + mass[2 * kvh + 1]) / 2);
      }
      stats += "]";
    }
    stats += "]}";
  }
  stats += "]}";
  std::string error;
  auto scores = ScoreHeads(stats, &error);
  ASSERT_TRUE(scores.has_value()) << error << "\n" << stats;
  for (auto [layer, kvh] : retrieval) EXPECT_GT((*scores)[layer][kvh], 0.5);
  const HeadProfile p = SelectRecallHeads(*scores, 2.0 / 8, 4, 64);
  EXPECT_EQ(p.recall, (std::vector<std::vector<bool>>{{false, false, true, false},
                                                      {true, false, false, false}}));
}

}  // namespace
}  // namespace kvtier::gpu
