#include "router/cache_index.h"

namespace kvtier::router {

uint32_t CacheIndex::AddNode() {
  MutexLock lock(&mu_);
  for (uint32_t id = 0; id < used_ids_.size(); ++id) {
    if (!used_ids_[id]) {
      used_ids_[id] = true;
      return id;
    }
  }
  used_ids_.push_back(true);
  return static_cast<uint32_t>(used_ids_.size() - 1);
}

void CacheIndex::RemoveNode(uint32_t id) {
  MutexLock lock(&mu_);
  ForgetLocked(id);
  if (id < used_ids_.size()) used_ids_[id] = false;
}

void CacheIndex::Stored(uint32_t id, std::span<const BlockKey> keys) {
  MutexLock lock(&mu_);
  // An event's keys are scattered over the index: ask for all their cache lines first, so that
  // the misses overlap.
  for (const BlockKey& key : keys) index_.prefetch(key);
  for (const BlockKey& key : keys) {
    if (index_.size() >= max_keys_ && !index_.contains(key)) {
      ++dropped_;
      continue;
    }
    Holders& h = index_.try_emplace(key).first->second;
    if (std::find(h.begin(), h.end(), id) == h.end()) h.push_back(id);
  }
}

void CacheIndex::Removed(uint32_t id, std::span<const BlockKey> keys) {
  MutexLock lock(&mu_);
  for (const BlockKey& key : keys) index_.prefetch(key);
  for (const BlockKey& key : keys) {
    auto it = index_.find(key);
    if (it == index_.end()) continue;
    Holders& h = it->second;
    auto at = std::find(h.begin(), h.end(), id);
    if (at == h.end()) continue;
    h.erase(at);
    if (h.empty()) index_.erase(it);
  }
}

void CacheIndex::Forget(uint32_t id) {
  MutexLock lock(&mu_);
  ForgetLocked(id);
}

void CacheIndex::ForgetLocked(uint32_t id) {
  absl::erase_if(index_, [id](auto& entry) {
    Holders& h = entry.second;
    auto at = std::find(h.begin(), h.end(), id);
    if (at != h.end()) h.erase(at);
    return h.empty();
  });
}

size_t CacheIndex::keys() const {
  MutexLock lock(&mu_);
  return index_.size();
}

uint64_t CacheIndex::dropped() const {
  MutexLock lock(&mu_);
  return dropped_;
}

}  // namespace kvtier::router
