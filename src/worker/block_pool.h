#pragma once
// BlockPool: the worker's cache of fetched KV bytes, so that a prefix read once is not fetched
// again. One unit per (block, layer) holds that layer's bytes; a unit is cut into slices (GQA:
// one per K|V and kv_head; MLA: one, the whole layer) that are fetched separately, so a
// head-sparse request fills only the slices it reads. Least recently used units go first once
// the pool passes its capacity. Thread-safe.
//
// Several requests may want the same slice at once: the first claims it (pending) and fetches
// it, the others wait for it instead of fetching it again.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/block_key.h"

namespace kvtier::worker {

// Where a BlockPool's unit buffers come from: ordinary memory by default; on a GPU machine
// page-locked memory, which copies to the GPU run from asynchronously. `alloc` may return nullptr
// (then ordinary memory is used for that buffer).
struct UnitMemory {
  void* (*alloc)(size_t bytes) = nullptr;
  void (*free)(void* p) = nullptr;
};

struct UnitBufferFree {
  void (*free)(void*) = nullptr;  // nullptr: delete[]
  void operator()(uint8_t* p) const {
    if (free != nullptr) {
      free(p);
    } else {
      delete[] p;
    }
  }
};

class BlockPool {
 public:
  using Memory = UnitMemory;
  using Buffer = std::unique_ptr<uint8_t[], UnitBufferFree>;

  // Buffers of units that are gone, kept (up to a cap) for the next units of the same size: a
  // request's blocks land in memory that is already mapped, instead of faulting in fresh pages
  // (which costs more than the copy itself on some machines).
  class Spares {
   public:
    Spares(uint64_t capacity_bytes, Memory memory) : capacity_(capacity_bytes), memory_(memory) {}
    Buffer Take(uint64_t bytes);
    void Give(Buffer buffer, uint64_t bytes);
    uint64_t bytes() const;

   private:
    const uint64_t capacity_;
    const Memory memory_;
    mutable std::mutex mu_;
    absl::flat_hash_map<uint64_t, std::vector<Buffer>> free_;  // by size
    uint64_t bytes_ = 0;
  };

  struct Unit {
    Unit(uint64_t bytes, uint32_t slices, uint64_t serial, std::shared_ptr<Spares> spares)
        : data(spares->Take(bytes)),
          size(bytes),
          serial(serial),
          state(slices, kAbsent),
          spares_(spares) {}
    ~Unit() { spares_->Give(std::move(data), size); }
    Unit(const Unit&) = delete;
    Unit& operator=(const Unit&) = delete;
    // A slice's bytes once it is present; not initialised before (slices a request skips are
    // never read).
    Buffer data;
    uint64_t size;
    // Names this unit's bytes for copies kept elsewhere (GPU memory): serial is unique in the
    // pool's life, version grows each time slices arrive.
    const uint64_t serial;
    std::atomic<uint64_t> version{0};
    enum : uint8_t { kAbsent, kPending, kPresent };
    std::vector<uint8_t> state;  // per slice; guarded by the pool's mutex

   private:
    std::shared_ptr<Spares> spares_;
  };

  // What a request needs of one unit.
  struct Need {
    BlockKey key;
    uint32_t layer = 0;
    uint64_t unit_bytes = 0;  // the layer's bytes in a block
    uint32_t slices = 1;      // equal parts of the unit
    std::vector<uint32_t> wanted;
  };

  // The unit (held: it stays valid while the claim lives, evicted or not), the slices this
  // caller must fetch (claimed), and those another request is fetching.
  struct Claim {
    std::shared_ptr<Unit> unit;
    std::vector<uint32_t> fetch;
    std::vector<uint32_t> wait;
    uint64_t present_bytes = 0;  // wanted bytes that were already there
  };

  // capacity_bytes: units kept for later requests. spare_bytes: buffers kept for reuse beyond
  // them (the memory of requests' blocks that the pool does not keep).
  explicit BlockPool(uint64_t capacity_bytes, uint64_t spare_bytes = 0, UnitMemory memory = {})
      : capacity_(capacity_bytes), spares_(std::make_shared<Spares>(spare_bytes, memory)) {}

  // One claim per need, in order.
  std::vector<Claim> Acquire(std::span<const Need> needs);
  // After this caller's fetch: its claimed slices become present (ok) or absent again.
  void Settle(std::span<const Claim> claims, bool ok);
  // Waits until the slices others were fetching are settled; false on timeout. Slices that
  // ended absent (the other fetch failed) are moved from wait to fetch, and claimed: the caller
  // fetches and Settles them (on false too, Settle(claims, false) gives them back).
  bool AwaitOthers(std::span<Claim> claims, std::chrono::steady_clock::time_point deadline);

  struct Stats {
    uint64_t bytes = 0;  // of the units the pool holds
    uint64_t units = 0;
    uint64_t evictions = 0;
    uint64_t spare_bytes = 0;  // kept for reuse
  };
  Stats stats() const;

 private:
  struct Id {
    BlockKey key;
    uint32_t layer;
    friend bool operator==(const Id&, const Id&) = default;
    template <typename H>
    friend H AbslHashValue(H h, const Id& id) {
      return H::combine(std::move(h), id.key, id.layer);
    }
  };
  struct Slot {
    std::shared_ptr<Unit> unit;
    std::list<Id>::iterator lru;
  };

  const uint64_t capacity_;
  const std::shared_ptr<Spares> spares_;
  mutable std::mutex mu_;
  std::condition_variable settled_;
  absl::flat_hash_map<Id, Slot> units_;  // guarded by mu_
  std::list<Id> lru_;                    // most recent first; guarded by mu_
  Stats stats_;                          // guarded by mu_
  uint64_t units_made_ = 0;              // guarded by mu_
};

}  // namespace kvtier::worker
