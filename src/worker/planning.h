#pragma once
// A decode step's planning, pure (no I/O, no clocks; planning_test.cc): the request checked
// (Step), and for each sequence its blocks and the byte slices of each block that the attention
// needs (Plan): the requested layers; for head-sparse attention, outside the local heads' sinks
// and window, only the recall heads' slices.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "gpu/attention.h"
#include "worker/block_pool.h"
#include "worker/decode_types.h"

namespace kvtier::worker {

// What a request asks of every sequence, checked.
struct Step {
  KvLayout layout;
  gpu::ElemType elem = gpu::ElemType::kBf16;
  AttentionMode mode = AttentionMode::kDense;  // settled: never kUnspecified
  bool mla = false;
  bool sparse = false;
  gpu::HeadProfile profile;  // head-sparse only
  float scale = 1.0f;
  std::string pool_scope;  // tenant and bearer token: whose pool entries these are
};

// One sequence of a request: its blocks and what is needed of each.
struct Plan {
  std::vector<BlockKey> keys;  // the blocks the context covers
  int context = 0;             // tokens attended to
  uint32_t block_tokens = 0;
  std::vector<uint32_t> layers;        // requested, in query order
  uint64_t unit_bytes = 0;             // one layer of one block
  uint32_t slices = 1;                 // per unit
  std::vector<uint64_t> layer_offset;  // [layer]: where its bytes start in a block
  std::vector<BlockPool::Need> needs;  // [block * layers.size() + i]
  std::vector<BlockPool::Claim> claims;  // filled by the pool (Worker)
  uint64_t skipped_bytes = 0;

  // Block b's unit of layers[i].
  size_t Unit(size_t b, size_t i) const { return b * layers.size() + i; }
  // Whole-block bytes (every layer).
  uint64_t BlockBytes() const { return unit_bytes * layer_offset.size(); }
};

// The request checked, its mode settled. INVALID_ARGUMENT naming the field otherwise.
// `bearer_token` scopes the pool entries the step may use.
absl::StatusOr<Step> ParseStep(const DecodeStepRequest& request, const std::string& bearer_token);

// Sequence `si` of `request` planned. INVALID_ARGUMENT naming the field otherwise.
absl::StatusOr<Plan> PlanSequence(const DecodeStepRequest& request, size_t si, const Step& step);

}  // namespace kvtier::worker
