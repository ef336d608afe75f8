// bench_attention: decode attention over paged KV blocks, per kernel and context length, with
// the bytes each reads and the bandwidth it reaches, against memcpy of the same bytes and against
// the double-precision reference, measured in the same run.
//
//   dense    Llama-3-8B-like GQA: 32 query heads, 8 KV heads, head_dim 128, bf16, 16-token
//            blocks, 4 layers a step, pages shuffled; 4K, 32K and 128K tokens
//   sparse   the same with 15% recall heads (5 of the 32 (layer, KV head) pairs); the rest
//            attend to 4 sink and 64 recent tokens
//   mla      128 heads, latent rank 512, rope 64, bf16, one layer
//
// --device cpu (the default) runs the CPU fast path against memcpy and the reference; --device
// cuda (in builds with the CUDA toolkit, on a machine with a GPU) runs the CUDA kernels on blocks
// in GPU memory against the card's device-to-device copy bandwidth (kernel time from CUDA
// events), and checks each kernel's output against the CPU fast path once. Ends with one line:
// RESULT {json} with dense_gbps_32k, sparse_speedup_128k, mla_gbps_32k, copy_gbps and device;
// on a GPU also dense_narrow_gbps_* and mla_narrow_gbps_* (the narrow kernels: the wide ones'
// baselines, same run).
//
// Usage: bench_attention [--quick] [--device cpu|cuda]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "gpu/attention.h"
#ifdef KVTIER_HAVE_CUDA_KERNELS
#include "gpu/cuda_attention.h"
#endif

namespace kvtier::bench {
namespace {

using gpu::DecodeRequest;
using gpu::DecodeResult;

// Median seconds of `reps` runs of `fn` (after one warm-up run).
template <typename Fn>
double Time(int reps, Fn fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double start = NowSeconds();
    fn();
    t.push_back(NowSeconds() - start);
  }
  return Median(t);
}

// Random bf16 values in [-1, 1) (as raw bits), fast.
void FillBf16(uint16_t* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const float f = static_cast<float>(static_cast<int64_t>(x >> 40) - (1 << 23)) / (1 << 23);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    p[i] = static_cast<uint16_t>(bits >> 16);
  }
}

