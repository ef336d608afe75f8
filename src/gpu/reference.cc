#include <algorithm>
#include <cmath>
#include <limits>

#include "gpu/attention.h"
#include "gpu/half.h"

namespace kvtier::gpu {

int ElemBytes(ElemType t) {
  switch (t) {
    case ElemType::kFp16:
    case ElemType::kBf16:
      return 2;
    case ElemType::kFp32:
      return 4;
  }
  return 0;
}

namespace {

double Load(const void* base, size_t index, ElemType t) {
  switch (t) {
    case ElemType::kFp16:
      return Fp16ToFloat(static_cast<const uint16_t*>(base)[index]);
    case ElemType::kBf16:
      return Bf16ToFloat(static_cast<const uint16_t*>(base)[index]);
    case ElemType::kFp32:
      return static_cast<const float*>(base)[index];
  }
  return 0;
}

// Whether token t is attended by a head of this kind.
bool Attends(bool recall, const HeadProfile* p, int t, int context) {
  if (recall || p == nullptr) return true;
  return t < p->sink || t >= context - p->window;
}

}  // namespace

std::string ValidateDecode(const PagedKv& kv, const DecodeRequest& req) {
  const GqaShape& s = kv.shape;
  if (s.layers <= 0 || s.kv_heads <= 0 || s.head_dim <= 0 || s.block_tokens <= 0) {
    return "shape: layers, kv_heads, head_dim and block_tokens must be > 0";
  }
  if (req.layer < 0 || req.layer >= s.layers) return "layer out of range";
  if (req.q_heads <= 0 || req.q_heads % s.kv_heads != 0) {
    return "q_heads must be a positive multiple of kv_heads";
  }
  if (req.q == nullptr) return "no query";
  if (kv.context_tokens <= 0) return "context_tokens must be > 0";
  if (size_t(kv.context_tokens) > kv.blocks.size() * size_t(s.block_tokens)) {
    return "context_tokens exceeds the blocks given";
  }
  for (size_t b = 0; b * s.block_tokens < size_t(kv.context_tokens); ++b) {
    if (kv.blocks[b] == nullptr) return "a block of the context is missing";
  }
  if (req.profile != nullptr && !req.profile->recall.empty()) {
    if (req.profile->recall.size() != size_t(s.layers)) return "profile: one entry per layer";
    for (const auto& l : req.profile->recall) {
      if (l.size() != size_t(s.kv_heads)) return "profile: one flag per kv head";
    }
  }
  if (req.profile != nullptr && (req.profile->sink < 0 || req.profile->window < 0)) {
    return "profile: sink and window must be >= 0";
  }
  return "";
}

DecodeResult ReferenceDecode(const PagedKv& kv, const DecodeRequest& req) {
  return ReferencePartialDecode(kv, req, 0, kv.context_tokens);
}

DecodeResult ReferencePartialDecode(const PagedKv& kv, const DecodeRequest& req, int begin,
                                    int end) {
  const GqaShape& s = kv.shape;
  const int group = req.q_heads / s.kv_heads;
  const int d = s.head_dim;
  DecodeResult r;
  r.out.assign(size_t(req.q_heads) * d, 0.0f);
  r.lse.assign(req.q_heads, 0.0f);
  std::vector<double> scores(kv.context_tokens), acc(d);
  for (int h = 0; h < req.q_heads; ++h) {
    const int kvh = h / group;
    const bool recall = req.profile == nullptr || req.profile->IsRecall(req.layer, kvh);
    const float* q = req.q + size_t(h) * d;
    double max_score = -std::numeric_limits<double>::infinity();
    for (int t = begin; t < end; ++t) {
      if (!Attends(recall, req.profile, t, kv.context_tokens)) continue;
      const void* block = kv.blocks[t / s.block_tokens];
      const size_t base = s.SliceOffset(req.layer, 0, kvh) + size_t(t % s.block_tokens) * d;
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[i]) * Load(block, base + i, s.dtype);
      scores[t] = dot * req.scale;
      max_score = std::max(max_score, scores[t]);
    }
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    if (max_score == -std::numeric_limits<double>::infinity()) {  // nothing attended in range
      r.lse[h] = -std::numeric_limits<float>::infinity();
      continue;
    }
    for (int t = begin; t < end; ++t) {
      if (!Attends(recall, req.profile, t, kv.context_tokens)) continue;
      const double w = std::exp(scores[t] - max_score);
      sum += w;
      const void* block = kv.blocks[t / s.block_tokens];
      const size_t base = s.SliceOffset(req.layer, 1, kvh) + size_t(t % s.block_tokens) * d;
      for (int i = 0; i < d; ++i) acc[i] += w * Load(block, base + i, s.dtype);
    }
    for (int i = 0; i < d; ++i) r.out[size_t(h) * d + i] = static_cast<float>(acc[i] / sum);
    r.lse[h] = static_cast<float>(max_score + std::log(sum));
  }
  return r;
}

