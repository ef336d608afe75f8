#pragma once
// HugePageAllocator: a standard allocator whose large blocks (2 MiB and up) are 2 MiB aligned and
// marked MADV_HUGEPAGE, so that a big hash table is mapped by huge pages where transparent huge
// pages are on "madvise" (Debian's default) or "always". A table of millions of keys probed at
// random takes a TLB miss on almost every probe with 4 KiB pages; in a virtual machine each of
// those walks two page tables and costs more than the cache miss itself. Smaller blocks come
// from operator new. Stateless: every instance is interchangeable.

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>

namespace kvtier {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

template <typename T>
class HugePageAllocator {
 public:
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}  // NOLINT: rebinding, as allocators do

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < kHugePageBytes) return static_cast<T*>(::operator new(bytes));
    const size_t rounded = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    void* p = std::aligned_alloc(kHugePageBytes, rounded);
    if (p == nullptr) throw std::bad_alloc();
    (void)madvise(p, rounded, MADV_HUGEPAGE);  // a hint: 4 KiB pages still work
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < kHugePageBytes) {
      ::operator delete(p);
    } else {
      std::free(p);
    }
  }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
};

}  // namespace kvtier
