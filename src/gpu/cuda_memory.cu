// GPU memory for cuda_attention.h: DeviceKv's blocks and per-call workspaces, the worker's
// units in GPU memory (DeviceUnits, DeviceMapping), page-locked host memory (AllocPinned) and
// the device-to-device copy measurement (CopyGBps).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "gpu/cuda_attention.h"
#include "gpu/cuda_internal.cuh"
#include "gpu/unit_cache.h"

namespace kvtier::gpu::cuda {
namespace internal {

DeviceBuffer::~DeviceBuffer() {
  if (ptr != nullptr) cudaFree(ptr);
}

bool DeviceBuffer::Allocate(size_t bytes, std::string* error) {
  if (bytes <= size && ptr != nullptr) return true;
  if (ptr != nullptr) cudaFree(ptr);
  ptr = nullptr;
  size = 0;
  if (!Check(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc", error)) return false;
  size = bytes;
  return true;
}

bool DeviceBuffer::CopyIn(const void* src, size_t bytes, std::string* error) {
  if (!Allocate(bytes, error)) return false;
  return bytes == 0 ||
         Check(cudaMemcpy(ptr, src, bytes, cudaMemcpyHostToDevice), "copy to the GPU", error);
}

Workspace::~Workspace() {
  if (start != nullptr) cudaEventDestroy(start);
  if (stop != nullptr) cudaEventDestroy(stop);
}

namespace {

// Workspaces not in use, of every device. Never destroyed: workspaces may be given back during
// exit, after static destructors have run.
class WorkspacePool {
 public:
  std::unique_ptr<Workspace> Take(int device) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < idle_.size(); ++i) {
      if (idle_[i]->device != device) continue;
      std::unique_ptr<Workspace> w = std::move(idle_[i]);
      idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
      return w;
    }
    return nullptr;
  }
  void Give(std::unique_ptr<Workspace> w) {
    std::lock_guard lock(mu_);
    idle_.push_back(std::move(w));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Workspace>> idle_;
};

WorkspacePool& Workspaces() {
  static auto* pool = new WorkspacePool();
  return *pool;
}

}  // namespace

void WorkspaceReturn::operator()(Workspace* w) const {
  std::unique_ptr<Workspace> owned(w);
  if (owned != nullptr && owned->reusable) Workspaces().Give(std::move(owned));
}

WorkspacePtr AcquireWorkspace(std::string* error) {
  int device = 0;
  if (!Check(cudaGetDevice(&device), "cudaGetDevice", error)) return nullptr;
  std::unique_ptr<Workspace> w = Workspaces().Take(device);
  if (w == nullptr) {
    w = std::make_unique<Workspace>();
    w->device = device;
    if (!Check(cudaEventCreate(&w->start), "cudaEventCreate", error) ||
        !Check(cudaEventCreate(&w->stop), "cudaEventCreate", error)) {
      return nullptr;
    }
  }
  return WorkspacePtr(w.release());
}

bool UploadBlocks(const std::vector<const void*>& pages, int used, size_t block_bytes,
                  DeviceBuffer* blocks, std::vector<const void*>* device_pages,
                  std::string* error) {
  std::vector<const void*> distinct;
  std::vector<size_t> slot(used);
  for (int i = 0; i < used; ++i) {
    auto it = std::find(distinct.begin(), distinct.end(), pages[i]);
    slot[i] = it - distinct.begin();
    if (it == distinct.end()) distinct.push_back(pages[i]);
  }
  if (!blocks->Allocate(distinct.size() * block_bytes, error)) return false;
  for (size_t b = 0; b < distinct.size(); ++b) {
    if (!Check(cudaMemcpy(blocks->as<uint8_t>() + b * block_bytes, distinct[b], block_bytes,
                          cudaMemcpyHostToDevice),
               "copy of a block to the GPU", error)) {
      return false;
    }
  }
  device_pages->resize(used);
  for (int i = 0; i < used; ++i) {
    (*device_pages)[i] = blocks->as<uint8_t>() + slot[i] * block_bytes;
  }
  return true;
}

namespace {

// Events that order kernels after a DeviceMapping's copies, kept for the next mapping: the
// worker maps every layer of every request. Never destroyed, as WorkspacePool.
class EventPool {
 public:
  cudaEvent_t Take(std::string* error) {
    {
      std::lock_guard lock(mu_);
      if (!idle_.empty()) {
        cudaEvent_t e = idle_.back();
        idle_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    if (!Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate", error)) {
      return nullptr;
    }
    return e;
  }
  void Give(cudaEvent_t e) {
    std::lock_guard lock(mu_);
    idle_.push_back(e);
  }

 private:
  std::mutex mu_;
  std::vector<cudaEvent_t> idle_;
};

EventPool& CopyEvents() {
  static auto* pool = new EventPool();
  return *pool;
}

}  // namespace
}  // namespace internal

namespace {

// UnitCache's memory: cudaMalloc, and copies queued on the cache's stream.
struct CudaMemory {
  cudaStream_t stream = nullptr;
  void* Allocate(size_t bytes, std::string* error) {
    void* p = nullptr;
    if (!internal::Check(cudaMalloc(&p, std::max<size_t>(bytes, 1)),
                         "cudaMalloc of the block cache", error)) {
      return nullptr;
    }
    return p;
  }
  void Free(void* p) {
    if (p != nullptr) cudaFree(p);
  }
  bool Copy(void* dst, const void* src, size_t bytes, std::string* error) {
    return internal::Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream),
                           "copy of a block to the GPU", error);
  }
};

using DeviceUnitCache = UnitCache<CudaMemory>;

}  // namespace

struct DeviceUnits::Impl {
  cudaStream_t stream = nullptr;
  std::unique_ptr<DeviceUnitCache> cache;
  ~Impl() {
    cache.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

struct DeviceMapping::Impl {
  std::unique_ptr<DeviceUnitCache::Mapping> held;
  cudaEvent_t copied = nullptr;  // recorded on the copy stream after this mapping's copies
  ~Impl() {
    // The bytes may be dropped (and the host buffers reused) only once they are copied.
    if (copied != nullptr) {
      cudaEventSynchronize(copied);
      internal::CopyEvents().Give(copied);  // waits already queued on it are unaffected
    }
  }
};

DeviceMapping::DeviceMapping(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceMapping::~DeviceMapping() = default;
const std::vector<const void*>& DeviceMapping::addresses() const {
  return impl_->held->addresses();
}
uint64_t DeviceMapping::copied_bytes() const { return impl_->held->copied_bytes(); }
bool DeviceMapping::OrderBefore(std::string* error) const {
  return internal::Check(cudaStreamWaitEvent(0, impl_->copied, 0), "wait for the block copies",
                         error);
}

DeviceUnits::DeviceUnits(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceUnits::~DeviceUnits() = default;

std::unique_ptr<DeviceUnits> DeviceUnits::Create(uint64_t capacity_bytes, std::string* error) {
  auto impl = std::make_unique<Impl>();
  // Non-blocking: the copies do not wait for kernels on the default stream, nor they for them.
  if (!internal::Check(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                       "cudaStreamCreate", error)) {
    return nullptr;
  }
  impl->cache = std::make_unique<DeviceUnitCache>(CudaMemory{impl->stream}, capacity_bytes);
  return std::unique_ptr<DeviceUnits>(new DeviceUnits(std::move(impl)));
}

std::unique_ptr<DeviceMapping> DeviceUnits::Map(const std::vector<Source>& sources,
                                                std::string* error) {
  std::vector<DeviceUnitCache::Source> src;
  src.reserve(sources.size());
  for (const Source& s : sources) src.push_back({s.id, s.version, s.host, s.bytes});
  auto m = std::make_unique<DeviceMapping::Impl>();
  m->held = impl_->cache->Map(src, error);
  if (m->held == nullptr) {
    // Copies queued before the failure read host buffers the caller may now reuse.
    cudaStreamSynchronize(impl_->stream);
    return nullptr;
  }
  m->copied = internal::CopyEvents().Take(error);
  if (m->copied == nullptr ||
      !internal::Check(cudaEventRecord(m->copied, impl_->stream), "cudaEventRecord", error)) {
    cudaStreamSynchronize(impl_->stream);
    return nullptr;
  }
  return std::unique_ptr<DeviceMapping>(new DeviceMapping(std::move(m)));
}

DeviceUnits::Stats DeviceUnits::stats() const {
  const auto s = impl_->cache->stats();
  Stats out;
  out.bytes = s.bytes;
  out.units = s.units;
  out.copied_bytes = s.copied_bytes;
  out.reused_bytes = s.reused_bytes;
  out.evictions = s.evictions;
  return out;
}

namespace {

// Page-locked memory in 64 MiB slabs: cudaHostAlloc costs far more than a copy of a small buffer,
// and the worker's units are small (one layer of one block) and come and go by the thousand.
// Freed buffers wait in a list per size for the next of that size; slabs stay until exit, so
// the memory held is the most ever in use at once.
class PinnedSlabs {
 public:
  void* Alloc(size_t bytes) {
    bytes = (std::max<size_t>(bytes, 1) + 255) & ~size_t{255};
    std::lock_guard lock(mu_);
    auto& spare = free_[bytes];
    if (!spare.empty()) {
      void* p = spare.back();
      spare.pop_back();
      size_of_[p] = bytes;
      return p;
    }
    if (bytes > kSlabBytes / 4) return nullptr;  // large buffers: ordinary memory
    if (left_ < bytes) {
      void* slab = nullptr;
      if (cudaHostAlloc(&slab, kSlabBytes, cudaHostAllocPortable) != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it
        return nullptr;
      }
      next_ = static_cast<uint8_t*>(slab);
      left_ = kSlabBytes;
    }
    void* p = next_;
    next_ += bytes;
    left_ -= bytes;
    size_of_[p] = bytes;
    return p;
  }
  void Free(void* p) {
    if (p == nullptr) return;
    std::lock_guard lock(mu_);
    auto it = size_of_.find(p);
    if (it == size_of_.end()) return;
    free_[it->second].push_back(p);
    size_of_.erase(it);
  }

 private:
  static constexpr size_t kSlabBytes = 64 << 20;
  std::mutex mu_;
  uint8_t* next_ = nullptr;  // the current slab's unused part
  size_t left_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_;  // by rounded size
  std::unordered_map<void*, size_t> size_of_;            // buffers in use
};

PinnedSlabs& Pinned() {
  static auto* slabs = new PinnedSlabs();  // outlives every user; never destroyed
  return *slabs;
}

}  // namespace

void* AllocPinned(size_t bytes) { return Pinned().Alloc(bytes); }

void FreePinned(void* p) { Pinned().Free(p); }

double CopyGBps(size_t bytes, int reps, std::string* error) {
  internal::DeviceBuffer a, b;
  if (!a.Allocate(bytes, error) || !b.Allocate(bytes, error)) return -1;
  if (!internal::Check(cudaMemset(a.ptr, 1, bytes), "cudaMemset", error)) return -1;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int i = 0; i <= reps; ++i) {
    cudaEventRecord(start);
    cudaMemcpy(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    if (i > 0) ms.push_back(t);  // the first is a warm-up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!internal::Check(cudaGetLastError(), "device copy", error)) return -1;
  std::sort(ms.begin(), ms.end());
  const float median = ms[ms.size() / 2];
  return double(bytes) / (median / 1e3) / 1e9;
}

}  // namespace kvtier::gpu::cuda
