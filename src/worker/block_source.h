#pragma once
// BlockSource: where the worker's blocks come from. DaemonBlockSource finds which kvtierd nodes
// hold a sequence's blocks (the router's membership in ring order, or a static list, each asked
// with Lookup) and reads the byte ranges a plan claims into the pool's units, over UCX where a
// daemon offers it (gRPC otherwise); nodes are read in parallel on one process-wide pool of
// threads, each node's batches in order.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "client/cache_client.h"
#include "client/router_client.h"
#include "common/mutex.h"
#include "common/task_pool.h"
#include "worker/decode_types.h"
#include "worker/planning.h"

namespace kvtier::worker {

class BlockSource {
 public:
  virtual ~BlockSource() = default;
  // Fills the slices plan.claims asks to fetch, of sequence `sequence` of a request of `tenant`
  // (`token`, may be empty, is what the daemons check). Adds what it moved to *stats.
  // NOT_FOUND names the first block no node holds.
  virtual absl::Status Fetch(const std::string& tenant, const std::string& token, size_t sequence,
                             Plan& plan, DecodeStepStats* stats) = 0;
};

struct DaemonSourceOptions {
  std::string router;                  // kvtier-router address; or
  std::vector<std::string> nodes;      // kvtierd addresses, asked in this order
  int64_t fetch_deadline_ms = 10'000;  // per call to a daemon
  bool use_ucx = true;
  uint64_t read_batch_bytes = 64ull << 20;  // whole-block bytes per read call (one lease)
  int fetch_threads = 8;  // the process's threads reading from nodes beside the callers
};

class DaemonBlockSource final : public BlockSource {
 public:
  // INVALID_ARGUMENT unless exactly one of router and nodes is given.
  static absl::StatusOr<std::unique_ptr<DaemonBlockSource>> Create(
      const DaemonSourceOptions& options);

  absl::Status Fetch(const std::string& tenant, const std::string& token, size_t sequence,
                     Plan& plan, DecodeStepStats* stats) override;

 private:
  explicit DaemonBlockSource(const DaemonSourceOptions& options);

  // Blocks [begin, end) of a sequence, to be read from `node`.
  struct Segment {
    std::string node;
    size_t begin, end;
  };
  // The kvtierd nodes to ask for `keys`, best first.
  absl::StatusOr<std::vector<std::string>> NodesFor(std::span<const BlockKey> keys);
  std::shared_ptr<CacheClient> ClientFor(const std::string& node, const std::string& tenant,
                                         const std::string& token);
  // Which node serves each block that needs fetching: runs of consecutive blocks, each from the
  // node holding the longest run from there (asked with Lookup, in the router's order).
  absl::StatusOr<std::vector<Segment>> Locate(const std::string& tenant, const std::string& token,
                                              size_t sequence, const Plan& plan,
                                              absl::FunctionRef<bool(size_t)> needs_fetch);

  const DaemonSourceOptions options_;
  std::unique_ptr<RouterClient> router_;
  TaskPool fetchers_;
  Mutex mu_;
  std::chrono::steady_clock::time_point members_at_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<CacheClient>> clients_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::worker
