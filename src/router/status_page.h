#pragma once
// The status page kvtier-router serves at `/` of its metrics address: what an operator looks at
// first. Each node with its health, load, decisions, Lookup hit ratio over the last minute and
// how full its host and NVMe tiers are; the router's balance against its bound; the cluster's
// hit ratio over time as a chart. One HTML document, no external assets (inline CSS and SVG).
// The numbers carry element ids and classes, so that tests read them from the rendered page.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kvtier::router {

struct TierFill {
  uint64_t used_bytes = 0;
  uint64_t capacity_bytes = 0;
};

struct NodeStatus {
  std::string node;  // the gRPC address the router knows it by
  bool healthy = false;
  double load = 0;  // blocks, as kvtier_router_load_blocks
  uint64_t decisions = 0;
  std::optional<double> hit_ratio;  // Lookup's, over the last minute; none without lookups
  std::optional<TierFill> host, nvme;  // none until the node's Stats answered
};

struct RouterStatus {
  std::vector<NodeStatus> nodes;
  double imbalance = 0;  // as kvtier_router_imbalance
  double load_bound = 0;
  std::optional<double> hit_ratio;  // the cluster's, over the last minute
  // The cluster's hit ratio per probe round that saw lookups: (seconds since the Unix epoch,
  // ratio), oldest first.
  std::vector<std::pair<double, double>> history;
};

std::string StatusPageHtml(const RouterStatus& status);

}  // namespace kvtier::router
