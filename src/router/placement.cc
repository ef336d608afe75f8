#include "router/placement.h"

#include <algorithm>
#include <bit>

namespace kvtier::router {

PlacementMemory::PlacementMemory(size_t entries)
    : entries_(std::bit_ceil(std::max<size_t>(entries, 64))),
      set_mask_(entries_.size() / kWays - 1) {}

uint64_t PlacementMemory::Tag(const BlockKey& key) {
  // Keys are uniform hashes already; mix both words and keep 0 for "empty".
  const uint64_t h = (key.hi ^ (key.lo * 0x9E3779B97F4A7C15ULL)) * 0xD6E8FEB86659FD93ULL;
  return (h ^ (h >> 32)) | 1;
}

PlacementMemory::Entry* PlacementMemory::Set(uint64_t tag) {
  return &entries_[((tag >> 17) & set_mask_) * kWays];
}

const PlacementMemory::Entry* PlacementMemory::Set(uint64_t tag) const {
  return &entries_[((tag >> 17) & set_mask_) * kWays];
}

int64_t PlacementMemory::Peek(const BlockKey& key) const {
  const uint64_t tag = Tag(key);
  const Entry* set = Set(tag);
  for (size_t w = 0; w < kWays; ++w) {
    if (set[w].tag == tag) return set[w].node;
  }
  return -1;
}

int64_t PlacementMemory::Find(const BlockKey& key) {
  const uint64_t tag = Tag(key);
  Entry* set = Set(tag);
  for (size_t w = 0; w < kWays; ++w) {
    if (set[w].tag == tag) {
      set[w].used = ++clock_;
      return set[w].node;
    }
  }
  return -1;
}

void PlacementMemory::Remember(const BlockKey& key, uint32_t node_id) {
  const uint64_t tag = Tag(key);
  Entry* set = Set(tag);
  const auto age = [&](const Entry& e) { return static_cast<uint32_t>(clock_ - e.used); };
  Entry* victim = nullptr;  // an empty way, else the least recently used
  for (size_t w = 0; w < kWays; ++w) {
    Entry& e = set[w];
    if (e.tag == tag) {
      e.node = node_id;
      e.used = ++clock_;
      return;
    }
    if (victim == nullptr || (victim->tag != 0 && (e.tag == 0 || age(e) > age(*victim)))) {
      victim = &e;
    }
  }
  if (victim->tag == 0) ++live_;
  *victim = Entry{tag, node_id, ++clock_};
}

}  // namespace kvtier::router
