#pragma once
// LeaseTable: the store's outstanding leases (which blocks each pins, until when), with the
// expiry order. Pinning itself, and the bytes pinned, are the store's (Entry::leases); this only
// keeps the records. Not thread-safe: the store calls it under its policy lock.

#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvtier::cache_internal {

class LeaseTable {
 public:
  struct Lease {
    int64_t expires_at_us = 0;
    std::vector<uint32_t> handles;
  };

  // Records a lease; returns its id (never 0, never reused).
  uint64_t Add(Lease lease);
  // Removes and returns the lease, or nullopt if unknown (never granted, released, expired).
  std::optional<Lease> Take(uint64_t id);
  // Removes the leases that expire at or before `now_us` and calls `end` for each.
  size_t TakeExpired(int64_t now_us, const std::function<void(Lease&)>& end);

  size_t active() const { return leases_.size(); }

 private:
  absl::flat_hash_map<uint64_t, Lease> leases_;
  std::priority_queue<std::pair<int64_t, uint64_t>, std::vector<std::pair<int64_t, uint64_t>>,
                      std::greater<>>
      expiry_;
  uint64_t next_id_ = 1;
};

}  // namespace kvtier::cache_internal
