#include "worker/block_pool.h"

namespace kvtier::worker {

std::vector<BlockPool::Claim> BlockPool::Acquire(std::span<const Need> needs) {
  std::vector<Claim> claims(needs.size());
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < needs.size(); ++i) {
    const Need& n = needs[i];
    const Id id{n.key, n.layer};
    auto it = units_.find(id);
    if (it != units_.end() && it->second.unit->size != n.unit_bytes) {
      // The same key read with another layout: never mix the two.
      stats_.bytes -= it->second.unit->size;
      --stats_.units;
      lru_.erase(it->second.lru);
      units_.erase(it);
      it = units_.end();
    }
    if (it == units_.end()) {
      lru_.push_front(id);
      it = units_
               .emplace(id,
                        Slot{std::make_shared<Unit>(n.unit_bytes, n.slices, ++units_made_, spares_),
                             lru_.begin()})
               .first;
      stats_.bytes += n.unit_bytes;
      ++stats_.units;
    } else {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    }
    Claim& c = claims[i];
    c.unit = it->second.unit;
    const uint64_t slice_bytes = n.unit_bytes / n.slices;
    for (uint32_t s : n.wanted) {
      uint8_t& st = c.unit->state[s];
      if (st == Unit::kPresent) {
        c.present_bytes += slice_bytes;
      } else if (st == Unit::kPending) {
        c.wait.push_back(s);
      } else {
        st = Unit::kPending;
        c.fetch.push_back(s);
      }
    }
  }
  // Over capacity: drop the least recent units (those in use live on in their claims).
  while (stats_.bytes > capacity_ && !lru_.empty()) {
    auto it = units_.find(lru_.back());
    stats_.bytes -= it->second.unit->size;
    --stats_.units;
    ++stats_.evictions;
    units_.erase(it);
    lru_.pop_back();
  }
  return claims;
}

void BlockPool::Settle(std::span<const Claim> claims, bool ok) {
  {
    std::lock_guard lock(mu_);
    for (const Claim& c : claims) {
      for (uint32_t s : c.fetch) c.unit->state[s] = ok ? Unit::kPresent : Unit::kAbsent;
      if (ok && !c.fetch.empty()) c.unit->version.fetch_add(1);
    }
  }
  settled_.notify_all();
}

bool BlockPool::AwaitOthers(std::span<Claim> claims,
                            std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  for (Claim& c : claims) {
    c.fetch.clear();
    for (uint32_t s : c.wait) {
      if (!settled_.wait_until(lock, deadline,
                               [&] { return c.unit->state[s] != Unit::kPending; })) {
        return false;
      }
      if (c.unit->state[s] == Unit::kAbsent) {
        c.unit->state[s] = Unit::kPending;
        c.fetch.push_back(s);
      } else {
        c.present_bytes += c.unit->size / c.unit->state.size();
      }
    }
    c.wait.clear();
  }
  return true;
}

BlockPool::Stats BlockPool::stats() const {
  Stats s;
  {
    std::lock_guard lock(mu_);
    s = stats_;
  }
  s.spare_bytes = spares_->bytes();
  return s;
}

BlockPool::Buffer BlockPool::Spares::Take(uint64_t bytes) {
  {
    std::lock_guard lock(mu_);
    auto it = free_.find(bytes);
    if (it != free_.end() && !it->second.empty()) {
      Buffer b = std::move(it->second.back());
      it->second.pop_back();
      bytes_ -= bytes;
      return b;
    }
  }
  if (memory_.alloc != nullptr) {
    if (void* p = memory_.alloc(bytes); p != nullptr) {
      return Buffer(static_cast<uint8_t*>(p), UnitBufferFree{memory_.free});
    }
  }
  return Buffer(new uint8_t[bytes]);
}

void BlockPool::Spares::Give(Buffer buffer, uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (bytes_ + bytes > capacity_) return;  // freed
  free_[bytes].push_back(std::move(buffer));
  bytes_ += bytes;
}

uint64_t BlockPool::Spares::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

}  // namespace kvtier::worker
