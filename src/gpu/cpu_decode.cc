// CPU fast path for GQA decode attention (see attention.h).
#include <algorithm>
#include <bit>
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

// exp(x) for x <= 88 within about 2 ulp (x below -87 gives about 1e-38, as good as 0 for softmax
// weights), branch-free and without calls so that loops over it vectorize: std::exp is a scalar
// libm call, and with one per token per head it costs more than the rest of the attention.
inline float FastExp(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.44269504088896341f;  // x / ln 2
  constexpr float kRound = 12582912.0f;      // 1.5 x 2^23: adding it rounds to an integer
  const float n = (t + kRound) - kRound;
  // r = x - n ln 2 in two steps (ln 2 split high/low), |r| <= ln 2 / 2.
  const float r = (x - n * 0.693145751953125f) - n * 1.428606820309417232e-6f;
  float p = 1.0f / 720;  // Taylor to r^6: error below r^7/5040 < 6e-8 relative
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * std::bit_cast<float>(bits);
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

// The hot loops are compiled twice: for x86-64-v3 (AVX2 and FMA, 8 floats a step) and for the
// baseline (SSE2); the loader picks one for this CPU (GCC function multiversioning).
#if defined(__x86_64__) && defined(__GNUC__)
#define KVTIER_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define KVTIER_VECTOR_CLONES
#endif

// Attention of the `group` query heads of KV head `kvh` over tokens [begin, end): writes their
// outputs and lse into `out`/`lse` at the heads' positions.
KVTIER_VECTOR_CLONES void DecodeKvHead(const PagedKv& kv, const DecodeRequest& req, int kvh,
                                       int begin, int end, float* out, float* lse) {
  const GqaShape& s = kv.shape;
  const int d = s.head_dim, bt = s.block_tokens;
  const int group = req.q_heads / s.kv_heads;
  const bool recall = req.profile == nullptr || req.profile->IsRecall(req.layer, kvh);
  std::vector<float> k(size_t(bt) * d), v(size_t(bt) * d), scores(size_t(group) * bt);
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
      // Scores of every query head of the group: four heads at a time share each key load.
      const float* q0 = req.q + size_t(kvh) * group * d;
      int g = 0;
      for (; g + 4 <= group; g += 4) {
        const float *qa = q0 + size_t(g) * d, *qb = qa + d, *qc = qb + d, *qd = qc + d;
        for (int j = 0; j < count; ++j) {
          const float* kj = k.data() + size_t(j) * d;
          float da = 0, db = 0, dc = 0, dd = 0;
#pragma omp simd reduction(+ : da, db, dc, dd)
          for (int i = 0; i < d; ++i) {
            const float x = kj[i];
            da += qa[i] * x;
            db += qb[i] * x;
            dc += qc[i] * x;
            dd += qd[i] * x;
          }
          scores[size_t(g) * bt + j] = da * req.scale;
          scores[size_t(g + 1) * bt + j] = db * req.scale;
          scores[size_t(g + 2) * bt + j] = dc * req.scale;
          scores[size_t(g + 3) * bt + j] = dd * req.scale;
        }
      }
      for (; g < group; ++g) {
        const float* q = q0 + size_t(g) * d;
        for (int j = 0; j < count; ++j) {
          const float* kj = k.data() + size_t(j) * d;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int i = 0; i < d; ++i) dot += q[i] * kj[i];
          scores[size_t(g) * bt + j] = dot * req.scale;
        }
      }
      // Online softmax per head: rescale what came before, turn scores into weights.
      for (g = 0; g < group; ++g) {
        float* sg = scores.data() + size_t(g) * bt;
        float block_max = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < count; ++j) block_max = std::max(block_max, sg[j]);
        const float new_m = std::max(m[g], block_max);
        const float correction = FastExp(m[g] - new_m);  // ~0 on the first block
        float* a = acc.data() + size_t(g) * d;
#pragma omp simd
        for (int i = 0; i < d; ++i) a[i] *= correction;
        float weights = 0;
#pragma omp simd reduction(+ : weights)
        for (int j = 0; j < count; ++j) {
          sg[j] = FastExp(sg[j] - new_m);  // now the token's weight
          weights += sg[j];
        }
        l[g] = l[g] * correction + weights;
        m[g] = new_m;
      }
      // Weighted values, four heads at a time sharing each value load.
      for (g = 0; g + 4 <= group; g += 4) {
        float *aa = acc.data() + size_t(g) * d, *ab = aa + d, *ac = ab + d, *ad = ac + d;
        const float* sg = scores.data() + size_t(g) * bt;
        for (int j = 0; j < count; ++j) {
          const float wa = sg[j], wb = sg[bt + j], wc = sg[2 * bt + j], wd = sg[3 * bt + j];
          const float* vj = v.data() + size_t(j) * d;
#pragma omp simd
          for (int i = 0; i < d; ++i) {
            const float x = vj[i];
            aa[i] += wa * x;
            ab[i] += wb * x;
            ac[i] += wc * x;
            ad[i] += wd * x;
          }
        }
      }
      for (; g < group; ++g) {
        float* a = acc.data() + size_t(g) * d;
        const float* sg = scores.data() + size_t(g) * bt;
        for (int j = 0; j < count; ++j) {
          const float w = sg[j];
          const float* vj = v.data() + size_t(j) * d;
#pragma omp simd
          for (int i = 0; i < d; ++i) a[i] += w * vj[i];
        }
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

// MLA attention of every head over tokens [begin, end): writes [heads][rank] and lse.
KVTIER_VECTOR_CLONES void MlaRange(const MlaPagedKv& kv, const MlaRequest& req, int begin,
                                   int end, float* out, float* lse) {
  const MlaShape& s = kv.shape;
  const int rank = s.latent_rank, rope = s.rope_dim, bt = s.block_tokens;
  const size_t te = s.TokenElems();
  const int heads = req.heads;
  std::vector<float> tok(size_t(bt) * te), scores(size_t(bt) * heads);
  std::vector<float> m(heads, -std::numeric_limits<float>::infinity()), l(heads, 0.0f);
  std::vector<float> acc(size_t(heads) * rank, 0.0f);
  for (int t0 = begin; t0 < end;) {
    const int block = t0 / bt, first = t0 % bt, count = std::min(bt - first, end - t0);
    ToFloat(kv.blocks[block], (size_t(req.layer) * bt + first) * te, size_t(count) * te, s.dtype,
            tok.data());
    for (int h = 0; h < heads; ++h) {
      const float* ql = req.q_latent + size_t(h) * rank;
      const float* qr = req.q_rope + size_t(h) * rope;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < count; ++j) {
        const float* c = tok.data() + size_t(j) * te;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < rank; ++i) dot += ql[i] * c[i];
        float dr = 0;
#pragma omp simd reduction(+ : dr)
        for (int i = 0; i < rope; ++i) dr += qr[i] * c[rank + i];
        const float score = (dot + dr) * req.scale;
        scores[size_t(h) * bt + j] = score;
        block_max = std::max(block_max, score);
      }
      const float new_m = std::max(m[h], block_max);
      const float correction = FastExp(m[h] - new_m);
      float* a = acc.data() + size_t(h) * rank;
#pragma omp simd
      for (int i = 0; i < rank; ++i) a[i] *= correction;
      float* hs = scores.data() + size_t(h) * bt;
      float weights = 0;
#pragma omp simd reduction(+ : weights)
      for (int j = 0; j < count; ++j) {
        hs[j] = FastExp(hs[j] - new_m);
        weights += hs[j];
      }
      l[h] = l[h] * correction + weights;
      for (int j = 0; j < count; ++j) {
        const float w = hs[j];
        const float* c = tok.data() + size_t(j) * te;
#pragma omp simd
        for (int i = 0; i < rank; ++i) a[i] += w * c[i];
      }
      m[h] = new_m;
    }
    t0 += count;
  }
  for (int h = 0; h < heads; ++h) {
    if (l[h] == 0) {
      lse[h] = -std::numeric_limits<float>::infinity();
      std::fill(out + size_t(h) * rank, out + size_t(h + 1) * rank, 0.0f);
      continue;
    }
    const float inv = 1.0f / l[h];
    for (int i = 0; i < rank; ++i) out[size_t(h) * rank + i] = acc[size_t(h) * rank + i] * inv;
    lse[h] = m[h] + std::log(l[h]);
  }
}

