#pragma once
// The keys a CacheService request names, checked as the service checks them, apart from gRPC (so
// that they can be tested and fuzzed alone). Get, Lookup, Lease and Delete name their keys in
// one of two forms: `keys`, one 16-byte string each, or `packed_keys`, 16 bytes a key back to
// back. The store knows a tenant's block under the tenant key of the client's key (TenantKey).
// Pure functions; thread-safe.

#include <google/protobuf/repeated_field.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/block_key.h"

namespace kvtier::server {

// INVALID_ARGUMENT unless `tenant` is set and at most `max_bytes` long.
absl::Status CheckTenantName(const std::string& tenant, size_t max_bytes);

// How many keys a request names: INVALID_ARGUMENT when both forms are given, `packed` is not a
// whole number of keys, or there are more than `max_keys`. The form of each key in `keys` is
// checked by StoreKeysOf.
absl::StatusOr<size_t> KeyCount(const google::protobuf::RepeatedPtrField<std::string>& keys,
                                const std::string& packed, size_t max_keys);

// The store keys of a request's keys for `tenant`, in order: KeyCount's checks, and
// INVALID_ARGUMENT naming the first entry of `keys` that is not 16 bytes. The tenant name is not
// checked here (CheckTenantName).
absl::StatusOr<std::vector<BlockKey>> StoreKeysOf(
    const std::string& tenant, const google::protobuf::RepeatedPtrField<std::string>& keys,
    const std::string& packed, size_t max_keys);

// The store keys of packed keys [begin, end) for `tenant`, into out[begin, end).
// REQUIRES: 16 * end <= packed.size().
void PackedStoreKeys(const std::string& tenant, const std::string& packed, size_t begin, size_t end,
                     BlockKey* out);

// The i-th key of a request that names keys either way, as the client sent it (16 bytes once the
// request has passed StoreKeysOf). REQUIRES: i < the request's key count.
template <typename Request>
std::string KeyBytes(const Request& r, size_t i) {
  if (r.keys_size() > 0) return r.keys(static_cast<int>(i));
  return r.packed_keys().substr(BlockKey::kBytes * i, BlockKey::kBytes);
}

}  // namespace kvtier::server
