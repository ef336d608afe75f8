#pragma once
// BlockEvents: the daemon's recent "block stored" / "block removed" events, in order, for
// CacheService.WatchBlocks (kvtier-router's cache-aware index). A ring of the last `capacity`
// events: a reader that falls further behind is told it lost some (and starts over). Publish is
// quick and never blocks on readers: the store calls it with its lock held. Thread-safe.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/block_key.h"

namespace kvtier::server {

class BlockEvents {
 public:
  explicit BlockEvents(size_t capacity = size_t{1} << 16);

  void Publish(const BlockKey& key, uint16_t tenant, bool stored);

  struct Batch {
    std::string events;  // 17 bytes an event: the key (16 bytes), then 1 stored / 0 removed
    bool lost = false;   // events between the cursor and the oldest one kept were dropped
    uint64_t next = 0;   // the cursor to read from next
  };
  // Up to `max` events from sequence number `cursor` on (of `tenant` only, when given), waiting
  // up to `wait` for the first.
  Batch Read(uint64_t cursor, size_t max, std::chrono::milliseconds wait,
             std::optional<uint16_t> tenant = std::nullopt);
  // The sequence number the next event will get (a new reader starts here).
  uint64_t head();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  struct Event {
    BlockKey key;
    uint16_t tenant = 0;
    bool stored = false;
  };
  std::vector<Event> ring_;
  uint64_t next_ = 0;  // events published so far
};

}  // namespace kvtier::server
