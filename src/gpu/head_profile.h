#pragma once
// Head profiles on disk, and how they are made.
//
// A head profile says, per layer, which KV heads are recall heads (they attend to the whole
// prefix); the others are local heads (the first `sink` and the last `window` tokens). Format
// (docs/head-profiles.md):
//
//   {"format": "kvtier.head_profile.v1", "model": "...", "layers": L, "kv_heads": H,
//    "sink": 4, "window": 64, "recall_fraction": 0.15,
//    "recall": [[0, 3], [1], ...]}                     one list of kv heads per layer
//
// Profiles are made from recorded attention statistics: for each retrieval probe (a prompt with
// a "needle" the answer depends on), the share of each head's attention that fell on the needle
// tokens. Heads that look at the needle across probes must see the whole prefix:
//
//   {"format": "kvtier.head_stats.v1", "layers": L, "kv_heads": H,
//    "probes": [{"name": "...", "needle_mass": [[m_0, ..., m_{H-1}], ...]}, ...]}
//
// (one row of H values per layer; a value is in [0, 1]; AttentionMass records one probe).
//
// Links nlohmann_json; not needed by the kernels, so the GPU binaries do without it.

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "gpu/attention.h"

namespace kvtier::gpu {

struct HeadProfileFile {
  std::string model;
  int layers = 0;
  int kv_heads = 0;
  double recall_fraction = 0;  // as selected; informational
  HeadProfile profile;         // recall is [layers][kv_heads]
};

// nullopt with *error set (naming the field) for a malformed profile.
std::optional<HeadProfileFile> ParseHeadProfile(const std::string& json, std::string* error);
std::string HeadProfileToJson(const HeadProfileFile& file);

// Mean needle mass per [layer][kv_head] over the probes of a statistics file; nullopt with
// *error set for malformed statistics.
std::optional<std::vector<std::vector<double>>> ScoreHeads(const std::string& stats_json,
                                                           std::string* error);

// The ceil(fraction x layers x kv_heads) best-scoring heads become recall heads (ties go to the
// lower layer, then the lower head). REQUIRES: 0 <= fraction <= 1, a non-empty rectangular table.
HeadProfile SelectRecallHeads(const std::vector<std::vector<double>>& scores, double fraction,
                              int sink, int window);

// One probe's statistics: for each query head, the share of its attention (softmax weight, in
// double) that falls on `tokens` (positions in the context; repeats count once, positions past
// it are ignored). Dense
// attention. REQUIRES: ValidateDecode(kv, req).empty().
std::vector<double> AttentionMass(const PagedKv& kv, const DecodeRequest& req,
                                  std::span<const int> tokens);

}  // namespace kvtier::gpu
