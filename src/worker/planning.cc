#include "worker/planning.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace kvtier::worker {
namespace {

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError(what); }

}  // namespace

const char* AttentionModeName(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kDense:
      return "dense";
    case AttentionMode::kHeadSparse:
      return "head_sparse";
    case AttentionMode::kMla:
      return "mla";
    default:
      return "unspecified";
  }
}

absl::StatusOr<Step> ParseStep(const DecodeStepRequest& request, const std::string& bearer_token) {
  if (request.tenant.empty()) return Invalid("tenant: must be set");
  Step step;
  const KvLayout& layout = step.layout = request.layout;
  switch (layout.dtype) {
    case DType::kFp16:
      step.elem = gpu::ElemType::kFp16;
      break;
    case DType::kBf16:
      step.elem = gpu::ElemType::kBf16;
      break;
    default:
      return Invalid("layout.dtype: the worker's kernels take fp16 and bf16");
  }
  step.mla = layout.kind == LayoutKind::kMla;
  step.mode = request.mode;
  if (step.mode == AttentionMode::kUnspecified) {
    step.mode = step.mla ? AttentionMode::kMla : AttentionMode::kDense;
  }
  if (step.mla != (step.mode == AttentionMode::kMla)) {
    return Invalid(step.mla ? "mode: an MLA layout takes MLA attention"
                            : "mode: MLA attention needs an MLA layout");
  }
  step.sparse = step.mode == AttentionMode::kHeadSparse;
  if (step.sparse) {
    const SparseProfile& p = request.profile;
    if (p.recall_heads.size() != layout.layers) {
      return Invalid(absl::StrCat("profile.layers: ", p.recall_heads.size(), " entries for ",
                                  layout.layers, " layers"));
    }
    if (p.sink > 0) step.profile.sink = static_cast<int>(p.sink);
    if (p.window > 0) step.profile.window = static_cast<int>(p.window);
    step.profile.recall.assign(layout.layers, std::vector<bool>(layout.kv_heads, false));
    for (size_t l = 0; l < p.recall_heads.size(); ++l) {
      for (uint32_t h : p.recall_heads[l]) {
        if (h >= layout.kv_heads) {
          return Invalid(absl::StrCat("profile.layers[", l, "]: recall head ", h, " of ",
                                      layout.kv_heads, " kv heads"));
        }
        step.profile.recall[l][h] = true;
      }
    }
  }
  if (request.sequences.empty()) return Invalid("sequences: none given");
  step.scale =
      request.scale != 0
          ? request.scale
          : static_cast<float>(
                1.0 / std::sqrt(step.mla ? layout.latent_rank + layout.rope_dim : layout.head_dim));
  // The pool keeps what one caller fetched for that caller only: its entries are keyed by tenant
  // and bearer token, so a request is never served bytes that the daemons would refuse it
  // (another tenant's, or without the token they checked).
  step.pool_scope = absl::StrCat(request.tenant, "\n", bearer_token);
  return step;
}

absl::StatusOr<Plan> PlanSequence(const DecodeStepRequest& request, size_t si, const Step& step) {
  const KvLayout& layout = step.layout;
  const uint32_t bt = layout.block_tokens;
  const SequenceQuery& seq = request.sequences[si];
  const std::string where = absl::StrCat("sequences[", si, "]");
  Plan plan;
  if (seq.keys.empty() == seq.tokens.empty()) {
    return Invalid(where + ": give packed_keys or tokens (one of the two)");
  }
  if (!seq.keys.empty()) {
    plan.keys = seq.keys;
  } else {
    auto hasher = ChainHasher::Create({.tenant_salt = request.tenant,
                                       .model_id = request.model,
                                       .layout_fingerprint = layout.Fingerprint(),
                                       .adapter_id = request.adapter},
                                      bt);
    if (!hasher.ok()) return hasher.status();
    plan.keys = hasher->Keys(seq.tokens);
    if (plan.keys.empty()) return Invalid(where + ".tokens: shorter than one block");
  }
  const uint64_t covered = plan.keys.size() * uint64_t{bt};
  const uint64_t context = seq.context_tokens == 0 ? covered : seq.context_tokens;
  if (context > covered || context + bt <= covered) {
    return Invalid(absl::StrCat(where, ".context_tokens: ", context, " for ", plan.keys.size(),
                                " blocks of ", bt, " tokens (must end in the last block)"));
  }
  plan.context = static_cast<int>(context);
  plan.block_tokens = bt;
  if (seq.queries.empty()) return Invalid(where + ".queries: none given");
  absl::flat_hash_set<uint32_t> seen;
  for (size_t qi = 0; qi < seq.queries.size(); ++qi) {
    const LayerQuery& q = seq.queries[qi];
    const std::string qw = absl::StrCat(where, ".queries[", qi, "]");
    if (q.layer >= layout.layers) {
      return Invalid(absl::StrCat(qw, ".layer: ", q.layer, " of ", layout.layers));
    }
    if (!seen.insert(q.layer).second) return Invalid(qw + ".layer: given twice");
    const size_t size = q.q.size();
    if (step.mla) {
      const size_t heads = size / layout.latent_rank;
      if (heads == 0 || size != heads * layout.latent_rank ||
          q.q_rope.size() != heads * layout.rope_dim) {
        return Invalid(absl::StrCat(qw, ": q must be heads x ", layout.latent_rank,
                                    " and q_rope heads x ", layout.rope_dim));
      }
    } else {
      const size_t heads = size / layout.head_dim;
      if (heads == 0 || size != heads * layout.head_dim || heads % layout.kv_heads != 0 ||
          !q.q_rope.empty()) {
        return Invalid(absl::StrCat(qw, ": q must be q_heads x ", layout.head_dim,
                                    ", q_heads a multiple of ", layout.kv_heads,
                                    " (and no q_rope)"));
      }
    }
    plan.layers.push_back(q.layer);
  }
  for (uint32_t l = 0; l < layout.layers; ++l) {
    plan.layer_offset.push_back(layout.LayerSlice(l)->offset);
  }
  plan.unit_bytes = layout.LayerSlice(0)->length;
  plan.slices = step.mla ? 1 : 2 * layout.kv_heads;
  const uint64_t slice_bytes = plan.unit_bytes / plan.slices;
  // Blocks a local head reads: those holding its sinks or its window.
  auto local_reads = [&](size_t b) {
    const int64_t first = int64_t(b) * bt;
    return first < step.profile.sink || first + bt > int64_t(plan.context) - step.profile.window;
  };
  TenantKeyer pool_key(step.pool_scope);
  for (size_t b = 0; b < plan.keys.size(); ++b) {
    const BlockKey key = pool_key(plan.keys[b]);
    for (uint32_t l : plan.layers) {
      BlockPool::Need need{
          .key = key, .layer = l, .unit_bytes = plan.unit_bytes, .slices = plan.slices};
      for (uint32_t s = 0; s < plan.slices; ++s) {
        const uint32_t head = s % std::max<uint32_t>(layout.kv_heads, 1);
        if (!step.sparse || step.profile.recall[l][head] || local_reads(b)) {
          need.wanted.push_back(s);
        } else {
          plan.skipped_bytes += slice_bytes;
        }
      }
      plan.needs.push_back(std::move(need));
    }
  }
  return plan;
}

}  // namespace kvtier::worker
