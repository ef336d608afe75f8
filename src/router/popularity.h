#pragma once
// PrefixPopularity: how often each prefix key occurred among recent requests, in bounded memory.
// A count-min sketch (4 rows) whose counters and request total are halved every `window`
// requests, so shares follow the recent traffic. A key's estimate is its smallest counter less
// the mean count that other keys put in a counter (count-mean-min): a plain count-min estimate
// grows with every key added, so long prompts whose keys all go in (every one looked hot) would
// make every key look hot, and each request would then walk and add its whole prompt.

#include <cstdint>
#include <vector>

#include "common/block_key.h"

namespace kvtier::router {

class PrefixPopularity {
 public:
  // `width` counters per row (rounded up to a power of two); memory is 16 * width bytes.
  explicit PrefixPopularity(size_t width = 1 << 14, uint32_t window = 4096);

  // Counts one request (call once per request, before or after its keys).
  void AddRequest();
  // Counts `key` once for the current request.
  void Add(const BlockKey& key);
  // Estimated fraction of recent requests that contained `key` (0 before any request).
  double Share(const BlockKey& key) const;
  // Add, then Share, in one pass over the counters; `*seen`: whether the key's smallest
  // counter was nonzero before (a key never added is unseen; collisions can hide that it is new).
  double AddAndShare(const BlockKey& key, bool* seen);
  // Add, then whether its share is over `share` (AddAndShare(key, seen) > share, without the
  // divisions: the routing depth asks this of every key it walks).
  bool AddAndOver(const BlockKey& key, double share, bool* seen);
  size_t memory_bytes() const { return counters_.size() * sizeof(uint32_t); }

 private:
  uint32_t Estimate(const BlockKey& key) const;
  uint32_t AddAndEstimate(const BlockKey& key);
  double ShareOf(uint32_t estimate) const;
  size_t Slot(int row, const BlockKey& key) const;
  size_t mask_;
  double inverse_width_;  // 1 / (mask_ + 1)
  uint32_t window_;
  uint32_t since_decay_ = 0;
  double requests_ = 0;
  double adds_ = 0;  // keys added (decayed with the counters): a row's sum
  std::vector<uint32_t> counters_;  // 4 rows of mask_ + 1
};

}  // namespace kvtier::router
