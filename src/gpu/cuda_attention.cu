// DeviceKv of cuda_attention.h: a context placed on the GPU, and decode steps over it. The
// kernels are in cuda_kernels.cu, the device's properties in cuda_device.cu, memory and the
// reusable per-call workspaces in cuda_memory.cu.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "gpu/cuda_attention.h"
#include "gpu/cuda_internal.cuh"

namespace kvtier::gpu::cuda {

using internal::Check;

namespace {

int UsedBlocks(int context, int block_tokens) {
  return (context + block_tokens - 1) / block_tokens;
}

std::atomic<KernelWidth>& ChosenKernel() {
  static std::atomic<KernelWidth> kernel{[] {
    const char* env = std::getenv("KVTIER_GPU_KERNELS");
    return env != nullptr && std::string(env) == "narrow" ? KernelWidth::kNarrow : KernelWidth::kWide;
  }()};
  return kernel;
}

}  // namespace

void SetKernelWidth(KernelWidth kernel) { ChosenKernel().store(kernel); }

struct DeviceKv::Impl {
  bool mla = false;
  bool pages_aligned = true;  // every block's address a multiple of 16 bytes
  GqaShape shape;
  MlaShape mla_shape;
  int context = 0;
  size_t block_bytes = 0;
  internal::DeviceBuffer blocks;  // uploaded blocks (empty for OnDevice)
  internal::WorkspacePtr ws;      // page table and per-call scratch, reused across DeviceKvs

  // A GQA context's state before its blocks are placed; nullptr (with *error) for a shape the
  // kernels do not take.
  static std::unique_ptr<Impl> ForGqa(const PagedKv& kv, std::string* error) {
    const GqaShape& s = kv.shape;
    if (s.head_dim % 32 != 0 || s.head_dim > internal::kMaxHeadDim) {
      *error = "the GPU kernels take head_dim a multiple of 32 up to 256, not " +
               std::to_string(s.head_dim);
      return nullptr;
    }
    auto impl = std::make_unique<Impl>();
    impl->shape = s;
    impl->context = kv.context_tokens;
    impl->block_bytes = s.BlockBytes();
    return impl;
  }

  static std::unique_ptr<Impl> ForMla(const MlaPagedKv& kv, std::string* error) {
    const MlaShape& s = kv.shape;
    if (s.latent_rank % 32 != 0 || s.latent_rank > internal::kMlaMaxRank ||
        s.latent_rank + s.rope_dim > internal::kMlaMaxRow) {
      *error =
          "the GPU MLA kernel takes latent_rank a multiple of 32 up to 512 and latent_rank + "
          "rope_dim up to 768";
      return nullptr;
    }
    auto impl = std::make_unique<Impl>();
    impl->mla = true;
    impl->mla_shape = s;
    impl->context = kv.context_tokens;
    impl->block_bytes = s.BlockBytes();
    return impl;
  }

  // A context with its blocks placed: copied to the GPU (upload), or already there (kv.blocks
  // are device addresses).
  template <typename Kv>
  static std::unique_ptr<DeviceKv> Place(const Kv& kv, bool upload, std::string* error) {
    std::unique_ptr<Impl> impl;
    if constexpr (std::is_same_v<Kv, MlaPagedKv>) {
      impl = ForMla(kv, error);
    } else {
      impl = ForGqa(kv, error);
    }
    if (impl == nullptr) return nullptr;
    impl->ws = internal::AcquireWorkspace(error);
    if (impl->ws == nullptr) return nullptr;
    const int used = UsedBlocks(kv.context_tokens, kv.shape.block_tokens);
    std::vector<const void*> pages;
    if (upload) {
      if (!internal::UploadBlocks(kv.blocks, used, impl->block_bytes, &impl->blocks, &pages,
                                  error)) {
        return nullptr;
      }
    } else {
      pages.assign(kv.blocks.begin(), kv.blocks.begin() + used);
    }
    for (const void* page : pages) {
      impl->pages_aligned = impl->pages_aligned && reinterpret_cast<uintptr_t>(page) % 16 == 0;
    }
    if (!impl->ws->table.CopyIn(pages.data(), pages.size() * sizeof(void*), error)) {
      impl->ws->reusable = false;
      return nullptr;
    }
    return std::unique_ptr<DeviceKv>(new DeviceKv(std::move(impl)));
  }

