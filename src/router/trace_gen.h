#pragma once
// Deterministic trace variants for testing routing beyond the one trace it was tuned on: what
// `kvtier gen-trace` writes and tests call. Traces use the simulator's TraceRequest (block keys
// {0, id + 1}, as LoadMooncakeTrace makes them) and are written back as Mooncake JSONL.
//
// Two sources: an existing trace, or generated multi-turn sessions (Zipf-popular system
// prompts, each session's turns resending its whole history). Then, in this order, optional
// transforms: a block shared by every request put in front, a burst (a window of the trace's
// requests arriving `burst` times faster), and all timestamps scaled.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "router/simulator.h"

namespace kvtier::router {

struct SessionTraceOptions {
  uint64_t seed = 1;               // Default: 1. Same seed, same trace.
  size_t sessions = 2500;          // Default: 2,500 conversations.
  double duration_s = 600;         // Default: 600. Sessions start uniformly over this time.
  size_t system_prompts = 40;      // Default: 40 system prompts, Zipf-popular.
  double zipf_s = 1.0;             // Default: 1.0. Popularity of prompt k is ~ 1 / k^s.
  size_t min_system_blocks = 2;    // Default: 2. System prompt length, uniform in [min, max].
  size_t max_system_blocks = 30;   // Default: 30.
  size_t max_turns = 10;           // Default: 10. Turns per session, uniform in [1, max].
  double mean_gap_s = 20;          // Default: 20. Mean (exponential) time between turns.
  size_t max_new_blocks = 6;       // Default: 6. Blocks a turn adds (user + previous answer),
                                   // uniform in [1, max].
  size_t max_blocks = 160;         // Default: 160. A session ends when its prompt would exceed.
};

// Multi-turn sessions: each turn's prompt is its system prompt, then the session's history.
std::vector<TraceRequest> GenerateSessions(const SessionTraceOptions& options);

// Puts one block, shared by every request, in front of every request's chain (keys of later
// blocks stay distinct per prefix: a trace's ids already name whole prefixes).
void AddSharedFirstBlock(std::vector<TraceRequest>* trace);
// The requests between 40% and 50% of the trace (by index) arrive `factor` times faster;
// later requests move earlier by the time saved. REQUIRES: factor >= 1.
void AddBurst(std::vector<TraceRequest>* trace, double factor);
// Every arrival time times `factor` (< 1: faster arrivals, more load). REQUIRES: factor > 0.
void ScaleTime(std::vector<TraceRequest>* trace, double factor);

// Mooncake JSONL: timestamp (ms), input_length (512 tokens a block), output_length, hash_ids.
// REQUIRES: keys as LoadMooncakeTrace makes them ({0, id + 1}).
absl::Status WriteMooncakeTrace(const std::string& path, const std::vector<TraceRequest>& trace);

}  // namespace kvtier::router
