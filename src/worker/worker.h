#pragma once
// Worker: kvtier-worker's core. A decode request names a cached prefix (keys or tokens) and the
// query of some layers; the worker finds which kvtierd nodes hold the prefix's blocks (the
// router's membership in ring order, or a static list, each asked with Lookup), reads only the
// byte ranges the attention needs (the requested layers; for head-sparse attention, outside
// the local heads' sinks and window, only the recall heads' slices) over UCX where the daemon
// offers it (gRPC otherwise) into its block pool, and runs the CPU fast path of src/gpu over
// them. Thread-safe: requests run concurrently.

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "client/cache_client.h"
#include "client/router_client.h"
#include "common/kv_layout.h"
#include "common/mutex.h"
#include "gpu/attention.h"
#include "kvtier/v1/attention.grpc.pb.h"
#include "worker/block_pool.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace kvtier::gpu::cuda {
class DeviceMapping;
class DeviceUnits;
}  // namespace kvtier::gpu::cuda

namespace kvtier::worker {

struct WorkerOptions {
  std::string router;                // kvtier-router address; or
  std::vector<std::string> nodes;    // kvtierd addresses, asked in this order
  uint64_t pool_bytes = 1ull << 30;  // Default: 1 GiB. The block pool's capacity.
  // Default: 1 GiB. Memory kept for reuse beyond the pool: where the blocks of requests go that
  // the pool does not keep (a larger request than this faults in fresh memory).
  uint64_t spare_bytes = 1ull << 30;
  int threads = 0;                     // Default: 0, every core. Compute threads per request.
  int64_t fetch_deadline_ms = 10'000;  // Default: 10 s. Per call to a daemon.
  bool use_ucx = true;                 // Default: true. Reads over UCX where daemons offer it.
  // Default: "auto": the CUDA kernels where a GPU is present (and the build has them), else the
  // CPU fast path. "cpu": always the CPU. "cuda": the GPU or fail to start.
  std::string device = "auto";
  uint64_t max_request_blocks = 1 << 20;  // Default: 1M. Blocks over all sequences of a request.
  // Default: 64 MiB. Whole-block bytes per read call (one lease): bounds a lease's pinned memory.
  uint64_t read_batch_bytes = 64ull << 20;
  // Default: 4 GiB. On a GPU, the pool's blocks kept in GPU memory as well (copied once while
  // they stay); 0: copied for every request.
  uint64_t gpu_pool_bytes = 4ull << 30;
};

class Worker {
 public:
  // INVALID_ARGUMENT unless exactly one of router and nodes is given. `registry` (may be null)
  // receives the worker's metrics.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(const WorkerOptions& options,
                                                        prometheus::Registry* registry);
  ~Worker();

  // One decode step. `bearer_token` (may be empty) is forwarded to the daemons, which check it
  // against the request's tenant.
  absl::Status Decode(const v1::DecodeRequest& request, const std::string& bearer_token,
                      v1::DecodeResponse* response);

  BlockPool::Stats pool_stats() const { return pool_.stats(); }

 private:
  struct Metrics;
  struct Plan;
  // What a request asks of every sequence, checked.
  struct Step {
    KvLayout layout;
    gpu::ElemType elem = gpu::ElemType::kBf16;
    bool mla = false;
    bool sparse = false;
    gpu::HeadProfile profile;  // head-sparse only
    float scale = 1.0f;
    std::string pool_scope;  // tenant and bearer token: whose pool entries these are
  };
  Worker(const WorkerOptions& options, bool use_gpu);

  // The steps of DecodeChecked: check the request, plan each sequence's reads, fill the plan's
  // pool units (fetching what they lack), compute each sequence.
  absl::StatusOr<Step> ParseStep(const v1::DecodeRequest& request, const std::string& bearer_token,
                                 v1::AttentionMode* mode) const;
  absl::Status PlanSequence(const v1::DecodeRequest& request, int si, const Step& step,
                            Plan* plan) const;
  absl::Status FillFromPool(const std::string& tenant, const std::string& token, size_t sequence,
                            Plan& plan, std::chrono::steady_clock::time_point deadline,
                            v1::DecodeStats* stats);
  absl::Status Compute(const v1::Sequence& seq, const Step& step, const Plan& plan,
                       v1::SequenceOutput* out, std::string* gpu_error) const;
  // On a GPU with a pool there: each layer's units (in order) in GPU memory, their copies queued
  // layer by layer. Empty when the GPU is not used or its memory cannot take them (the layers are
  // then copied per step).
  std::vector<std::unique_ptr<gpu::cuda::DeviceMapping>> MapToGpu(
      const Plan& plan, const std::string& gpu_error) const;

  // Decode after the mode is settled (reported in metrics even when the request fails).
  absl::Status DecodeChecked(const v1::DecodeRequest& request, const std::string& bearer_token,
                             v1::AttentionMode* mode, v1::DecodeResponse* response);
  // The kvtierd nodes to ask for `keys`, best first.
  absl::StatusOr<std::vector<std::string>> NodesFor(std::span<const BlockKey> keys);
  std::shared_ptr<CacheClient> ClientFor(const std::string& node, const std::string& tenant,
                                         const std::string& token);
  // Blocks [begin, end) of a sequence, to be read from `node`.
  struct Segment {
    std::string node;
    size_t begin, end;
  };
  // Which node serves each block that needs fetching: runs of consecutive blocks, each from the
  // node holding the longest run from there (asked with Lookup, in the router's order). NOT_FOUND
  // names the first block no node holds.
  absl::StatusOr<std::vector<Segment>> Locate(const std::string& tenant, const std::string& token,
                                              size_t sequence, const Plan& plan,
                                              absl::FunctionRef<bool(size_t)> needs_fetch);
  // Fills the claimed slices of plan (one sequence) from the daemons.
  absl::Status Fetch(const std::string& tenant, const std::string& token, size_t sequence,
                     Plan& plan, v1::DecodeStats* stats);

  const WorkerOptions options_;
  BlockPool pool_;
  std::unique_ptr<RouterClient> router_;
  Mutex mu_;
  std::chrono::steady_clock::time_point members_at_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<CacheClient>> clients_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Metrics> metrics_;
  const bool use_gpu_;
  std::string device_name_;
  std::unique_ptr<gpu::cuda::DeviceUnits> device_units_;  // on a GPU, unless gpu_pool_bytes is 0
};

// AttentionService over a Worker.
class AttentionServiceImpl final : public v1::AttentionService::Service {
 public:
  explicit AttentionServiceImpl(Worker* worker) : worker_(worker) {}
  grpc::Status Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                      v1::DecodeResponse* response) override;

 private:
  Worker* worker_;
};

}  // namespace kvtier::worker
