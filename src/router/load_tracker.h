#pragma once
// LoadTracker: each node's prefill work as kvtier-router accounts it, for bounded loads. A node's
// load is the work reported for it (RouteService.Report: blocks it prefilled) once it has a
// report, and until then the blocks of the requests routed to it. Loads decay with a half-life
// (default one minute) on an injectable clock, so that a burst long past does not keep a node
// out of its bound. Also the recent mean request size (blocks): bounded loads' slack.
// Not thread-safe: kvtier-router calls it under its routing lock.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/clock.h"

namespace kvtier::router {

class LoadTracker {
 public:
  explicit LoadTracker(const Clock* clock, double half_life_s = 60);

  // A request of `blocks` blocks routed to `node` (counted while the node has no reports).
  void Routed(const std::string& node, double blocks);
  // `blocks` prefilled on `node`: from now on its load counts reports only.
  void Reported(const std::string& node, double blocks);
  // Work a peer replica accounted for `node` (replica sync): `routed` blocks counted as Routed
  // would (the mean request size aside), `reported` as Reported.
  void PeerWork(const std::string& node, double routed, double reported);
  // Forgets a node that left.
  void Remove(const std::string& node);

  // Loads now, decayed, in the order of `nodes` (0 for a node never seen).
  std::vector<double> Loads(std::span<const std::string> nodes);
  double Load(const std::string& node);
  // Max over `nodes` of load / their mean load (0 when all are 0).
  double Imbalance(std::span<const std::string> nodes);
  // Recent mean of routed request sizes (an exponential average over about 32 requests).
  double mean_request_blocks() const { return mean_request_blocks_; }

 private:
  struct Node {
    double load = 0;
    bool reported = false;
  };
  void Decay();

  const Clock* clock_;
  const double half_life_us_;
  int64_t last_decay_us_;
  double mean_request_blocks_ = 0;
  absl::flat_hash_map<std::string, Node> nodes_;
};

}  // namespace kvtier::router