  // Waits for the step's kernels and copies its results out; on failure the workspace is not
  // reused (kernels may still be queued on it).
  DecodeResult Finish(int heads, int dim, float* ms, std::string* error) {
    internal::Workspace& w = *ws;
    DecodeResult r;
    if (!Check(cudaGetLastError(), "kernel launch", error) ||
        !Check(cudaEventSynchronize(w.stop), "kernel", error)) {
      w.reusable = false;
      return r;
    }
    if (ms != nullptr) cudaEventElapsedTime(ms, w.start, w.stop);
    r.out.resize(size_t(heads) * dim);
    r.lse.resize(heads);
    if (!Check(cudaMemcpy(r.out.data(), w.out.ptr, r.out.size() * 4, cudaMemcpyDeviceToHost),
               "copy of the output", error) ||
        !Check(cudaMemcpy(r.lse.data(), w.lse.ptr, r.lse.size() * 4, cudaMemcpyDeviceToHost),
               "copy of the lse", error)) {
      w.reusable = false;
      return {};
    }
    return r;
  }

  // The partial and final results of `splits` splits over `heads` heads of `dim` floats.
  bool Results(int splits, int heads, int dim, std::string* error) {
    internal::Workspace& w = *ws;
    return w.part_out.Allocate(size_t(splits) * heads * dim * 4, error) &&
           w.part_lse.Allocate(size_t(splits) * heads * 4, error) &&
           w.out.Allocate(size_t(heads) * dim * 4, error) &&
           w.lse.Allocate(size_t(heads) * 4, error);
  }
};

DeviceKv::DeviceKv(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceKv::~DeviceKv() = default;
size_t DeviceKv::bytes() const { return impl_->blocks.size; }

std::unique_ptr<DeviceKv> DeviceKv::Upload(const PagedKv& kv, std::string* error) {
  return Impl::Place(kv, true, error);
}
std::unique_ptr<DeviceKv> DeviceKv::UploadMla(const MlaPagedKv& kv, std::string* error) {
  return Impl::Place(kv, true, error);
}
std::unique_ptr<DeviceKv> DeviceKv::OnDevice(const PagedKv& kv, std::string* error) {
  return Impl::Place(kv, false, error);
}
std::unique_ptr<DeviceKv> DeviceKv::OnDeviceMla(const MlaPagedKv& kv, std::string* error) {
  return Impl::Place(kv, false, error);
}

DecodeResult DeviceKv::Decode(const DecodeRequest& req, float* ms, std::string* error) {
  Impl& k = *impl_;
  internal::Workspace& w = *k.ws;
  const GqaShape& s = k.shape;
  const int group = req.q_heads / s.kv_heads;
  if (k.mla || group > internal::kMaxGroup) {
    *error = k.mla ? "an MLA context takes MlaDecode"
                   : "the GPU kernels take at most 8 query heads per KV head";
    return {};
  }
  const int d = s.head_dim;
  if (!w.q.CopyIn(req.q, size_t(req.q_heads) * d * 4, error)) return {};
  const unsigned char* recall = nullptr;
  int sink = 0, window = 0;
  if (req.profile != nullptr && !req.profile->recall.empty()) {
    std::vector<unsigned char> flags(s.kv_heads);
    for (int h = 0; h < s.kv_heads; ++h) flags[h] = req.profile->IsRecall(req.layer, h);
    if (!w.recall.CopyIn(flags.data(), flags.size(), error)) return {};
    recall = w.recall.as<unsigned char>();
    sink = req.profile->sink;
    window = req.profile->window;
  }
  const int split_len = internal::SplitLen(k.context, s.kv_heads);
  const int splits = (k.context + split_len - 1) / split_len;
  if (!k.Results(splits, req.q_heads, d, error)) return {};
  internal::GqaParams p;
  p.blocks = w.table.as<const void* const>();
  p.block_tokens = s.block_tokens;
  p.kv_heads = s.kv_heads;
  p.head_dim = d;
  p.layer = req.layer;
  p.group = group;
  p.q_heads = req.q_heads;
  p.slice_elems = s.HeadSliceElems();
  p.q = w.q.as<const float>();
  p.scale = req.scale;
  p.recall = recall;
  p.sink = sink;
  p.window = window;
  p.context = k.context;
  p.split_len = split_len;
  p.part_out = w.part_out.as<float>();
  p.part_lse = w.part_lse.as<float>();
  cudaEventRecord(w.start);
  const bool wide = ChosenKernel().load() == KernelWidth::kWide && k.pages_aligned &&
                    internal::WideGqaFits(s.dtype, d);
  internal::LaunchGqaSplit(p, s.dtype, splits, wide);
  internal::LaunchCombine(w.part_out.as<const float>(), w.part_lse.as<const float>(), splits,
                          req.q_heads, d, w.out.as<float>(), w.lse.as<float>());
  cudaEventRecord(w.stop);
  return k.Finish(req.q_heads, d, ms, error);
}

DecodeResult DeviceKv::MlaDecode(const MlaRequest& req, float* ms, std::string* error) {
  Impl& k = *impl_;
  internal::Workspace& w = *k.ws;
  if (!k.mla) {
    *error = "a GQA context takes Decode";
    return {};
  }
  const MlaShape& s = k.mla_shape;
  if (!w.q.CopyIn(req.q_latent, size_t(req.heads) * s.latent_rank * 4, error) ||
      !w.q_rope.CopyIn(req.q_rope, size_t(req.heads) * s.rope_dim * 4, error)) {
    return {};
  }
  const int head_groups = (req.heads + internal::kMlaHeads - 1) / internal::kMlaHeads;
  const int split_len = internal::SplitLen(k.context, head_groups);
  const int splits = (k.context + split_len - 1) / split_len;
  if (!k.Results(splits, req.heads, s.latent_rank, error)) return {};
  internal::MlaParams p;
  p.blocks = w.table.as<const void* const>();
  p.block_tokens = s.block_tokens;
  p.rank = s.latent_rank;
  p.rope = s.rope_dim;
  p.layer = req.layer;
  p.heads = req.heads;
  p.q_latent = w.q.as<const float>();
  p.q_rope = w.q_rope.as<const float>();
  p.scale = req.scale;
  p.context = k.context;
  p.split_len = split_len;
  p.part_out = w.part_out.as<float>();
  p.part_lse = w.part_lse.as<float>();
  cudaEventRecord(w.start);
  const bool wide = ChosenKernel().load() == KernelWidth::kWide && k.pages_aligned &&
                    internal::WideMlaFits(s.dtype, s.latent_rank, s.rope_dim);
  internal::LaunchMlaSplit(p, s.dtype, splits, wide);
  internal::LaunchCombine(w.part_out.as<const float>(), w.part_lse.as<const float>(), splits,
                          req.heads, s.latent_rank, w.out.as<float>(), w.lse.as<float>());
  cudaEventRecord(w.stop);
  return k.Finish(req.heads, s.latent_rank, ms, error);
}

DecodeResult Decode(const PagedKv& kv, const DecodeRequest& req, std::string* error) {
  auto d = DeviceKv::Upload(kv, error);
  if (d == nullptr) return {};
  return d->Decode(req, nullptr, error);
}

DecodeResult MlaDecode(const MlaPagedKv& kv, const MlaRequest& req, std::string* error) {
  auto d = DeviceKv::UploadMla(kv, error);
  if (d == nullptr) return {};
  return d->MlaDecode(req, nullptr, error);
}

}  // namespace kvtier::gpu::cuda
