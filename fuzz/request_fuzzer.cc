// Feeds the key-list handling of CacheService's Get, Lease, Lookup and Delete
// (server/request_keys.h) the requests clients send. The first byte picks the message (0 Get,
// 1 Lease, 2 Lookup, 3 Delete), the second is the service's max_keys_per_request, and the rest
// is the serialized request, parsed as gRPC parses it. The service's checks then run as the
// service runs them: the tenant's name, then the keys' count and form, then the store keys.
// What they accept must be as many well-formed keys as the request names, each the tenant key
// of the key the request gave (which the service echoes back), in both forms alike, and a long
// Lookup keyed in two halves (as the service splits it) must give the same keys.

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz/fuzz_util.h"
#include "kvtier/v1/cache.pb.h"
#include "server/request_keys.h"

namespace kvtier::fuzz {
namespace {

template <typename Request>
void Check(const uint8_t* data, size_t size, size_t max_keys) {
  Request r;
  if (!r.ParseFromArray(data, static_cast<int>(size))) return;
  if (!server::CheckTenantName(r.tenant(), 256).ok()) return;
  auto n = server::KeyCount(r.keys(), r.packed_keys(), max_keys);
  auto keys = server::StoreKeysOf(r.tenant(), r.keys(), r.packed_keys(), max_keys);
  if (!n.ok()) {
    KVTIER_FUZZ_CHECK(!keys.ok() && keys.status() == n.status(), "the count's error stands");
    return;
  }
  KVTIER_FUZZ_CHECK(*n <= max_keys, absl::StrCat(*n, " keys over the limit ", max_keys));
  if (!keys.ok()) {
    KVTIER_FUZZ_CHECK(r.keys_size() > 0, "packed keys of a whole length are all well-formed");
    return;
  }
  KVTIER_FUZZ_CHECK(keys->size() == *n, "a store key per key");
  std::vector<BlockKey> given;  // the keys as the service echoes them back
  for (size_t i = 0; i < *n; ++i) {
    const std::string k = server::KeyBytes(r, i);
    KVTIER_FUZZ_CHECK(k.size() == BlockKey::kBytes, "16 bytes a key");
    given.push_back(*BlockKey::FromByteString(k));
    KVTIER_FUZZ_CHECK((*keys)[i] == TenantKey(r.tenant(), given[i]), absl::StrCat("key ", i));
  }
  // Packed, in two halves as a long Lookup is keyed.
  const std::string packed = PackKeys(given);
  std::vector<BlockKey> halves(*n);
  server::PackedStoreKeys(r.tenant(), packed, *n / 2, *n, halves.data());
  server::PackedStoreKeys(r.tenant(), packed, 0, *n / 2, halves.data());
  KVTIER_FUZZ_CHECK(halves == *keys, "packed keys in halves alike");
  auto again = server::StoreKeysOf(r.tenant(), {}, packed, max_keys);
  KVTIER_FUZZ_CHECK(again.ok() && *again == *keys, "both forms alike");
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  if (size < 2) return 0;
  const uint8_t which = data[0] % 4;
  const size_t max_keys = data[1];
  data += 2;
  size -= 2;
  switch (which) {
    case 0:
      fuzz::Check<v1::GetRequest>(data, size, max_keys);
      break;
    case 1: {
      fuzz::Check<v1::LeaseRequest>(data, size, max_keys);
      v1::LeaseRequest r;
      if (r.ParseFromArray(data, static_cast<int>(size))) {
        // The TTL the service gives the store, in microseconds: never negative, never wrapped.
        const int64_t ttl_us = int64_t{r.ttl_ms()} * 1000;
        KVTIER_FUZZ_CHECK(ttl_us >= 0 && ttl_us / 1000 == r.ttl_ms(), "ttl");
      }
      break;
    }
    case 2:
      fuzz::Check<v1::LookupRequest>(data, size, max_keys);
      break;
    case 3:
      fuzz::Check<v1::DeleteRequest>(data, size, max_keys);
      break;
  }
  return 0;
}
