#include "router/ring.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvtier::router {

HashRing::HashRing(std::vector<RingNode> nodes, int points_per_weight) : nodes_(std::move(nodes)) {
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
    const int points =
        std::max(1, static_cast<int>(std::lround(nodes_[i].weight * points_per_weight)));
    for (int p = 0; p < points; ++p) {
      const std::string label = absl::StrCat(nodes_[i].name, "#", p);
      points_.emplace_back(XXH3_64bits(label.data(), label.size()), i);
    }
  }
  std::sort(points_.begin(), points_.end());
}

int HashRing::Home(uint64_t hash) const {
  if (points_.empty()) return -1;
  auto it = std::lower_bound(points_.begin(), points_.end(), std::make_pair(hash, -1));
  return it == points_.end() ? points_.front().second : it->second;
}

void HashRing::Candidates(uint64_t hash, size_t max, std::vector<int>* out) const {
  out->clear();
  if (points_.empty()) return;
  max = std::min(max, nodes_.size());
  size_t at = std::lower_bound(points_.begin(), points_.end(), std::make_pair(hash, -1)) -
              points_.begin();
  for (size_t step = 0; step < points_.size() && out->size() < max; ++step) {
    const int n = points_[(at + step) % points_.size()].second;
    if (std::find(out->begin(), out->end(), n) == out->end()) out->push_back(n);
  }
}

}  // namespace kvtier::router
