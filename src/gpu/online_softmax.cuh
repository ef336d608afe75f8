#pragma once
// The online softmax (Milakov and Gimelshein; flash-decoding) that every decode kernel of
// cuda_kernels.cu keeps per query head: a running maximum and a running sum of exponentials,
// folded one score at a time or merged from another partial state. The accumulator (the weighted
// sum of value rows) lives with the caller; each step returns the factors to apply to it.

#include <cuda_runtime.h>

#include <cmath>

namespace kvtier::gpu::cuda::internal {

// How an accumulator follows a step: acc = acc * self + other_weight * (value or other's acc).
struct SoftmaxFactors {
  float self;
  float other;
};

struct OnlineSoftmax {
  float m = -INFINITY;  // the largest score so far; -inf: nothing attended yet
  float l = 0.0f;       // sum of exp(score - m)

  // Folds in one score; the accumulator becomes acc * f.self + f.other * value.
  __device__ __forceinline__ SoftmaxFactors Add(float s) {
    const float new_m = fmaxf(m, s);
    const float correction = expf(m - new_m);  // 0 for the first score
    const float w = expf(s - new_m);
    l = l * correction + w;
    m = new_m;
    return {correction, w};
  }

  // Folds in another partial state (of disjoint tokens); this accumulator becomes
  // acc * f.self + f.other * other_acc. An empty state changes nothing.
  __device__ __forceinline__ SoftmaxFactors Merge(float other_m, float other_l) {
    if (other_m == -INFINITY) return {1.0f, 0.0f};
    if (m == -INFINITY) {
      m = other_m;
      l = other_l;
      return {0.0f, 1.0f};
    }
    const float new_m = fmaxf(m, other_m);
    const float a = expf(m - new_m), b = expf(other_m - new_m);
    l = l * a + other_l * b;
    m = new_m;
    return {a, b};
  }

  __device__ __forceinline__ bool Empty() const { return m == -INFINITY; }
  // log(sum of exp(score)) of the tokens folded in; -inf when none.
  __device__ __forceinline__ float Lse() const { return Empty() ? -INFINITY : m + logf(l); }
};

}  // namespace kvtier::gpu::cuda::internal