DecodeResult CombineSplits(const std::vector<DecodeResult>& parts) {
  DecodeResult r;
  if (parts.empty()) return r;
  const size_t heads = parts[0].lse.size();
  const size_t d = heads == 0 ? 0 : parts[0].out.size() / heads;
  r.out.assign(parts[0].out.size(), 0.0f);
  r.lse.assign(heads, 0.0f);
  for (size_t h = 0; h < heads; ++h) {
    double m = -std::numeric_limits<double>::infinity();
    for (const DecodeResult& p : parts) m = std::max(m, double(p.lse[h]));
    if (m == -std::numeric_limits<double>::infinity()) {
      r.lse[h] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double total = 0;
    std::vector<double> acc(d, 0.0);
    for (const DecodeResult& p : parts) {
      if (p.lse[h] == -std::numeric_limits<float>::infinity()) continue;
      const double w = std::exp(double(p.lse[h]) - m);  // the part's share, up to exp(m)
      total += w;
      for (size_t i = 0; i < d; ++i) acc[i] += w * p.out[h * d + i];
    }
    for (size_t i = 0; i < d; ++i) r.out[h * d + i] = static_cast<float>(acc[i] / total);
    r.lse[h] = static_cast<float>(m + std::log(total));
  }
  return r;
}

DecodeResult ReferenceMlaDecode(const MlaPagedKv& kv, const MlaRequest& req) {
  const MlaShape& s = kv.shape;
  const int rank = s.latent_rank, rope = s.rope_dim;
  DecodeResult r;
  r.out.assign(size_t(req.heads) * rank, 0.0f);
  r.lse.assign(req.heads, 0.0f);
  std::vector<double> scores(kv.context_tokens), acc(rank);
  auto token_base = [&](int t) {
    return (size_t(req.layer) * s.block_tokens + t % s.block_tokens) * s.TokenElems();
  };
  for (int h = 0; h < req.heads; ++h) {
    const float* ql = req.q_latent + size_t(h) * rank;
    const float* qr = req.q_rope + size_t(h) * rope;
    double m = -std::numeric_limits<double>::infinity();
    for (int t = 0; t < kv.context_tokens; ++t) {
      const void* block = kv.blocks[t / s.block_tokens];
      const size_t base = token_base(t);
      double dot = 0;
      for (int i = 0; i < rank; ++i) dot += double(ql[i]) * Load(block, base + i, s.dtype);
      for (int i = 0; i < rope; ++i) dot += double(qr[i]) * Load(block, base + rank + i, s.dtype);
      scores[t] = dot * req.scale;
      m = std::max(m, scores[t]);
    }
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int t = 0; t < kv.context_tokens; ++t) {
      const double w = std::exp(scores[t] - m);
      sum += w;
      const void* block = kv.blocks[t / s.block_tokens];
      const size_t base = token_base(t);
      for (int i = 0; i < rank; ++i) acc[i] += w * Load(block, base + i, s.dtype);
    }
    for (int i = 0; i < rank; ++i) r.out[size_t(h) * rank + i] = static_cast<float>(acc[i] / sum);
    r.lse[h] = static_cast<float>(m + std::log(sum));
  }
  return r;
}

}  // namespace kvtier::gpu