// Runs task(0..tasks-1): on up to `threads` threads of its own, or by `runner` when given.
void RunTasks(int tasks, int threads, const TaskRunner* runner,
              const std::function<void(int)>& task) {
  if (threads <= 1 || tasks <= 1) {
    for (int t = 0; t < tasks; ++t) task(t);
    return;
  }
  if (runner != nullptr) {
    (*runner)(tasks, task);
    return;
  }
  std::vector<std::thread> pool;
  const int n = std::min(threads, tasks);
  for (int w = 0; w < n; ++w) {
    pool.emplace_back([&, w] {
      for (int t = w; t < tasks; t += n) task(t);
    });
  }
  for (auto& th : pool) th.join();
}

DecodeResult MlaDecodeOn(const MlaPagedKv& kv, const MlaRequest& req, int threads,
                         const TaskRunner* runner) {
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const int splits = std::max(1, std::min(threads, kv.context_tokens / 256));
  const int split_len = (kv.context_tokens + splits - 1) / splits;
  std::vector<DecodeResult> parts(splits);
  for (auto& p : parts) {
    p.out.assign(size_t(req.heads) * kv.shape.latent_rank, 0.0f);
    p.lse.assign(req.heads, -std::numeric_limits<float>::infinity());
  }
  RunTasks(splits, threads, runner, [&](int i) {
    const int begin = i * split_len, end = std::min(kv.context_tokens, begin + split_len);
    MlaRange(kv, req, begin, end, parts[i].out.data(), parts[i].lse.data());
  });
  if (splits == 1) return std::move(parts[0]);
  return CombineSplits(parts);
}

