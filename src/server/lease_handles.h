#pragma once
// LeaseHandles: the lease ids clients see. Each is 64 random bits from OpenSSL's CSPRNG, bound to
// the tenant that took the lease, and maps to the store's own (sequential) lease id. A handle
// names a lease only under its tenant's name: there is no arithmetic to undo and no neighbour to
// step to, so one tenant cannot end another's lease. Served reads (ucx.mode served) name a handle
// without a tenant: it is given only to the tenant that took the lease, and it covers only the
// host-arena ranges of that lease's blocks.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cache/block_store.h"
#include "common/mutex.h"

namespace kvtier::server {

class LeaseHandles {
 public:
  struct Lease {
    uint64_t id = 0;     // the store's
    uint64_t bytes = 0;  // of the leased blocks
    int64_t expires_at_us = 0;
    std::string tenant;
    // The leased blocks as the lease found them (key, tier, location, size, generation), sorted
    // by tier, then location (SortedByPlace): the host-tier ones are what a served read under
    // this lease may read.
    std::vector<BlockInfo> blocks;
  };
  // A new handle for `lease`, which lapses at its expires_at_us (on the store's clock; `now_us` is
  // that clock now). Handles of lapsed leases are dropped as new ones are issued, in amortized
  // constant time.
  uint64_t Issue(Lease lease, int64_t now_us);
  // Issue, unless the tenant's live leases would then pass `tenant_limit` bytes: then nullopt,
  // with what the tenant holds in `*held` and what this lease would add in `*adding` (the bytes
  // of its blocks that none of the tenant's live leases holds yet).
  std::optional<uint64_t> IssueWithin(Lease lease, int64_t now_us, uint64_t tenant_limit,
                                      uint64_t* held, uint64_t* adding);
  // Takes out the handle and returns its lease if `tenant` took it; nullopt for a handle that is
  // unknown, dropped, or another tenant's (which is then left in place).
  std::optional<Lease> Take(uint64_t handle, std::string_view tenant);
  // The lease of `handle` if it has not lapsed (`now_us` on the store's clock), whoever took it;
  // nullopt for a handle that is unknown, taken or lapsed. The handle stays.
  std::optional<Lease> Find(uint64_t handle, int64_t now_us) const;
  size_t size() const;
  // Bytes of the blocks under `tenant`'s leases that have not lapsed by `now_us`. A block under
  // several of the tenant's leases counts once, until the last of them ends.
  uint64_t TenantBytes(std::string_view tenant, int64_t now_us);

 private:
  // What one tenant's live leases hold: each block's lease count and size (as first leased).
  struct Held {
    uint32_t leases = 0;
    uint32_t size = 0;
  };
  struct TenantHold {
    uint64_t bytes = 0;
    absl::flat_hash_map<BlockKey, Held> blocks;
  };

  void DropLapsed(int64_t now_us) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t IssueLocked(Lease lease, int64_t now_us) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Uncount(const Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, TenantHold> tenants_ ABSL_GUARDED_BY(mu_);
  int64_t earliest_expiry_us_ ABSL_GUARDED_BY(mu_) = INT64_MAX;  // of leases_, or earlier
  size_t sweep_at_ ABSL_GUARDED_BY(mu_) = 1024;  // size at which lapsed handles are dropped
};

}  // namespace kvtier::server