// Blocks for `tokens` tokens of `block_bytes` each, in one pool, with a shuffled page table.
struct Pool {
  std::vector<uint16_t> data;
  std::vector<const void*> pages;
};
Pool MakePool(size_t block_bytes, int blocks, uint64_t seed) {
  Pool p;
  p.data.resize(block_bytes / 2 * size_t(blocks));
  FillBf16(p.data.data(), p.data.size(), seed);
  std::vector<int> order(blocks);
  for (int i = 0; i < blocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  for (int b : order) p.pages.push_back(p.data.data() + size_t(b) * block_bytes / 2);
  return p;
}

constexpr gpu::GqaShape kShape{.layers = 4, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                               .dtype = gpu::ElemType::kBf16};
constexpr int kQHeads = 32;
constexpr gpu::MlaShape kMla{.layers = 1, .latent_rank = 512, .rope_dim = 64, .block_tokens = 16,
                             .dtype = gpu::ElemType::kBf16};
constexpr int kMlaHeads = 128;

std::vector<float> Normal(size_t n, float sigma, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// 15% recall heads: 5 of the 32 (layer, KV head) pairs.
gpu::HeadProfile SparseProfile() {
  gpu::HeadProfile sparse{.sink = 4, .window = 64, .recall = {}};
  sparse.recall.assign(kShape.layers, std::vector<bool>(kShape.kv_heads, false));
  for (int i = 0; i < 5; ++i) {
    sparse.recall[(i * 7) % kShape.layers][(i * 3) % kShape.kv_heads] = true;
  }
  return sparse;
}

#ifdef KVTIER_HAVE_CUDA_KERNELS
// Largest |a - b| / (1 + |b|) over the outputs.
double MaxRelDiff(const DecodeResult& a, const DecodeResult& b) {
  if (a.out.size() != b.out.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.out.size(); ++i) {
    worst = std::max(worst, std::fabs(double(a.out[i]) - b.out[i]) / (1 + std::fabs(b.out[i])));
  }
  return worst;
}

int RunCuda(bool quick) {
  std::string why;
  if (!gpu::cuda::Available(&why)) {
    std::fprintf(stderr, "bench_attention: --device cuda: %s\n", why.c_str());
    return 1;
  }
  const int reps = quick ? 5 : 20;
  Result result;
  std::string error;
  const double copy = gpu::cuda::CopyGBps(size_t(1) << 30, reps, &error);
  if (copy <= 0) {
    std::fprintf(stderr, "bench_attention: device copy: %s\n", error.c_str());
    return 1;
  }
  std::printf("%s; device-to-device copy %.1f GB/s\n", gpu::cuda::DeviceName().c_str(), copy);
  const std::vector<float> q = Normal(size_t(kQHeads) * kShape.head_dim, 1, 3);
  const gpu::HeadProfile sparse = SparseProfile();
  std::printf("GQA decode, 32 q heads / 8 KV heads / head_dim 128, bf16, 4 layers a step:\n");
  std::printf("%-6s %8s | %10s %8s %8s | %10s %8s | %10s\n", "tokens", "MiB", "dense ms", "GB/s",
              "vs copy", "sparse ms", "speedup", "vs CPU");
  for (int tokens : {4 << 10, 32 << 10, 128 << 10}) {
    const int blocks = tokens / kShape.block_tokens;
    const Pool pool = MakePool(kShape.BlockBytes(), blocks, tokens);
    const gpu::PagedKv kv{kShape, pool.pages, tokens};
    auto device = gpu::cuda::DeviceKv::Upload(kv, &error);
    if (device == nullptr) {
      std::fprintf(stderr, "bench_attention: upload: %s\n", error.c_str());
      return 1;
    }
    // Kernel time of one step (every layer), median over reps.
    auto step_ms = [&](const gpu::HeadProfile* profile) {
      std::vector<double> t;
      for (int r = 0; r <= reps; ++r) {
        double sum = 0;
        for (int layer = 0; layer < kShape.layers; ++layer) {
          DecodeRequest req{.layer = layer, .q_heads = kQHeads, .q = q.data(),
                            .scale = 1.0f / std::sqrt(128.0f), .profile = profile};
          float ms = 0;
          if (device->Decode(req, &ms, &error).out.empty()) return -1.0;
          sum += ms;
        }
        if (r > 0) t.push_back(sum);  // the first is a warm-up
      }
      return Median(t);
    };
    const double dense_ms = step_ms(nullptr), sparse_ms = step_ms(&sparse);
    // The baseline of the wide kernel, in the same run: the narrow one (one token per warp).
    gpu::cuda::SetKernelWidth(gpu::cuda::KernelWidth::kNarrow);
    const double narrow_ms = step_ms(nullptr);
    gpu::cuda::SetKernelWidth(gpu::cuda::KernelWidth::kWide);
    if (dense_ms < 0 || sparse_ms < 0 || narrow_ms < 0) {
      std::fprintf(stderr, "bench_attention: kernel: %s\n", error.c_str());
      return 1;
    }
    // Once: the GPU's answer against the CPU fast path on layer 0.
    DecodeRequest req0{.layer = 0, .q_heads = kQHeads, .q = q.data(),
                       .scale = 1.0f / std::sqrt(128.0f)};
    const double diff = MaxRelDiff(device->Decode(req0, nullptr, &error), gpu::CpuDecode(kv, req0));
    const double gbps = double(kShape.BlockBytes()) * blocks / (dense_ms / 1e3) / 1e9;
    std::printf("%-6s %8.0f | %10.3f %8.1f %8.2f | %10.3f %8.2f | %10.1e\n",
                (std::to_string(tokens >> 10) + "k").c_str(),
                double(kShape.BlockBytes()) * blocks / 1048576, dense_ms, gbps, gbps / copy,
                sparse_ms, dense_ms / sparse_ms, diff);
    const std::string k = std::to_string(tokens >> 10) + "k";
    result.Add("dense_gbps_" + k, gbps);
    result.Add("dense_vs_copy_" + k, gbps / copy);
    result.Add("dense_narrow_gbps_" + k, double(kShape.BlockBytes()) * blocks / (narrow_ms / 1e3) / 1e9);
    result.Add("sparse_speedup_" + k, dense_ms / sparse_ms);
    result.Add("max_rel_diff_vs_cpu_" + k, diff);
  }
  result.Add("copy_gbps", copy);

  const std::vector<float> ql = Normal(size_t(kMlaHeads) * 512, 0.1f, 4);
  const std::vector<float> qr = Normal(size_t(kMlaHeads) * 64, 0.1f, 5);
  std::printf("\nMLA decode, 128 heads, latent 512 + rope 64, bf16:\n");
  std::printf("%-6s %8s | %10s %8s %8s | %10s\n", "tokens", "MiB", "ms", "GB/s", "vs copy",
              "vs CPU");
  for (int tokens : {4 << 10, 32 << 10, 128 << 10}) {
    const int blocks = tokens / kMla.block_tokens;
    const Pool pool = MakePool(kMla.BlockBytes(), blocks, tokens + 1);
    const gpu::MlaPagedKv kv{kMla, pool.pages, tokens};
    auto device = gpu::cuda::DeviceKv::UploadMla(kv, &error);
    if (device == nullptr) {
      std::fprintf(stderr, "bench_attention: upload: %s\n", error.c_str());
      return 1;
    }
    const gpu::MlaRequest req{.layer = 0, .heads = kMlaHeads, .q_latent = ql.data(),
                              .q_rope = qr.data(), .scale = 1.0f / std::sqrt(192.0f)};
    // Kernel time of one step, median over reps; negative on a failure.
    auto step_ms = [&] {
      std::vector<double> t;
      for (int r = 0; r <= reps; ++r) {
        float ms = 0;
        if (device->MlaDecode(req, &ms, &error).out.empty()) return -1.0;
        if (r > 0) t.push_back(ms);  // the first is a warm-up
      }
      return Median(t);
    };
    const double ms = step_ms();
    gpu::cuda::SetKernelWidth(gpu::cuda::KernelWidth::kNarrow);  // the baseline
    const double narrow_ms = step_ms();
    gpu::cuda::SetKernelWidth(gpu::cuda::KernelWidth::kWide);
    if (ms < 0 || narrow_ms < 0) {
      std::fprintf(stderr, "bench_attention: MLA kernel: %s\n", error.c_str());
      return 1;
    }
    const double diff = tokens == (4 << 10) ? MaxRelDiff(device->MlaDecode(req, nullptr, &error),
                                                          gpu::CpuMlaDecode(kv, req))
                                            : 0;
    const double gbps = double(kMla.BlockBytes()) * blocks / (ms / 1e3) / 1e9;
    std::printf("%-6s %8.0f | %10.3f %8.1f %8.2f | %10.1e\n",
                (std::to_string(tokens >> 10) + "k").c_str(),
                double(kMla.BlockBytes()) * blocks / 1048576, ms, gbps, gbps / copy, diff);
    result.Add("mla_gbps_" + std::to_string(tokens >> 10) + "k", gbps);
    result.Add("mla_vs_copy_" + std::to_string(tokens >> 10) + "k", gbps / copy);
    result.Add("mla_narrow_gbps_" + std::to_string(tokens >> 10) + "k",
               double(kMla.BlockBytes()) * blocks / (narrow_ms / 1e3) / 1e9);
    if (tokens == (4 << 10)) result.Add("mla_max_rel_diff_vs_cpu_4k", diff);
  }
  result.AddString("device", "cuda");
  result.Print();
  return 0;
}
#endif

int Main(int argc, char** argv) {
  bool quick = false;
  std::string device = "cpu";
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      device = argv[++i];
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (int rc = ParseBenchFlags(static_cast<int>(rest.size()), rest.data(), "bench_attention",
                               "  Decode attention over paged KV blocks (dense, head-sparse, MLA) "
                               "at 4K, 32K and 128K\n  tokens against memcpy and the reference. "
                               "--device cpu|cuda (default cpu). --quick:\n  under a minute.\n",
                               &quick);
      rc >= 0) {
    return rc;
  }
  if (device == "cuda") {
#ifdef KVTIER_HAVE_CUDA_KERNELS
    return RunCuda(quick);
#else
    std::fprintf(stderr,
                 "bench_attention: this build has no CUDA kernels (no CUDA toolkit at build "
                 "time); use --device cpu\n");
    return 2;
#endif
  }
  if (device != "cpu") {
    std::fprintf(stderr, "bench_attention: --device must be cpu or cuda\n");
    return 2;
  }
  const int reps = quick ? 3 : 7;
  Result result;

  // Dense and head-sparse GQA.
  const gpu::GqaShape shape = kShape;
  const int q_heads = kQHeads;
  const std::vector<float> q = Normal(size_t(q_heads) * shape.head_dim, 1, 3);
  const gpu::HeadProfile sparse = SparseProfile();
  std::printf("GQA decode, 32 q heads / 8 KV heads / head_dim 128, bf16, 4 layers a step:\n");
  std::printf("%-6s %8s | %10s %8s %8s | %10s %8s | %10s %8s\n", "tokens", "MiB", "dense ms",
              "GB/s", "vs copy", "ref ms", "fast/ref", "sparse ms", "speedup");
  double copy_gbps = 0;
  for (int tokens : {4 << 10, 32 << 10, 128 << 10}) {
    const int blocks = tokens / shape.block_tokens;
    const Pool pool = MakePool(shape.BlockBytes(), blocks, tokens);
    gpu::PagedKv kv{shape, pool.pages, tokens};
    const double bytes = double(shape.BlockBytes()) * blocks;
    auto step = [&](const gpu::HeadProfile* profile) {
      float sink = 0;
      for (int layer = 0; layer < shape.layers; ++layer) {
        DecodeRequest req{.layer = layer, .q_heads = q_heads, .q = q.data(),
                          .scale = 1.0f / std::sqrt(128.0f), .profile = profile};
        sink += gpu::CpuDecode(kv, req).out[0];
      }
      return sink;
    };
    // Short steps (a few ms at 4K) take more runs for a steady median on a shared machine.
    const int runs = tokens <= (4 << 10) ? 5 * reps : reps;
    const double dense_s = Time(runs, [&] { step(nullptr); });
    const double sparse_s = Time(runs, [&] { step(&sparse); });
    // memcpy of the same bytes, page by page, as the kernel reads them.
    std::vector<uint16_t> dst(shape.BlockBytes() / 2 * 64);
    const double copy_s = Time(runs, [&] {
      for (int b = 0; b < blocks; ++b) {
        std::memcpy(dst.data() + size_t(b % 64) * shape.BlockBytes() / 2, pool.pages[b],
                    shape.BlockBytes());
      }
    });
    const double copy = bytes / copy_s / 1e9;
    // The reference is slow: one layer, and not at 128K in --quick.
    double ref_s = 0;
    if (!(quick && tokens > (32 << 10))) {
      DecodeRequest req{.layer = 0, .q_heads = q_heads, .q = q.data(),
                        .scale = 1.0f / std::sqrt(128.0f)};
      // Five runs where they are short: one is noisy on a shared machine.
      ref_s = Time(tokens <= (4 << 10) ? 5 : 1, [&] { (void)gpu::ReferenceDecode(kv, req); }) *
              shape.layers;
    }
    const double gbps = bytes / dense_s / 1e9;
    std::printf("%-6s %8.0f | %10.2f %8.2f %8.2f | %10s %8s | %10.2f %8.2f\n",
                (std::to_string(tokens >> 10) + "k").c_str(), bytes / 1048576, dense_s * 1e3,
                gbps, gbps / copy,
                ref_s > 0 ? std::to_string(ref_s * 1e3).substr(0, 8).c_str() : "-",
                ref_s > 0 ? std::to_string(ref_s / dense_s).substr(0, 5).c_str() : "-",
                sparse_s * 1e3, dense_s / sparse_s);
    const std::string k = std::to_string(tokens >> 10) + "k";
    result.Add("dense_gbps_" + k, gbps);
    result.Add("dense_vs_copy_" + k, gbps / copy);
    if (ref_s > 0) result.Add("fast_vs_reference_" + k, ref_s / dense_s);
    result.Add("sparse_speedup_" + k, dense_s / sparse_s);
    if (tokens == (32 << 10)) copy_gbps = copy;
  }
  result.Add("copy_gbps", copy_gbps);

  // MLA.
  const gpu::MlaShape mla = kMla;
  const int heads = kMlaHeads;
  const std::vector<float> ql = Normal(size_t(heads) * 512, 0.1f, 4);
  const std::vector<float> qr = Normal(size_t(heads) * 64, 0.1f, 5);
  std::printf("\nMLA decode, 128 heads, latent 512 + rope 64, bf16:\n");
  std::printf("%-6s %8s | %10s %8s | %10s %8s\n", "tokens", "MiB", "fast ms", "GB/s", "ref ms",
              "fast/ref");
  for (int tokens : {4 << 10, 32 << 10, 128 << 10}) {
    if (quick && tokens > (32 << 10)) break;
    const int blocks = tokens / mla.block_tokens;
    const Pool pool = MakePool(mla.BlockBytes(), blocks, tokens + 1);
    gpu::MlaPagedKv kv{mla, pool.pages, tokens};
    gpu::MlaRequest req{.layer = 0, .heads = heads, .q_latent = ql.data(), .q_rope = qr.data(),
                        .scale = 1.0f / std::sqrt(192.0f)};
    const double fast_s = Time(reps, [&] { (void)gpu::CpuMlaDecode(kv, req); });
    double ref_s = 0;
    if (tokens == (4 << 10)) ref_s = Time(1, [&] { (void)gpu::ReferenceMlaDecode(kv, req); });
    const double gbps = double(mla.BlockBytes()) * blocks / fast_s / 1e9;
    std::printf("%-6s %8.0f | %10.2f %8.3f | %10s %8s\n",
                (std::to_string(tokens >> 10) + "k").c_str(),
                double(mla.BlockBytes()) * blocks / 1048576, fast_s * 1e3, gbps,
                ref_s > 0 ? std::to_string(ref_s * 1e3).substr(0, 8).c_str() : "-",
                ref_s > 0 ? std::to_string(ref_s / fast_s).substr(0, 5).c_str() : "-");
    result.Add("mla_gbps_" + std::to_string(tokens >> 10) + "k", gbps);
    if (ref_s > 0) result.Add("mla_fast_vs_reference_4k", ref_s / fast_s);
  }
  result.AddString("device", device);
  result.Print();
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
