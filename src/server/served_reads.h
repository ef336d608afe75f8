#pragma once
// The daemon's half of served reads (ucx.mode served; src/transfer/README.md, "Modes"): whether
// the holder of a lease handle may read ranges of the host arena, and the pins that hold the
// blocks it reads in place while their bytes are sent.

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/block_store.h"
#include "server/lease_handles.h"
#include "transfer/ucx_server.h"

namespace kvtier::server {

// The blocks of a lease, sorted by tier, then location (LeaseHandles::Lease::blocks).
std::vector<BlockInfo> SortedByPlace(std::span<const BlockInfo> blocks);

// A grant when `handle` names a lease that has not lapsed (at `now_us`, the store's clock) and
// every range lies inside one host block of it; the grant pins each block the ranges touch, as
// the lease found it, until it is destroyed. NOT_FOUND: no such live lease, or a block that is
// no longer where the lease found it; PERMISSION_DENIED: a range not inside one leased block;
// INVALID_ARGUMENT: an empty or wrapping range. REQUIRES: `store` outlives the grant.
absl::StatusOr<std::unique_ptr<transfer::ReadGrant>> AuthorizeServedRead(
    const LeaseHandles& handles, BlockStore* store, int64_t now_us, uint64_t handle,
    std::span<const transfer::RegionRange> ranges);

}  // namespace kvtier::server
