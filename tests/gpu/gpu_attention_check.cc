// gpu_attention_check: the CUDA kernels against the double-precision reference, on the shapes
// that break kernels (src/gpu/test_context.h): contexts 1, 63, 64, 65, 300, 777, 4,099 and
// 12,345; blocks of 16, 64 and 7 tokens; shuffled pages; NaN in unused slots; GQA groups 1, 2, 4
// and 8; head_dim 32, 64, 128 and 256; fp16, bf16 and fp32; dense, mixed, all-local and
// all-recall profiles and a window longer than the context; MLA with latent 512 + rope 64 and a
// small shape; each GQA and MLA case with the narrow and the wide kernels; blocks held in GPU
// memory by DeviceUnits (the worker's path). Prints a line per failure and a summary. Exit
// status 0: all passed; 1: a failure; 77: no GPU (nothing checked).
//
// Tolerance (float accumulation against double): outputs and log-sum-exp within 2e-4 x (1 + |x|).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "gpu/attention.h"
#include "gpu/cuda_attention.h"
#include "gpu/test_context.h"

namespace kvtier::gpu {
namespace {

int checks = 0, failures = 0;
const char* width = "";  // which kernels the checks run: "wide" or "narrow"

void Compare(const DecodeResult& ref, const DecodeResult& got, const std::string& error,
             const std::string& what) {
  ++checks;
  if (!error.empty() || got.out.size() != ref.out.size() || got.lse.size() != ref.lse.size()) {
    ++failures;
    std::printf("FAIL %s: %s\n", what.c_str(), error.empty() ? "wrong sizes" : error.c_str());
    return;
  }
  for (size_t i = 0; i < ref.out.size(); ++i) {
    if (!(std::fabs(got.out[i] - ref.out[i]) <= 2e-4 * (1 + std::fabs(ref.out[i])))) {
      ++failures;
      std::printf("FAIL %s: out[%zu] %g, reference %g\n", what.c_str(), i, got.out[i], ref.out[i]);
      return;
    }
  }
  for (size_t h = 0; h < ref.lse.size(); ++h) {
    // An empty head (lse -inf) must be empty on both sides; else the values must agree.
    const bool ok = std::isinf(ref.lse[h]) || std::isinf(got.lse[h])
                        ? std::isinf(ref.lse[h]) && std::isinf(got.lse[h])
                        : std::fabs(got.lse[h] - ref.lse[h]) <= 2e-4 * (1 + std::fabs(ref.lse[h]));
    if (!ok) {
      ++failures;
      std::printf("FAIL %s: lse[%zu] %g, reference %g\n", what.c_str(), h, got.lse[h], ref.lse[h]);
      return;
    }
  }
}

void CheckGqa() {
  uint32_t seed = 7;
  for (const Case& k : kAwkwardCases) {
    for (ElemType dtype : {k.dtype, ElemType::kBf16}) {
      GqaShape shape{.layers = 2,
                     .kv_heads = 2,
                     .head_dim = k.head_dim,
                     .block_tokens = k.block_tokens,
                     .dtype = dtype};
      const Context c = MakeContext(shape, k.tokens, k.group, seed++);
      const HeadProfile mixed{.sink = 4, .window = 64, .recall = {{true, false}, {false, true}}};
      const HeadProfile all_local{
          .sink = 4, .window = 64, .recall = {{false, false}, {false, false}}};
      const HeadProfile all_recall{.sink = 4, .window = 64, .recall = {{true, true}, {true, true}}};
      const HeadProfile wide{
          .sink = 2, .window = 1 << 20, .recall = {{false, false}, {false, false}}};
      const std::pair<const HeadProfile*, const char*> profiles[] = {{nullptr, "dense"},
                                                                     {&mixed, "mixed"},
                                                                     {&all_local, "all-local"},
                                                                     {&all_recall, "all-recall"},
                                                                     {&wide, "window > context"}};
      std::string error;
      auto device = cuda::DeviceKv::Upload(c.paged, &error);
      for (int layer = 0; layer < 2; ++layer) {
        for (const auto& [profile, name] : profiles) {
          const std::string what = std::string("gqa (") + width + ") tokens " +
                                   std::to_string(k.tokens) + " block " +
                                   std::to_string(k.block_tokens) + " group " +
                                   std::to_string(k.group) + " dim " + std::to_string(k.head_dim) +
                                   " dtype " + std::to_string(int(dtype)) + " layer " +
                                   std::to_string(layer) + " " + name;
          DecodeRequest req{.layer = layer,
                            .q_heads = c.q_heads,
                            .q = c.q.data(),
                            .scale = 1.0f / std::sqrt(float(k.head_dim)),
                            .profile = profile};
          std::string run_error = error;
          DecodeResult got;
          if (device != nullptr) got = device->Decode(req, nullptr, &run_error);
          Compare(ReferenceDecode(c.paged, req), got, run_error, what);
        }
      }
    }
  }
}

void CheckMla() {
  uint32_t seed = 70;
  for (ElemType dtype : {ElemType::kBf16, ElemType::kFp16}) {
    for (int tokens : {1, 63, 64, 65, 4099}) {
      for (int block_tokens : {16, 13}) {
        for (auto [rank, rope, heads] : {std::tuple{64, 16, 6}, std::tuple{512, 64, 16}}) {
          const MlaShape shape{.layers = 2,
                               .latent_rank = rank,
                               .rope_dim = rope,
                               .block_tokens = block_tokens,
                               .dtype = dtype};
          const MlaContext c = MakeMlaContext(shape, tokens, heads, seed++);
          const MlaRequest req{.layer = 1,
                               .heads = heads,
                               .q_latent = c.q_latent.data(),
                               .q_rope = c.q_rope.data(),
                               .scale = 1.0f / std::sqrt(float(rank + rope))};
          std::string error;
          const DecodeResult got = cuda::MlaDecode(c.paged, req, &error);
          Compare(ReferenceMlaDecode(c.paged, req), got, error,
                  std::string("mla (") + width + ") tokens " + std::to_string(tokens) + " block " +
                      std::to_string(block_tokens) + " rank " + std::to_string(rank) + " dtype " +
                      std::to_string(int(dtype)));
        }
      }
    }
  }
}

// The worker's path: blocks kept in GPU memory by DeviceUnits (copied from pinned memory on
// their own stream), decoded where they are (DeviceKv::OnDevice); a second mapping copies nothing,
// a new version of a block copies that block again, and a cache smaller than a request still
// serves it and shrinks back afterwards.
void CheckDeviceUnits() {
  const GqaShape shape{
      .layers = 2, .kv_heads = 2, .head_dim = 128, .block_tokens = 16, .dtype = ElemType::kBf16};
  const Context c = MakeContext(shape, 4099, 4, 91);
  const size_t block_bytes = shape.BlockBytes();
  const size_t used = (4099 + 15) / 16;
  // The blocks in page-locked memory, as the worker's pool holds them on a GPU machine.
  void* pinned = cuda::AllocPinned(used * block_bytes);
  const bool have_pinned = pinned != nullptr;
  std::vector<uint8_t> plain;
  if (!have_pinned) plain.resize(used * block_bytes);
  uint8_t* host = have_pinned ? static_cast<uint8_t*>(pinned) : plain.data();
  std::vector<cuda::DeviceUnits::Source> sources;
  for (size_t b = 0; b < used; ++b) {
    std::memcpy(host + b * block_bytes, c.paged.blocks[b], block_bytes);
    sources.push_back(
        {.id = b, .version = 0, .host = host + b * block_bytes, .bytes = block_bytes});
  }
  const HeadProfile mixed{.sink = 4, .window = 64, .recall = {{true, false}, {false, true}}};
  auto run = [&](cuda::DeviceUnits& units, const std::string& what, uint64_t want_copied) {
    std::string error;
    auto mapping = units.Map(sources, &error);
    ++checks;
    if (mapping == nullptr) {
      ++failures;
      std::printf("FAIL %s: map: %s\n", what.c_str(), error.c_str());
      return;
    }
    if (mapping->copied_bytes() != want_copied) {
      ++failures;
      std::printf("FAIL %s: copied %llu bytes, expected %llu\n", what.c_str(),
                  static_cast<unsigned long long>(mapping->copied_bytes()),
                  static_cast<unsigned long long>(want_copied));
    }
    PagedKv on_device = c.paged;
    on_device.blocks.assign(mapping->addresses().begin(), mapping->addresses().end());
    auto kv = cuda::DeviceKv::OnDevice(on_device, &error);
    for (const HeadProfile* profile : {static_cast<const HeadProfile*>(nullptr), &mixed}) {
      const DecodeRequest req{.layer = 1,
                              .q_heads = c.q_heads,
                              .q = c.q.data(),
                              .scale = 1.0f / std::sqrt(128.0f),
                              .profile = profile};
      std::string run_error = error;
      DecodeResult got;
      if (kv != nullptr && mapping->OrderBefore(&run_error)) {
        got = kv->Decode(req, nullptr, &run_error);
      }
      Compare(ReferenceDecode(c.paged, req), got, run_error,
              what + (profile == nullptr ? " dense" : " mixed"));
    }
  };
  std::string error;
  auto units = cuda::DeviceUnits::Create(1ull << 30, &error);
  if (units == nullptr) {
    ++checks, ++failures;
    std::printf("FAIL device units: %s\n", error.c_str());
  } else {
    run(*units, "device units, first map", used * block_bytes);
    run(*units, "device units, again", 0);
    // New bytes in block 3 (the same values: the reference still holds).
    sources[3].version = 1;
    run(*units, "device units, block 3 renewed", block_bytes);
    const auto st = units->stats();
    ++checks;
    if (st.units != used || st.bytes != used * block_bytes) {
      ++failures;
      std::printf("FAIL device units: holds %llu units\n",
                  static_cast<unsigned long long>(st.units));
    }
  }
  auto small = cuda::DeviceUnits::Create(used * block_bytes / 2, &error);
  if (small != nullptr) {
    run(*small, "device units over capacity", used * block_bytes);
    ++checks;
    if (small->stats().bytes > used * block_bytes / 2) {
      ++failures;
      std::printf("FAIL device units over capacity: still holds %llu bytes\n",
                  static_cast<unsigned long long>(small->stats().bytes));
    }
  }
  std::printf("device units: pinned host memory %s\n", have_pinned ? "yes" : "no");
  cuda::FreePinned(pinned);
}

}  // namespace
}  // namespace kvtier::gpu

int main() {
  std::string why;
  if (!kvtier::gpu::cuda::Available(&why)) {
    std::printf("gpu_attention_check: skipped: %s\n", why.c_str());
    return 77;
  }
  std::printf("gpu_attention_check on %s\n", kvtier::gpu::cuda::DeviceName().c_str());
  // Both widths of kernels: the wide ones where shapes allow, and the narrow ones everywhere.
  using kvtier::gpu::cuda::KernelWidth;
  for (KernelWidth w : {KernelWidth::kNarrow, KernelWidth::kWide}) {
    kvtier::gpu::width = w == KernelWidth::kWide ? "wide" : "narrow";
    kvtier::gpu::cuda::SetKernelWidth(w);
    kvtier::gpu::CheckGqa();
    kvtier::gpu::CheckMla();
  }
  kvtier::gpu::CheckDeviceUnits();
  std::printf("gpu_attention_check: %d of %d checks passed\n",
              kvtier::gpu::checks - kvtier::gpu::failures, kvtier::gpu::checks);
  return kvtier::gpu::failures == 0 ? 0 : 1;
}
