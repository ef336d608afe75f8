#include "cache/host_arena.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::Create(const HostArenaOptions& options) {
  if (options.bytes == 0) return absl::InvalidArgumentError("host arena: bytes must be > 0");
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t size = (options.bytes + kHuge - 1) / kHuge * kHuge;
  void* p = MAP_FAILED;
  bool hugetlb = false;
  if (options.provider) {
    auto provided = options.provider(size);
    if (!provided.ok()) return provided.status();
    p = *provided;
  } else if (options.hugepages) {
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1,
             0);
    hugetlb = p != MAP_FAILED;
  }
  if (p == MAP_FAILED) {
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("host arena: mmap of ", size, " bytes failed: ", std::strerror(errno)));
    }
    // No reserved hugepages: ask for transparent ones (ignored where THP is off).
    if (options.hugepages) madvise(p, size, MADV_HUGEPAGE);
  }
  bool locked = false;
  if (options.lock) {
    locked = mlock(p, size) == 0;
    if (!locked) {
      spdlog::warn(
          "host arena: mlock of {} MiB failed ({}); blocks may be swapped out and DMA "
          "registration will pin pages itself. Raise RLIMIT_MEMLOCK (ulimit -l) or grant "
          "CAP_IPC_LOCK.",
          size >> 20, std::strerror(errno));
    }
  }
  if (!locked) {
    // Fault the pages in now rather than on the first put.
    madvise(p, size, MADV_WILLNEED);
  }
  return std::unique_ptr<HostArena>(
      new HostArena(static_cast<uint8_t*>(p), size, hugetlb, locked, !options.provider));
}

HostArena::~HostArena() {
  if (owned_) munmap(base_, size_);
}

}  // namespace kvtier
