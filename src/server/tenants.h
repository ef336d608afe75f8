#pragma once
// Tenants: the daemon's numbering of tenant names, and what each tenant has resident in the
// store. The number is what the store keeps with each block (PutOptions::tenant) and tells back
// in its block events; from those events Tenants counts each tenant's resident blocks and bytes,
// and keeps the events' tenant so that WatchBlocks can show a tenant its own events only.
//
// Numbers are bounded: 1..kMaxTenants-1 go to the first names seen (with auth on, the token
// file's tenants, registered at start); names beyond them share kOther, as do blocks recovered
// from NVMe (their put's tenant is not stored with them). Thread-safe; Resident* and OnBlockEvent
// take no lock.

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cache/store_options.h"
#include "common/mutex.h"

namespace kvtier::server {

class Tenants {
 public:
  static constexpr uint16_t kOther = 0;
  static constexpr size_t kMaxTenants = 4096;
  static constexpr std::string_view kOtherName = "_other";

  // The tenant's number, given one if it has none and numbers are left (else kOther).
  uint16_t Id(std::string_view name);
  // The tenant's number, if it has one.
  std::optional<uint16_t> Find(std::string_view name) const;
  // The name numbered `id` (kOtherName for kOther).
  std::string Name(uint16_t id) const;
  // Every numbered name with its number, kOther first.
  std::vector<std::pair<uint16_t, std::string>> All() const;

  // Called with each of the store's block events.
  void OnBlockEvent(const BlockEvent& event);
  // Blocks the store recovered from NVMe at Open (they raise no events): counted as kOther's.
  void AddRecovered(uint64_t blocks, uint64_t bytes);
  uint64_t resident_bytes(uint16_t id) const { return Get(bytes_, id); }
  uint64_t resident_blocks(uint16_t id) const { return Get(blocks_, id); }

 private:
  using Counts = std::array<std::atomic<int64_t>, kMaxTenants>;
  static uint64_t Get(const Counts& c, uint16_t id);

  mutable Mutex mu_;
  absl::flat_hash_map<std::string, uint16_t> ids_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> names_ ABSL_GUARDED_BY(mu_) = {std::string(kOtherName)};
  Counts bytes_{};
  Counts blocks_{};
};

}  // namespace kvtier::server
