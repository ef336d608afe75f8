#pragma once
// HostArena: one large anonymous mapping made at start for all host-tier block payloads. Backed by
// 2 MiB hugepages where the system has them reserved (MAP_HUGETLB), else by normal pages with a
// transparent-hugepage hint; locked into RAM with mlock where permitted (a warning where not), so
// DMA engines and UCX can register it once. Owns the mapping; the bytes are shared by whoever
// holds offsets into it, and synchronisation of those bytes is the caller's business.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"

namespace kvtier {

struct HostArenaOptions {
  size_t bytes = size_t{1} << 30;  // Default: 1 GiB. Rounded up to a 2 MiB multiple.
  bool hugepages = true;           // Default: true. Try MAP_HUGETLB, then THP (madvise).
  bool lock = true;                // Default: true. mlock the arena; warn if not permitted.
  // Default: none (the anonymous mapping above). Where the memory comes from instead: for
  // example the UCX data plane, which allocates memory that readers on the same host can map.
  // Returns `bytes` of zero-filled memory that outlives the arena; `hugepages` is then the
  // provider's business.
  std::function<absl::StatusOr<uint8_t*>(size_t bytes)> provider;
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
  HostArena(uint8_t* base, size_t size, bool hugetlb, bool locked, bool owned)
      : base_(base), size_(size), hugetlb_(hugetlb), locked_(locked), owned_(owned) {}
  uint8_t* base_;
  size_t size_;
  bool hugetlb_;
  bool locked_;
  bool owned_;  // mapped here (else the provider's)
};

}  // namespace kvtier
