#pragma once
// SlabAllocator: hands out offsets of fixed-size chunks inside a region (the host arena, or the
// HBM arena, whose memory the CPU cannot touch: so no metadata lives in the region itself). The
// region is cut into slabs of `slab_bytes`; a slab serves one chunk size (the request size rounded
// up to 64 bytes) and returns to the free pool when its last chunk is freed. A cache holds blocks
// of one or a few layouts, so a few exact-size classes waste almost nothing.
//
// Allocate and Free do no heap allocation except the first time a slab serves a class (its free
// list's capacity). Not thread-safe: the block store calls it under its own lock.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvtier {

class SlabAllocator {
 public:
  static constexpr size_t kAlignment = 64;

  // REQUIRES: slab_bytes > 0, slab_bytes % kAlignment == 0. A trailing partial slab is unused.
  SlabAllocator(size_t region_bytes, size_t slab_bytes);

  // The offset of a chunk of at least `bytes` bytes, or nullopt when no slab can serve it.
  // REQUIRES: 0 < bytes <= slab_bytes().
  std::optional<uint64_t> Allocate(size_t bytes);
  // REQUIRES: offset came from Allocate(bytes) and was not freed since.
  void Free(uint64_t offset, size_t bytes);

  // Bytes a request of `bytes` occupies.
  static size_t ChunkBytes(size_t bytes) {
    return (bytes + kAlignment - 1) / kAlignment * kAlignment;
  }
  size_t slab_bytes() const { return slab_bytes_; }
  size_t capacity_bytes() const { return slabs_.size() * slab_bytes_; }
  // Sum of the chunk sizes handed out and not freed.
  size_t used_bytes() const { return used_bytes_; }
  size_t free_slabs() const { return free_slabs_.size(); }
  // Bytes that allocations of `bytes` each could still get: the free chunks of their size class
  // and the free slabs.
  size_t AvailableBytes(size_t bytes) const;

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  struct Slab {
    uint32_t cls = kNone;                 // index into classes_, kNone when free
    uint32_t used = 0;                    // chunks handed out
    uint32_t bump = 0;                    // chunks never handed out start here
    uint32_t prev = kNone, next = kNone;  // in its class's list of slabs with room
    std::vector<uint32_t> freed;          // chunk indices returned by Free
  };
  struct SizeClass {
    size_t chunk_bytes;
    uint32_t chunks_per_slab;
    uint32_t with_room = kNone;  // head of the list of this class's slabs with a free chunk
    size_t free_chunks = 0;      // in this class's slabs
  };
  void LinkWithRoom(uint32_t slab_index);
  void UnlinkWithRoom(uint32_t slab_index);

  size_t slab_bytes_;
  std::vector<Slab> slabs_;
  std::vector<uint32_t> free_slabs_;
  std::vector<SizeClass> classes_;
  absl::flat_hash_map<size_t, uint32_t> class_by_size_;
  size_t used_bytes_ = 0;
};

}  // namespace kvtier
