#include "router/router.h"

#include <algorithm>

namespace kvtier::router {

Router::Router(std::vector<RingNode> nodes, RouterOptions options)
    : ring_(std::move(nodes), options.points_per_weight),
      options_(options),
      popularity_(options.popularity_width, options.popularity_window),
      placements_(options.placement_entries) {
  IndexNodes();
}

void Router::SetNodes(std::vector<RingNode> nodes) {
  ring_ = HashRing(std::move(nodes), options_.points_per_weight);
  IndexNodes();
}

void Router::IndexNodes() {
  total_weight_ = 0;
  id_of_node_.clear();
  std::fill(node_of_id_.begin(), node_of_id_.end(), -1);
  for (size_t i = 0; i < ring_.size(); ++i) {
    total_weight_ += ring_.node(i).weight;
    const auto [it, added] = node_ids_.try_emplace(ring_.node(i).name, node_ids_.size());
    if (added) node_of_id_.push_back(-1);
    id_of_node_.push_back(it->second);
    node_of_id_[it->second] = static_cast<int>(i);
  }
}

int Router::NodeOfId(int64_t id) const {
  return id >= 0 && id < static_cast<int64_t>(node_of_id_.size()) ? node_of_id_[id] : -1;
}

double Router::HotShare() const {
  // A key with more of the requests than the bound's slack over one node's share could not be
  // absorbed by the bound: its node would run up to it, or the key be moved and lose its cache.
  const double epsilon = std::clamp(options_.load_factor - 1.0, kMinEpsilon, 1.0);
  return epsilon / static_cast<double>(ring_.size());
}

template <typename KeyAt>
size_t Router::DepthOf(size_t blocks, KeyAt key_at, BlockKey* routing_key, bool* fresh) {
  counted_.clear();
  if (blocks == 0 || ring_.size() == 0) return 0;
  popularity_.AddRequest();
  const double hot = HotShare();
  for (size_t d = 0; d < blocks; ++d) {
    *routing_key = key_at(d);
    counted_.push_back(*routing_key);
    bool seen = false;
    const bool over = popularity_.AddAndOver(*routing_key, hot, &seen);
    *fresh = !seen;
    if (!over) return d + 1;
  }
  return blocks;
}

void Router::CountPeerRequest(std::span<const BlockKey> keys) {
  if (keys.empty()) return;
  popularity_.AddRequest();
  for (const BlockKey& k : keys) popularity_.Add(k);
}

size_t Router::Depth(std::span<const BlockKey> chain) {
  BlockKey unused;
  bool fresh;
  return DepthOf(chain.size(), [&](size_t d) { return chain[d]; }, &unused, &fresh);
}

RouteChoice Router::Route(std::span<const BlockKey> chain, std::span<const double> loads,
                          double slack) {
  RouteChoice c;
  bool fresh = false;
  c.depth = DepthOf(chain.size(), [&](size_t d) { return chain[d]; }, &c.routing_key, &fresh);
  if (c.depth == 0) return c;
  c.node = Place(c.routing_key, fresh, loads, slack, &c.placed);
  return c;
}

RouteChoice Router::RouteTokens(const ChainHasher& hasher, std::span<const uint32_t> tokens,
                                std::span<const double> loads, double slack) {
  RouteChoice c;
  const size_t bt = hasher.block_tokens();
  BlockKey parent = hasher.root();
  bool fresh = false;
  c.depth = DepthOf(
      tokens.size() / bt,
      [&](size_t d) {
        parent = hasher.Next(parent, tokens.subspan(d * bt, bt));
        return parent;
      },
      &c.routing_key, &fresh);
  if (c.depth == 0) {
    c.routing_key = hasher.root();
    c.node = Pick(c.routing_key, loads, slack);  // one key for every short prompt: not placed
    return c;
  }
  c.node = Place(c.routing_key, fresh, loads, slack, &c.placed);
  return c;
}

int Router::Place(const BlockKey& key, bool fresh, std::span<const double> loads, double slack,
                  bool* placed) {
  if (ring_.size() == 0) return -1;
  const int was = NodeOfId(placements_.Find(key));
  if (was >= 0 && WithinBound(was, loads, slack)) return was;
  const int n = was < 0 && fresh ? PickUnderShare(key, loads, slack) : Pick(key, loads, slack);
  Remember(key, n);
  *placed = n != was;
  return n;
}

void Router::Remember(const BlockKey& key, int n) {
  if (n >= 0 && n < static_cast<int>(id_of_node_.size())) placements_.Remember(key, id_of_node_[n]);
}

int Router::PreferCached(const RouteChoice& choice, std::span<const size_t> cached,
                         std::span<const double> loads, double slack, size_t* expected_cached) {
  int node = choice.node;
  if (node < 0 || static_cast<size_t>(node) >= cached.size()) return node;
  size_t best = cached[node];
  const size_t routing_blocks = std::max<size_t>(choice.depth, 1);
  auto better = [&](int n) {
    return cached[n] > best && cached[n] >= routing_blocks && WithinBound(n, loads, slack);
  };
  // The most held by a node that may take it; the ring order breaks ties only, so it is walked
  // only when two or more nodes other than the router's choice hold that most.
  size_t most = best, holding = 0;
  int only = node;
  for (int n = 0; n < static_cast<int>(std::min(cached.size(), ring_.size())); ++n) {
    if (!better(n)) continue;
    if (cached[n] > most) {
      most = cached[n];
      holding = 0;
    }
    if (cached[n] == most) {
      ++holding;
      only = n;
    }
  }
  if (holding == 1) {
    node = only;
    best = most;
  } else if (holding > 1) {
    ring_.Candidates(RingHash(choice.routing_key), ring_.size(), &candidates_);
    for (int n : candidates_) {
      if (static_cast<size_t>(n) < cached.size() && better(n)) {
        best = cached[n];
        node = n;
      }
    }
  }
  if (node != choice.node) Remember(choice.routing_key, node);
  if (expected_cached != nullptr) *expected_cached = best;
  return node;
}

int Router::Preferred(const BlockKey& key) const {
  const int n = NodeOfId(placements_.Peek(key));
  return n >= 0 ? n : ring_.Home(RingHash(key));
}

bool Router::WithinBound(int n, std::span<const double> loads, double slack) const {
  double total = 0;
  for (double l : loads) total += l;
  const double share = ring_.node(n).weight / total_weight_;
  return loads[n] <= options_.load_factor * total * share + slack;
}

int Router::PickUnderShare(const BlockKey& key, std::span<const double> loads,
                           double slack) const {
  ring_.Candidates(RingHash(key), ring_.size(), &candidates_);
  double total = 0;
  for (double l : loads) total += l;
  for (int n : candidates_) {
    if (loads[n] <= total * ring_.node(n).weight / total_weight_ + slack) return n;
  }
  return candidates_.front();  // unreachable: some node is at or under its share
}

int Router::Pick(const BlockKey& key, std::span<const double> loads, double slack) const {
  ring_.Candidates(RingHash(key), ring_.size(), &candidates_);
  if (candidates_.empty()) return -1;
  double total = 0;
  for (double l : loads) total += l;
  int least = candidates_.front();
  for (int n : candidates_) {
    const double share = ring_.node(n).weight / total_weight_;
    if (loads[n] <= options_.load_factor * total * share + slack) return n;
    if (loads[n] / share < loads[least] / (ring_.node(least).weight / total_weight_)) least = n;
  }
  return least;  // unreachable: some node is at or below its share
}

}  // namespace kvtier::router
