#include "server/request_keys.h"

#include "absl/strings/str_cat.h"

namespace kvtier::server {

absl::Status CheckTenantName(const std::string& tenant, size_t max_bytes) {
  if (tenant.empty()) return absl::InvalidArgumentError("tenant: must be set");
  if (tenant.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("tenant: longer than ", max_bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> KeyCount(const google::protobuf::RepeatedPtrField<std::string>& keys,
                                const std::string& packed, size_t max_keys) {
  if (!keys.empty() && !packed.empty()) {
    return absl::InvalidArgumentError("give keys or packed_keys, not both");
  }
  if (packed.size() % BlockKey::kBytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("packed_keys: ", packed.size(), " bytes is not a multiple of 16"));
  }
  const size_t n = keys.empty() ? packed.size() / BlockKey::kBytes : keys.size();
  if (n > max_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " keys exceed the limit of ", max_keys, " per request"));
  }
  return n;
}

absl::StatusOr<std::vector<BlockKey>> StoreKeysOf(
    const std::string& tenant, const google::protobuf::RepeatedPtrField<std::string>& keys,
    const std::string& packed, size_t max_keys) {
  auto n = KeyCount(keys, packed, max_keys);
  if (!n.ok()) return n.status();
  if (keys.empty()) {
    std::vector<BlockKey> out(*n);
    PackedStoreKeys(tenant, packed, 0, *n, out.data());
    return out;
  }
  std::vector<BlockKey> out;
  out.reserve(*n);
  TenantKeyer tenant_key(tenant);
  for (size_t i = 0; i < *n; ++i) {
    auto k = BlockKey::FromByteString(keys[static_cast<int>(i)]);
    if (!k.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("keys[", i, "]: ", k.status().message()));
    }
    out.push_back(tenant_key(*k));
  }
  return out;
}

void PackedStoreKeys(const std::string& tenant, const std::string& packed, size_t begin, size_t end,
                     BlockKey* out) {
  TenantKeyer tenant_key(tenant);
  const auto* bytes = reinterpret_cast<const uint8_t*>(packed.data());
  for (size_t i = begin; i < end; ++i) out[i] = tenant_key.FromBytes(bytes + BlockKey::kBytes * i);
}

}  // namespace kvtier::server
