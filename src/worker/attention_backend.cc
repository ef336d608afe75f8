#include "worker/attention_backend.h"

#include <algorithm>
#include <thread>
#include <type_traits>

#include "absl/status/status.h"
#include "common/task_pool.h"
#include "gpu/cuda_attention.h"
#include "spdlog/spdlog.h"

namespace kvtier::worker {
namespace {

absl::StatusOr<gpu::DecodeResult> Checked(gpu::DecodeResult r, const std::string& error) {
  if (!error.empty()) return absl::InternalError(error);
  if (r.out.empty()) return absl::InternalError("no output");
  return r;
}

class CpuBackend final : public AttentionBackend {
 public:
  // The calling thread works too: threads - 1 in the pool.
  explicit CpuBackend(int threads)
      : threads_(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
        pool_(threads_ - 1),
        runner_([this](int tasks, const std::function<void(int)>& task) {
          pool_.ParallelFor(static_cast<size_t>(tasks), [&](size_t i) { task(static_cast<int>(i)); });
        }) {}
  const std::string& device() const override { return name_; }
  std::unique_ptr<StagedLayers> Stage(
      const std::vector<std::vector<const BlockPool::Unit*>>&) override {
    return nullptr;
  }
  absl::StatusOr<gpu::DecodeResult> Decode(const gpu::PagedKv& kv, const gpu::DecodeRequest& req,
                                           StagedLayers*, size_t) override {
    return gpu::CpuDecode(kv, req, threads_, runner_);
  }
  absl::StatusOr<gpu::DecodeResult> MlaDecode(const gpu::MlaPagedKv& kv,
                                              const gpu::MlaRequest& req, StagedLayers*,
                                              size_t) override {
    return gpu::CpuMlaDecode(kv, req, threads_, runner_);
  }

 private:
  const int threads_;
  // Every request's layers share these threads: a request starts none of its own.
  TaskPool pool_;
  const gpu::TaskRunner runner_;
  const std::string name_ = "cpu";
};

// Each layer's blocks in GPU memory (DeviceUnits), their copies queued.
class GpuStaged final : public StagedLayers {
 public:
  std::vector<std::unique_ptr<gpu::cuda::DeviceMapping>> layers;
};

class CudaBackend final : public AttentionBackend {
 public:
  CudaBackend(std::string name, std::unique_ptr<gpu::cuda::DeviceUnits> units)
      : name_(std::move(name)), units_(std::move(units)) {}
  const std::string& device() const override { return name_; }

  std::unique_ptr<StagedLayers> Stage(
      const std::vector<std::vector<const BlockPool::Unit*>>& units) override {
    if (units_ == nullptr) return nullptr;
    auto staged = std::make_unique<GpuStaged>();
    // All layers' copies are queued before the first layer runs: layer i + 1 copies while
    // layer i computes.
    for (const auto& layer : units) {
      std::vector<gpu::cuda::DeviceUnits::Source> sources;
      sources.reserve(layer.size());
      for (const BlockPool::Unit* u : layer) {
        sources.push_back(
            {.id = u->serial, .version = u->version.load(), .host = u->data.get(), .bytes = u->size});
      }
      std::string error;
      auto m = units_->Map(sources, &error);
      if (m == nullptr) {
        spdlog::warn("worker: blocks do not fit the GPU pool ({}); copying them per step", error);
        return nullptr;
      }
      staged->copied_bytes += m->copied_bytes();
      staged->layers.push_back(std::move(m));
    }
    return staged;
  }

  absl::StatusOr<gpu::DecodeResult> Decode(const gpu::PagedKv& kv, const gpu::DecodeRequest& req,
                                           StagedLayers* staged, size_t i) override {
    return Run(kv, staged, i, [&](gpu::cuda::DeviceKv* d, std::string* e) {
      return d == nullptr ? gpu::cuda::Decode(kv, req, e) : d->Decode(req, nullptr, e);
    });
  }
  absl::StatusOr<gpu::DecodeResult> MlaDecode(const gpu::MlaPagedKv& kv,
                                              const gpu::MlaRequest& req, StagedLayers* staged,
                                              size_t i) override {
    return Run(kv, staged, i, [&](gpu::cuda::DeviceKv* d, std::string* e) {
      return d == nullptr ? gpu::cuda::MlaDecode(kv, req, e) : d->MlaDecode(req, nullptr, e);
    });
  }

  uint64_t device_pool_bytes() const override {
    return units_ == nullptr ? 0 : units_->stats().bytes;
  }
  UnitMemory unit_memory() const override {
    return {gpu::cuda::AllocPinned, gpu::cuda::FreePinned};
  }

 private:
  // One layer: over the staged blocks in GPU memory (only the page table is copied), or, with
  // none staged, uploaded for this step. `step(device_kv or null, error)`.
  template <typename Kv, typename StepFn>
  absl::StatusOr<gpu::DecodeResult> Run(Kv kv, StagedLayers* staged, size_t i, StepFn step) {
    std::string error;
    auto* mapped = static_cast<GpuStaged*>(staged);
    if (mapped == nullptr || i >= mapped->layers.size()) return Checked(step(nullptr, &error), error);
    const gpu::cuda::DeviceMapping& layer = *mapped->layers[i];
    kv.blocks.assign(layer.addresses().begin(), layer.addresses().end());
    std::unique_ptr<gpu::cuda::DeviceKv> d;
    if constexpr (std::is_same_v<Kv, gpu::MlaPagedKv>) {
      d = gpu::cuda::DeviceKv::OnDeviceMla(kv, &error);
    } else {
      d = gpu::cuda::DeviceKv::OnDevice(kv, &error);
    }
    if (d == nullptr || !layer.OrderBefore(&error)) {
      return absl::InternalError(error.empty() ? "no device blocks" : error);
    }
    return Checked(step(d.get(), &error), error);
  }

  const std::string name_;
  std::unique_ptr<gpu::cuda::DeviceUnits> units_;  // null: blocks copied per step
};

}  // namespace

std::unique_ptr<AttentionBackend> NewCpuBackend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

std::unique_ptr<AttentionBackend> NewCudaBackend(uint64_t pool_bytes, std::string* why) {
  if (!gpu::cuda::Available(why)) return nullptr;
  std::unique_ptr<gpu::cuda::DeviceUnits> units;
  if (pool_bytes > 0) {
    std::string error;
    units = gpu::cuda::DeviceUnits::Create(pool_bytes, &error);
    if (units == nullptr) {
      spdlog::warn("worker: no block pool in GPU memory ({}); blocks are copied per request",
                   error);
    }
  }
  return std::make_unique<CudaBackend>(gpu::cuda::DeviceName(), std::move(units));
}

}  // namespace kvtier::worker
