#include "router/load_tracker.h"

#include <algorithm>
#include <cmath>

namespace kvtier::router {

LoadTracker::LoadTracker(const Clock* clock, double half_life_s)
    : clock_(clock), half_life_us_(half_life_s * 1e6), last_decay_us_(clock->NowMicros()) {}

void LoadTracker::Decay() {
  const int64_t now = clock_->NowMicros();
  if (now <= last_decay_us_) return;
  const double f = std::exp2(-static_cast<double>(now - last_decay_us_) / half_life_us_);
  last_decay_us_ = now;
  for (auto& [name, n] : nodes_) n.load *= f;
}

void LoadTracker::Routed(const std::string& node, double blocks) {
  Decay();
  Node& n = nodes_[node];
  if (!n.reported) n.load += blocks;
  mean_request_blocks_ = mean_request_blocks_ == 0
                             ? blocks
                             : mean_request_blocks_ + (blocks - mean_request_blocks_) / 32;
}

void LoadTracker::Reported(const std::string& node, double blocks) {
  Decay();
  Node& n = nodes_[node];
  if (!n.reported) n.load = 0;  // from now on, reported work only
  n.reported = true;
  n.load += blocks;
}

void LoadTracker::PeerWork(const std::string& node, double routed, double reported) {
  if (routed <= 0 && reported <= 0) return;
  Decay();
  Node& n = nodes_[node];
  if (reported > 0) {
    if (!n.reported) n.load = 0;
    n.reported = true;
    n.load += reported;
  } else if (!n.reported) {
    n.load += routed;
  }
}

void LoadTracker::Remove(const std::string& node) { nodes_.erase(node); }

std::vector<double> LoadTracker::Loads(std::span<const std::string> nodes) {
  Decay();
  std::vector<double> out;
  out.reserve(nodes.size());
  for (const std::string& name : nodes) {
    auto it = nodes_.find(name);
    out.push_back(it == nodes_.end() ? 0 : it->second.load);
  }
  return out;
}

double LoadTracker::Load(const std::string& node) {
  Decay();
  auto it = nodes_.find(node);
  return it == nodes_.end() ? 0 : it->second.load;
}

double LoadTracker::Imbalance(std::span<const std::string> nodes) {
  const std::vector<double> loads = Loads(nodes);
  double total = 0, max = 0;
  for (double l : loads) {
    total += l;
    max = std::max(max, l);
  }
  return total > 0 ? max * static_cast<double>(loads.size()) / total : 0;
}

}  // namespace kvtier::router
