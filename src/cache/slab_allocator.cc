#include "cache/slab_allocator.h"

#include <cassert>

namespace kvtier {

SlabAllocator::SlabAllocator(size_t region_bytes, size_t slab_bytes) : slab_bytes_(slab_bytes) {
  assert(slab_bytes > 0 && slab_bytes % kAlignment == 0);
  const size_t n = region_bytes / slab_bytes;
  slabs_.resize(n);
  free_slabs_.reserve(n);
  for (size_t i = n; i-- > 0;) free_slabs_.push_back(static_cast<uint32_t>(i));
}

void SlabAllocator::LinkWithRoom(uint32_t s) {
  SizeClass& c = classes_[slabs_[s].cls];
  slabs_[s].prev = kNone;
  slabs_[s].next = c.with_room;
  if (c.with_room != kNone) slabs_[c.with_room].prev = s;
  c.with_room = s;
}

void SlabAllocator::UnlinkWithRoom(uint32_t s) {
  Slab& slab = slabs_[s];
  if (slab.prev != kNone) {
    slabs_[slab.prev].next = slab.next;
  } else {
    classes_[slab.cls].with_room = slab.next;
  }
  if (slab.next != kNone) slabs_[slab.next].prev = slab.prev;
  slab.prev = slab.next = kNone;
}

std::optional<uint64_t> SlabAllocator::Allocate(size_t bytes) {
  const size_t chunk = ChunkBytes(bytes);
  if (bytes == 0 || chunk > slab_bytes_) return std::nullopt;
  auto it = class_by_size_.find(chunk);
  uint32_t cls;
  if (it == class_by_size_.end()) {
    cls = static_cast<uint32_t>(classes_.size());
    classes_.push_back(SizeClass{chunk, static_cast<uint32_t>(slab_bytes_ / chunk)});
    class_by_size_.emplace(chunk, cls);
  } else {
    cls = it->second;
  }
  SizeClass& c = classes_[cls];
  uint32_t s = c.with_room;
  if (s == kNone) {
    if (free_slabs_.empty()) return std::nullopt;
    s = free_slabs_.back();
    free_slabs_.pop_back();
    Slab& slab = slabs_[s];
    slab.cls = cls;
    slab.used = 0;
    slab.bump = 0;
    slab.freed.clear();
    slab.freed.reserve(c.chunks_per_slab);
    c.free_chunks += c.chunks_per_slab;
    LinkWithRoom(s);
  }
  Slab& slab = slabs_[s];
  uint32_t index;
  if (!slab.freed.empty()) {
    index = slab.freed.back();
    slab.freed.pop_back();
  } else {
    index = slab.bump++;
  }
  ++slab.used;
  --c.free_chunks;
  if (slab.used == c.chunks_per_slab) UnlinkWithRoom(s);
  used_bytes_ += chunk;
  return uint64_t{s} * slab_bytes_ + uint64_t{index} * c.chunk_bytes;
}

void SlabAllocator::Free(uint64_t offset, size_t bytes) {
  const uint32_t s = static_cast<uint32_t>(offset / slab_bytes_);
  Slab& slab = slabs_[s];
  SizeClass& c = classes_[slab.cls];
  assert(c.chunk_bytes == ChunkBytes(bytes));
  (void)bytes;
  const bool was_full = slab.used == c.chunks_per_slab;
  --slab.used;
  ++c.free_chunks;
  used_bytes_ -= c.chunk_bytes;
  if (slab.used == 0) {
    c.free_chunks -= c.chunks_per_slab;
    if (!was_full) UnlinkWithRoom(s);
    slab.cls = kNone;
    free_slabs_.push_back(s);
    return;
  }
  slab.freed.push_back(static_cast<uint32_t>((offset % slab_bytes_) / c.chunk_bytes));
  if (was_full) LinkWithRoom(s);
}

size_t SlabAllocator::AvailableBytes(size_t bytes) const {
  const size_t chunk = ChunkBytes(bytes);
  if (bytes == 0 || chunk > slab_bytes_) return 0;
  size_t in_class = 0;
  if (auto it = class_by_size_.find(chunk); it != class_by_size_.end()) {
    in_class = classes_[it->second].free_chunks * chunk;
  }
  return in_class + free_slabs_.size() * (slab_bytes_ / chunk) * chunk;
}

}  // namespace kvtier
