#include "router/router.h"

namespace kvtier::router {

Router::Router(std::vector<RingNode> nodes, RouterOptions options)
    : ring_(std::move(nodes), options.points_per_weight),
      options_(options),
      popularity_(options.popularity_width, options.popularity_window) {
  for (size_t i = 0; i < ring_.size(); ++i) total_weight_ += ring_.node(i).weight;
}

template <typename KeyAt>
size_t Router::DepthOf(size_t blocks, KeyAt key_at, BlockKey* routing_key) {
  if (blocks == 0 || ring_.size() == 0) return 0;
  popularity_.AddRequest();
  const double fair = 1.0 / static_cast<double>(ring_.size());
  for (size_t d = 0; d < blocks; ++d) {
    *routing_key = key_at(d);
    popularity_.Add(*routing_key);
    if (popularity_.Share(*routing_key) <= fair) return d + 1;
  }
  return blocks;
}

void Router::SetNodes(std::vector<RingNode> nodes) {
  ring_ = HashRing(std::move(nodes), options_.points_per_weight);
  total_weight_ = 0;
  for (size_t i = 0; i < ring_.size(); ++i) total_weight_ += ring_.node(i).weight;
}

size_t Router::Depth(std::span<const BlockKey> chain) {
  BlockKey unused;
  return DepthOf(chain.size(), [&](size_t d) { return chain[d]; }, &unused);
}

RouteChoice Router::RouteTokens(const ChainHasher& hasher, std::span<const uint32_t> tokens,
                                std::span<const double> loads, double slack) {
  RouteChoice c;
  const size_t bt = hasher.block_tokens();
  BlockKey parent = hasher.root();
  c.depth = DepthOf(
      tokens.size() / bt,
      [&](size_t d) {
        parent = hasher.Next(parent, tokens.subspan(d * bt, bt));
        return parent;
      },
      &c.routing_key);
  if (c.depth == 0) c.routing_key = hasher.root();
  c.node = Pick(c.routing_key, loads, slack);
  return c;
}

bool Router::WithinBound(int n, std::span<const double> loads, double slack) const {
  double total = 0;
  for (double l : loads) total += l;
  const double share = ring_.node(n).weight / total_weight_;
  return loads[n] <= options_.load_factor * total * share + slack;
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

RouteChoice Router::Route(std::span<const BlockKey> chain, std::span<const double> loads,
                          double slack) {
  RouteChoice c;
  c.depth = Depth(chain);
  if (c.depth == 0) return c;
  c.routing_key = chain[c.depth - 1];
  c.node = Pick(c.routing_key, loads, slack);
  return c;
}

}  // namespace kvtier::router
