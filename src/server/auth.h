#pragma once
// TenantAuth: bearer tokens per tenant. With auth on, every request carries gRPC metadata
// `authorization: Bearer <token>`; the token must be the one configured for the tenant the
// request names. Tokens come from a YAML file mapping tenant -> token. Immutable after Load;
// thread-safe.

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kvtier::server {

class TenantAuth {
 public:
  // INVALID_ARGUMENT naming the file and entry for a malformed file, an empty token or one
  // shorter than 16 characters.
  static absl::StatusOr<TenantAuth> LoadFile(const std::string& path);
  static TenantAuth FromMap(absl::flat_hash_map<std::string, std::string> tokens);

  // UNAUTHENTICATED without a valid token; PERMISSION_DENIED when the token belongs to another
  // tenant than `tenant` (or `tenant` has no token).
  absl::Status Check(const grpc::ServerContext& ctx, const std::string& tenant) const;
  // Any valid token (for tenant-less calls such as Stats).
  absl::Status CheckAny(const grpc::ServerContext& ctx) const;
  size_t tenants() const { return tokens_.size(); }

 private:
  // The tenant whose token the request carries, or an error.
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContext& ctx) const;
  absl::flat_hash_map<std::string, std::string> tokens_;  // tenant -> token
};

// The contents of a PEM file; INVALID_ARGUMENT naming `setting` when it cannot be read or holds
// no PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& setting);

}  // namespace kvtier::server
