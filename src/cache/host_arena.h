#pragma once
// HostArena: one large anonymous mapping made at start for all host-tier block payloads. Backed by
// 2 MiB hugepages where the system has them reserved (MAP_HUGETLB), else by normal pages with a
// transparent-hugepage hint; locked into RAM with mlock where permitted (a warning where not), so
// DMA engines and UCX can register it once. Owns the mapping; the bytes are shared by whoever
// holds offsets into it, and synchronisation of those bytes is the caller's business.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace kvtier {

struct HostArenaOptions {
  size_t bytes = size_t{1} << 30;  // Default: 1 GiB. Rounded up to a 2 MiB multiple.
  bool hugepages = true;           // Default: true. Try MAP_HUGETLB, then THP (madvise).
  bool lock = true;                // Default: true. mlock the arena; warn if not permitted.
};

class HostArena {
 public:
  // INVALID_ARGUMENT for 0 bytes; RESOURCE_EXHAUSTED when the mapping cannot be made.
  static absl::StatusOr<std::unique_ptr<HostArena>> Create(const HostArenaOptions& options);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  uint8_t* base() const { return base_; }
  size_t size() const { return size_; }
  // True when the arena is backed by reserved hugetlb pages.
  bool hugetlb() const { return hugetlb_; }
  // True when mlock succeeded.
  bool locked() const { return locked_; }

 private:
  HostArena(uint8_t* base, size_t size, bool hugetlb, bool locked)
      : base_(base), size_(size), hugetlb_(hugetlb), locked_(locked) {}
  uint8_t* base_;
  size_t size_;
  bool hugetlb_;
  bool locked_;
};

}  // namespace kvtier
