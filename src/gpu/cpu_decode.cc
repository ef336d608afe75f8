// CPU fast path for GQA decode attention (see attention.h).
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <thread>

#include "gpu/attention.h"
#include "gpu/half.h"

namespace kvtier::gpu {
namespace {

// Converts `n` elements starting at element `index` of `base` to float.
void ToFloat(const void* base, size_t index, size_t n, ElemType t, float* out) {
  switch (t) {
    case ElemType::kBf16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + index;
      for (size_t i = 0; i < n; ++i) {
        const uint32_t bits = uint32_t{p[i]} << 16;
        std::memcpy(&out[i], &bits, 4);
      }
      break;
    }
    case ElemType::kFp16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + index;
      for (size_t i = 0; i < n; ++i) out[i] = Fp16ToFloat(p[i]);
      break;
    }
    case ElemType::kFp32:
      std::memcpy(out, static_cast<const float*>(base) + index, n * sizeof(float));
      break;
  }
}

struct Range {
  int begin, end;
};

// The token ranges a head attends to within [begin, end).
int AttendedRanges(bool recall, const HeadProfile* p, int context, int begin, int end,
                   Range out[2]) {
  if (recall || p == nullptr) {
    out[0] = {begin, end};
    return begin < end ? 1 : 0;
  }
  int n = 0;
  const int sink_end = std::min(p->sink, context);
  const int window_begin = std::max(sink_end, context - p->window);
  for (Range r : {Range{0, sink_end}, Range{window_begin, context}}) {
    r.begin = std::max(r.begin, begin);
    r.end = std::min(r.end, end);
    if (r.begin < r.end) out[n++] = r;
  }
  return n;
}

// Attention of the `group` query heads of KV head `kvh` over tokens [begin, end): writes their
// outputs and lse into `out`/`lse` at the heads' positions.
void DecodeKvHead(const PagedKv& kv, const DecodeRequest& req, int kvh, int begin, int end,
                  float* out, float* lse) {
  const GqaShape& s = kv.shape;
  const int d = s.head_dim, bt = s.block_tokens;
  const int group = req.q_heads / s.kv_heads;
  const bool recall = req.profile == nullptr || req.profile->IsRecall(req.layer, kvh);
  std::vector<float> k(size_t(bt) * d), v(size_t(bt) * d), scores(bt);
  std::vector<float> m(group, -std::numeric_limits<float>::infinity()), l(group, 0.0f);
  std::vector<float> acc(size_t(group) * d, 0.0f);
  Range ranges[2];
  const int nr = AttendedRanges(recall, req.profile, kv.context_tokens, begin, end, ranges);
  for (int ri = 0; ri < nr; ++ri) {
    for (int t0 = ranges[ri].begin; t0 < ranges[ri].end;) {
      const int block = t0 / bt;
      const int first = t0 % bt;
      const int count = std::min(bt - first, ranges[ri].end - t0);
      const void* base = kv.blocks[block];
      ToFloat(base, s.SliceOffset(req.layer, 0, kvh) + size_t(first) * d, size_t(count) * d,
              s.dtype, k.data());
      ToFloat(base, s.SliceOffset(req.layer, 1, kvh) + size_t(first) * d, size_t(count) * d,
              s.dtype, v.data());
      for (int g = 0; g < group; ++g) {
        const float* q = req.q + size_t(kvh * group + g) * d;
        float block_max = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < count; ++j) {
          const float* kj = k.data() + size_t(j) * d;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int i = 0; i < d; ++i) dot += q[i] * kj[i];
          scores[j] = dot * req.scale;
          block_max = std::max(block_max, scores[j]);
        }
        const float new_m = std::max(m[g], block_max);
        const float correction = std::exp(m[g] - new_m);  // 0 on the first block
        float* a = acc.data() + size_t(g) * d;
#pragma omp simd
        for (int i = 0; i < d; ++i) a[i] *= correction;
        l[g] *= correction;
        for (int j = 0; j < count; ++j) {
          const float w = std::exp(scores[j] - new_m);
          l[g] += w;
          const float* vj = v.data() + size_t(j) * d;
#pragma omp simd
          for (int i = 0; i < d; ++i) a[i] += w * vj[i];
        }
        m[g] = new_m;
      }
      t0 += count;
    }
  }
  for (int g = 0; g < group; ++g) {
    const int h = kvh * group + g;
    if (l[g] == 0) {
      lse[h] = -std::numeric_limits<float>::infinity();
      std::fill(out + size_t(h) * d, out + size_t(h + 1) * d, 0.0f);
      continue;
    }
    const float inv = 1.0f / l[g];
    for (int i = 0; i < d; ++i) out[size_t(h) * d + i] = acc[size_t(g) * d + i] * inv;
    lse[h] = m[g] + std::log(l[g]);
  }
}

}  // namespace

DecodeResult CpuDecode(const PagedKv& kv, const DecodeRequest& req, int threads) {
  const GqaShape& s = kv.shape;
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  // Enough splits per KV head to keep every thread busy, none shorter than 512 tokens.
  const int per_head = std::max(1, std::min((threads + s.kv_heads - 1) / s.kv_heads,
                                            kv.context_tokens / 512));
  const int split_len = (kv.context_tokens + per_head - 1) / per_head;
  std::vector<DecodeResult> parts(per_head);
  for (auto& p : parts) {
    p.out.assign(size_t(req.q_heads) * s.head_dim, 0.0f);
    p.lse.assign(req.q_heads, -std::numeric_limits<float>::infinity());
  }
  const int tasks = s.kv_heads * per_head;
  auto run = [&](int task) {
    const int kvh = task / per_head, split = task % per_head;
    const int begin = split * split_len;
    const int end = std::min(kv.context_tokens, begin + split_len);
    DecodeKvHead(kv, req, kvh, begin, end, parts[split].out.data(), parts[split].lse.data());
  };
  if (threads == 1 || tasks == 1) {
    for (int t = 0; t < tasks; ++t) run(t);
  } else {
    std::vector<std::thread> pool;
    const int n = std::min(threads, tasks);
    for (int w = 0; w < n; ++w) {
      pool.emplace_back([&, w] {
        for (int t = w; t < tasks; t += n) run(t);
      });
    }
    for (auto& th : pool) th.join();
  }
  if (per_head == 1) return std::move(parts[0]);
  return CombineSplits(parts);
}

}  // namespace kvtier::gpu
