#pragma once
// What store_torture (a child process that drives a BlockStore until it is killed) and
// store_crash_test (its parent) share: the stores' shapes, the keys, and the lines the child
// prints on stdout, one event each, in the order the events happened:
//
//   READY                 the store is open; work starts
//   PUT n / ACK n         a durable put of block n starts / returned OK
//   PLAIN n / PLAINOK n   a plain (cache) put of block n starts / returned OK
//   PUTFULL n CODE        a put of block n was refused for room (RESOURCE_EXHAUSTED, UNAVAILABLE)
//   DELETING n / DEL n R  a delete of block n starts / returned R: OK or NOT_FOUND
//   STORED n / GONE n     StoreOptions::on_block_event: block n became visible / left the store
//   FLUSHED n             block n was demoted to NVMe before a Flush() that returned OK
//   STATS k=v ...         the store's counters (every 50 ms in the campaign)
//   STALL path            the stall hook holds a blob append to `path` (SlowFlashFs)
//   DELETED, DONE         progress of a case; COMPACTIONS k: the store has done k
//   NOSTALL, NOEVICT      the case never reached its target (the child then exits)
//   BAD n / ERR ...       a wrong byte was read / an unexpected store error (the child then exits)
//
// Block n is always testing::TestBlock(n, size) under testing::TestKey(n).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "cache/block_store.h"
#include "testing/test_util.h"

namespace kvtier::torture {

// The random campaign: a host tier of 32 blocks, so demotions never stop, and flash for 128
// blocks, fewer than the key range, so flash evicts and blob files die and are compacted.
constexpr size_t kCampaignBlock = 64 * 1024;
constexpr uint64_t kCampaignNvmeBytes = uint64_t{8} << 20;
// The demotion case: durable blocks, then plain puts that overflow a host tier of 32 blocks.
constexpr size_t kDemoteBlock = 64 * 1024;
// The compaction case: blob files of 4 MiB (the smallest) hold 16 blocks each.
constexpr size_t kCompactBlock = 256 * 1024;
constexpr uint64_t kCompactBlocks = 80;  // 5 blob files
// Flash of the stall cases, and of every store the parent opens to check one: large enough that
// nothing is evicted, small enough that blob files are 4 MiB.
constexpr uint64_t kCheckNvmeBytes = uint64_t{64} << 20;

enum class Mode { kCampaign, kDemote, kCompact };

inline size_t BlockBytes(Mode mode) {
  switch (mode) {
    case Mode::kCampaign:
      return kCampaignBlock;
    case Mode::kDemote:
      return kDemoteBlock;
    case Mode::kCompact:
      return kCompactBlock;
  }
  return 0;
}

// The store the child runs in `mode`.
inline StoreOptions ChildOptions(Mode mode, const std::string& nvme_dir) {
  StoreOptions o;
  o.max_block_bytes = BlockBytes(mode);
  o.host_bytes = (mode == Mode::kCompact ? 16 : 32) * o.max_block_bytes;
  o.host_hugepages = false;
  o.host_lock = false;
  o.nvme_path = nvme_dir;
  o.nvme_bytes = mode == Mode::kCampaign ? kCampaignNvmeBytes : kCheckNvmeBytes;
  o.nvme_admission = NvmeAdmission::kAll;
  return o;
}

// The store the parent opens to check what a killed child left: the same, with flash that
// evicts nothing (so every block recovered is still there to be read).
inline StoreOptions CheckOptions(Mode mode, const std::string& nvme_dir) {
  StoreOptions o = ChildOptions(mode, nvme_dir);
  o.nvme_bytes = kCheckNvmeBytes;
  return o;
}

// Block n's parent: chains of 8.
inline BlockKey ParentOf(uint64_t n) { return n % 8 == 0 ? BlockKey{} : testing::TestKey(n - 1); }

// n for testing::TestKey(n), or nullopt for another key.
inline std::optional<uint64_t> KeyNumber(const BlockKey& key) {
  const uint64_t n = (key.hi ^ 0x6b76000000000000ULL) - 1;
  if (testing::TestKey(n) != key) return std::nullopt;
  return n;
}

}  // namespace kvtier::torture
