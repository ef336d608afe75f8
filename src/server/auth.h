#pragma once
// TenantAuth: bearer tokens and their roles. With auth on, every request carries gRPC metadata
// `authorization: Bearer <token>`. A token has one of two roles:
//   - tenant: the token of one tenant. It reaches that tenant's blocks and leases, and sees that
//     tenant's own counts (Stats) and block events (WatchBlocks) only.
//   - cluster: for kvtier-router and operators. It sees the whole daemon's counts and events, and
//     reaches no tenant's blocks.
// Tokens come from a YAML file (src/server/README.md, "Auth"):
//   tenant-a: <token>                         # a tenant's token
//   router: {token: <token>, role: cluster}   # a cluster token (role: tenant is the default)
// Immutable after Load; thread-safe.

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kvtier::server {

enum class Role : uint8_t { kTenant, kCluster };

// Who a request's token names.
struct Principal {
  std::string name;  // the tenant, or the cluster token's name
  Role role = Role::kTenant;
};

class TenantAuth {
 public:
  // INVALID_ARGUMENT naming the file and entry for a malformed file or entry, an unknown role, a
  // token shorter than 16 characters or one given to two entries.
  static absl::StatusOr<TenantAuth> LoadFile(const std::string& path);
  // The same for a token file's contents; `source` names it in errors.
  static absl::StatusOr<TenantAuth> Parse(const std::string& yaml, const std::string& source);
  // Tenant tokens only: tenant -> token.
  static TenantAuth FromMap(absl::flat_hash_map<std::string, std::string> tokens);

  // UNAUTHENTICATED without a valid token; PERMISSION_DENIED when the token is not `tenant`'s
  // (another tenant's, or a cluster token).
  absl::Status Check(const grpc::ServerContext& ctx, const std::string& tenant) const;
  // Whose token the request carries; UNAUTHENTICATED without a valid one.
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContext& ctx) const;
  // Names with a tenant token (sorted), and how many there are.
  std::vector<std::string> tenant_names() const;
  size_t tenants() const;
  size_t cluster_tokens() const { return entries_.size() - tenants(); }

 private:
  struct Entry {
    std::string token;
    Role role = Role::kTenant;
  };
  absl::flat_hash_map<std::string, Entry> entries_;  // name -> token and role
};

}  // namespace kvtier::server
