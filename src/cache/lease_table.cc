#include "cache/lease_table.h"

namespace kvtier::cache_internal {

uint64_t LeaseTable::Add(Lease lease) {
  const uint64_t id = next_id_++;
  expiry_.emplace(lease.expires_at_us, id);
  leases_.emplace(id, std::move(lease));
  return id;
}

std::optional<LeaseTable::Lease> LeaseTable::Take(uint64_t id) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return std::nullopt;
  Lease lease = std::move(it->second);
  leases_.erase(it);
  return lease;
}

size_t LeaseTable::TakeExpired(int64_t now_us, const std::function<void(Lease&)>& end) {
  size_t n = 0;
  while (!expiry_.empty() && expiry_.top().first <= now_us) {
    const uint64_t id = expiry_.top().second;
    expiry_.pop();
    std::optional<Lease> lease = Take(id);
    if (!lease.has_value()) continue;  // released earlier
    end(*lease);
    ++n;
  }
  return n;
}

}  // namespace kvtier::cache_internal
