#pragma once
// HashRing: consistent hashing over weighted nodes with virtual nodes. A key's candidates are the
// distinct nodes met walking the ring clockwise from the key's hash: the first is its home, the
// rest are where bounded loads send it when the home is full. Adding or removing a node moves
// only the keys whose home it is or becomes (about 1/N of them). Immutable once built; cheap to
// copy out of a shared_ptr for concurrent readers.

#include <cstdint>
#include <string>
#include <vector>

namespace kvtier::router {

struct RingNode {
  std::string name;     // stable identity (address); hashed for the node's ring points
  double weight = 1.0;  // relative capacity; > 0
};

class HashRing {
 public:
  // Default 160 points per unit of weight: about 5% spread of key shares at 8 nodes.
  explicit HashRing(std::vector<RingNode> nodes, int points_per_weight = 160);

  size_t size() const { return nodes_.size(); }
  const RingNode& node(int i) const { return nodes_[i]; }
  // The home node of a key hash (-1 when the ring is empty).
  int Home(uint64_t hash) const;
  // Up to `max` distinct nodes in ring order from `hash`, home first.
  void Candidates(uint64_t hash, size_t max, std::vector<int>* out) const;

 private:
  std::vector<RingNode> nodes_;
  std::vector<std::pair<uint64_t, int>> points_;  // (position, node), sorted
};

}  // namespace kvtier::router
