#pragma once
// HealthProber: one round of health probes over every node at once. Each node gets a
// grpc.health.v1 Check and, if serving, a CacheService.Stats (its tiers and Lookup counts, for
// the status page), both asynchronous: a round takes about one probe timeout however many nodes
// there are, and a node that does not answer delays no other. NodeHealth is the eject / re-admit
// rule applied to each node's results.

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "router/node_channel.h"

namespace kvtier::router {

struct HealthOptions {
  // Default: true. False: members are never probed (nor asked for Stats) and count as healthy
  // while they are members: for engines without kvtierd, whose liveness the membership source
  // (a Kubernetes headless Service's ready addresses) already tells.
  bool enabled = true;
  int probe_interval_ms = 1000;  // Default: 1 s.
  int probe_timeout_ms = 500;    // Default: 500 ms.
  int failures_to_eject = 2;     // Default: 2 failed probes in a row.
};

struct ProbeTarget {
  grpc::health::v1::Health::Stub* health = nullptr;
  v1::CacheService::Stub* cache = nullptr;  // null: no Stats
};

struct ProbeResult {
  bool serving = false;
  std::string error;      // why not serving: the call's status, or "not serving"
  bool stats_ok = false;  // Stats answered (a daemon with auth needs a cluster token for it)
  v1::StatsResponse stats;
};

class HealthProber {
 public:
  HealthProber(HealthOptions options, NodeCredentials credentials)
      : options_(options), credentials_(std::move(credentials)) {}
  // Probes every target at once; returns when each has answered or timed out.
  std::vector<ProbeResult> ProbeAll(std::span<const ProbeTarget> targets) const;

 private:
  const HealthOptions options_;
  const NodeCredentials credentials_;
};

// A node's health as its probes tell it: ejected after `failures_to_eject` failures in a row,
// re-admitted at its first good probe. New nodes start healthy.
class NodeHealth {
 public:
  enum class Change { kNone, kEjected, kReadmitted };
  Change Observe(bool serving, int failures_to_eject);
  bool healthy() const { return healthy_; }
  int failures() const { return failures_; }

 private:
  bool healthy_ = true;
  int failures_ = 0;
};

}  // namespace kvtier::router
