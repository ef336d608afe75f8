#pragma once
// The worker's core API in plain types (attention_service.cc turns AttentionService's messages
// into these and back): one decode step over the cached prefixes of some sequences.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/block_key.h"
#include "common/kv_layout.h"

namespace kvtier::worker {

enum class AttentionMode { kUnspecified, kDense, kHeadSparse, kMla };
const char* AttentionModeName(AttentionMode mode);  // "dense", "head_sparse", "mla", ...

// One layer's query: q_heads x head_dim (GQA), or heads x latent_rank and heads x rope_dim
// (MLA). Views: the caller's memory must outlive the step.
struct LayerQuery {
  uint32_t layer = 0;
  std::span<const float> q;
  std::span<const float> q_rope;  // MLA only
};

struct SequenceQuery {
  // The prefix's block keys, or (when empty) its tokens, hashed with the request's namespace.
  std::vector<BlockKey> keys;
  std::span<const uint32_t> tokens;
  uint64_t context_tokens = 0;  // 0: every token the blocks cover
  std::vector<LayerQuery> queries;
};

// Head-sparse attention's profile: per layer, the KV heads that read the whole context (the
// others read their sinks and window only).
struct SparseProfile {
  uint32_t sink = 0;    // 0: the default (gpu::HeadProfile's)
  uint32_t window = 0;  // 0: the default
  std::vector<std::vector<uint32_t>> recall_heads;  // [layer]
};

struct DecodeStepRequest {
  std::string tenant;
  std::string model;    // the key namespace, for sequences given by tokens
  std::string adapter;  // likewise
  KvLayout layout;
  AttentionMode mode = AttentionMode::kUnspecified;  // unspecified: MLA for an MLA layout, else dense
  SparseProfile profile;                             // head-sparse only
  float scale = 0;                                   // 0: 1 / sqrt(head or latent dimension)
  std::vector<SequenceQuery> sequences;
};

struct LayerOutput {
  uint32_t layer = 0;
  std::vector<float> out;
  std::vector<float> lse;
};

struct DecodeStepStats {
  uint64_t bytes_fetched = 0;      // from daemons (UCX and gRPC)
  uint64_t bytes_fetched_ucx = 0;  // of which over UCX
  uint64_t bytes_from_pool = 0;    // already in the worker's block pool
  uint64_t bytes_skipped = 0;      // head-sparse attention did not need
  uint32_t nodes_read = 0;
  uint64_t fetch_us = 0;
  uint64_t compute_us = 0;
};

struct DecodeStepResult {
  std::vector<std::vector<LayerOutput>> sequences;  // each sequence's layers, in query order
  DecodeStepStats stats;
  std::string device;  // what computed it: the GPU's name, or "cpu"
};

}  // namespace kvtier::worker
