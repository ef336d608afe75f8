#pragma once
// Worker: kvtier-worker's core. A decode step names cached prefixes (keys or tokens) and the
// query of some layers (decode_types.h); the worker plans which bytes the attention needs
// (planning.h: the requested layers; for head-sparse attention, outside the local heads' sinks
// and window, only the recall heads' slices), takes what its block pool has and fetches the rest
// (block_source.h: from the kvtierd nodes that hold them, over UCX where offered), and computes
// each layer on its backend (attention_backend.h: the GPU where there is one, else the CPU fast
// path of src/gpu). attention_service.h is the gRPC glue. Thread-safe: steps run concurrently.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/attention_backend.h"
#include "worker/block_pool.h"
#include "worker/block_source.h"
#include "worker/decode_types.h"
#include "worker/planning.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace kvtier::worker {

struct WorkerOptions {
  std::string router;                // kvtier-router address; or
  std::vector<std::string> nodes;    // kvtierd addresses, asked in this order
  uint64_t pool_bytes = 1ull << 30;  // Default: 1 GiB. The block pool's capacity.
  // Default: 1 GiB. Memory kept for reuse beyond the pool: where the blocks of requests go that
  // the pool does not keep (a larger request than this faults in fresh memory).
  uint64_t spare_bytes = 1ull << 30;
  int threads = 0;                     // Default: 0, every core. Compute threads per layer.
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
  // Default: 8. Threads of the process that read from nodes beside the requests' own (one pool
  // for all requests: a request never starts threads of its own).
  int fetch_threads = 8;
};

class Worker {
 public:
  // INVALID_ARGUMENT unless exactly one of router and nodes is given. `registry` (may be null)
  // receives the worker's metrics.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(const WorkerOptions& options,
                                                        prometheus::Registry* registry);
  // A worker over `source` and `backend` (null: the CPU) (for tests: fakes of either).
  static std::unique_ptr<Worker> CreateWith(const WorkerOptions& options,
                                            std::unique_ptr<BlockSource> source,
                                            std::unique_ptr<AttentionBackend> backend,
                                            prometheus::Registry* registry);
  ~Worker();

  // One decode step. `bearer_token` (may be empty) is forwarded to the daemons, which check it
  // against the request's tenant.
  absl::StatusOr<DecodeStepResult> Decode(const DecodeStepRequest& request,
                                          const std::string& bearer_token);

  BlockPool::Stats pool_stats() const { return pool_.stats(); }

 private:
  struct Metrics;
  Worker(const WorkerOptions& options, std::unique_ptr<BlockSource> source,
         std::unique_ptr<AttentionBackend> backend);

  absl::Status DecodeChecked(const DecodeStepRequest& request, const std::string& bearer_token,
                             const Step& step, DecodeStepResult* result);
  // The plan's pool units, fetching what they lack (and waiting for what other requests fetch).
  absl::Status FillFromPool(const std::string& tenant, const std::string& token, size_t sequence,
                            Plan& plan, std::chrono::steady_clock::time_point deadline,
                            DecodeStepStats* stats);
  // One sequence's layers on the backend; once the backend fails (*backend_failed), on the CPU.
  absl::StatusOr<std::vector<LayerOutput>> Compute(const SequenceQuery& seq, const Step& step,
                                                   const Plan& plan, bool* backend_failed);

  const WorkerOptions options_;
  std::unique_ptr<BlockSource> source_;
  std::unique_ptr<AttentionBackend> cpu_;  // where a request goes on when the backend fails
  std::unique_ptr<AttentionBackend> device_;  // the backend when it is not the CPU
  AttentionBackend* const backend_;           // device_, or cpu_
  BlockPool pool_;
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace kvtier::worker
