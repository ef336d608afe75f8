#include "server/block_events.h"

namespace kvtier::server {

BlockEvents::BlockEvents(size_t capacity) : ring_(std::max<size_t>(capacity, 16)) {}

void BlockEvents::Publish(const BlockKey& key, uint16_t tenant, bool stored) {
  {
    std::lock_guard lock(mu_);
    ring_[next_ % ring_.size()] = {key, tenant, stored};
    ++next_;
  }
  cv_.notify_all();
}

uint64_t BlockEvents::head() {
  std::lock_guard lock(mu_);
  return next_;
}

BlockEvents::Batch BlockEvents::Read(uint64_t cursor, size_t max, std::chrono::milliseconds wait,
                                     std::optional<uint16_t> tenant) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, wait, [&] { return next_ > cursor; });
  Batch b;
  const uint64_t oldest = next_ > ring_.size() ? next_ - ring_.size() : 0;
  if (cursor < oldest) {
    b.lost = true;
    cursor = oldest;
  }
  const uint64_t end = std::min<uint64_t>(next_, cursor + max);
  b.events.resize((end - cursor) * (BlockKey::kBytes + 1));
  auto* out = reinterpret_cast<uint8_t*>(b.events.data());
  for (uint64_t i = cursor; i < end; ++i) {
    const Event& e = ring_[i % ring_.size()];
    if (tenant.has_value() && e.tenant != *tenant) continue;
    e.key.ToBytes(out);
    out[BlockKey::kBytes] = e.stored ? 1 : 0;
    out += BlockKey::kBytes + 1;
  }
  b.events.resize(out - reinterpret_cast<uint8_t*>(b.events.data()));
  b.next = end;
  return b;
}

}  // namespace kvtier::server
