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
  for (const BlockKey& key : keys) {
    auto it = index_.find(key);
    if (it == index_.end()) {
      if (index_.size() >= max_keys_) {
        ++dropped_;
        continue;
      }
      it = index_.emplace(key, Holders()).first;
    }
    Holders& h = it->second;
    if (std::find(h.begin(), h.end(), id) == h.end()) h.push_back(id);
  }
}

void CacheIndex::Removed(uint32_t id, std::span<const BlockKey> keys) {
  MutexLock lock(&mu_);
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