DecodeResult DecodeOn(const PagedKv& kv, const DecodeRequest& req, int threads,
                      const TaskRunner* runner) {
  const GqaShape& s = kv.shape;
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  // A head that reads the whole context is split over the threads (no split under 512 tokens):
  // dense, every KV head shares them; head-sparse, the few recall heads get them all, and a
  // local head (sinks and window only) is one task.
  const int longest = std::max(1, std::min(threads, kv.context_tokens / 512));
  const int dense = std::max(1, std::min((threads + s.kv_heads - 1) / s.kv_heads,
                                         kv.context_tokens / 512));
  struct Task {
    int kvh, split, begin, end;
  };
  std::vector<Task> tasks;
  int max_splits = 1;
  for (int kvh = 0; kvh < s.kv_heads; ++kvh) {
    const bool recall = req.profile == nullptr || req.profile->IsRecall(req.layer, kvh);
    const int n = req.profile == nullptr ? dense : recall ? longest : 1;
    const int len = (kv.context_tokens + n - 1) / n;
    for (int i = 0; i < n; ++i) {
      tasks.push_back({kvh, i, i * len, std::min(kv.context_tokens, (i + 1) * len)});
    }
    max_splits = std::max(max_splits, n);
  }
  // Long tasks first: dealt round robin, the threads get equal shares of them.
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.end - a.begin > b.end - b.begin; });
  std::vector<DecodeResult> parts(max_splits);
  for (auto& p : parts) {
    p.out.assign(size_t(req.q_heads) * s.head_dim, 0.0f);
    p.lse.assign(req.q_heads, -std::numeric_limits<float>::infinity());
  }
  RunTasks(static_cast<int>(tasks.size()), threads, runner, [&](int i) {
    const Task& t = tasks[i];
    DecodeKvHead(kv, req, t.kvh, t.begin, t.end, parts[t.split].out.data(),
                 parts[t.split].lse.data());
  });
  if (max_splits == 1) return std::move(parts[0]);
  return CombineSplits(parts);
}

}  // namespace

DecodeResult CpuMlaDecode(const MlaPagedKv& kv, const MlaRequest& req, int threads) {
  return MlaDecodeOn(kv, req, threads, nullptr);
}

DecodeResult CpuMlaDecode(const MlaPagedKv& kv, const MlaRequest& req, int threads,
                          const TaskRunner& runner) {
  return MlaDecodeOn(kv, req, threads, &runner);
}

DecodeResult CpuDecode(const PagedKv& kv, const DecodeRequest& req, int threads) {
  return DecodeOn(kv, req, threads, nullptr);
}

DecodeResult CpuDecode(const PagedKv& kv, const DecodeRequest& req, int threads,
                       const TaskRunner& runner) {
  return DecodeOn(kv, req, threads, &runner);
}

}  // namespace kvtier::gpu
