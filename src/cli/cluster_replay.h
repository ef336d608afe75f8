#pragma once
// `kvtier replay --router`: the trace through a real local cluster (kvtier-router + kvtierd).

#include <string>
#include <vector>

#include "router/simulator.h"

namespace kvtier::cli {

struct ClusterReplayOptions {
  std::string router;        // kvtier-router's gRPC address
  std::string tenant = "replay";
  size_t block_bytes = 4096;  // payload bytes per block put
  // kvtier-worker's gRPC address: after the replay, decode attention over a few replayed
  // prefixes (their blocks read as KvLayout::SmallGqa, so block_bytes must be 4096).
  std::string worker;
};

// Prints per-node and per-tier hit rates, the router's balance, every /metrics address it
// knows, and the simulation of the same cluster. Returns the exit code.
int RunClusterReplay(const std::vector<router::TraceRequest>& trace,
                     const ClusterReplayOptions& options, const router::SimOptions& sim,
                     bool json);

}  // namespace kvtier::cli
