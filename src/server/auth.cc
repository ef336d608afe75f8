#include "server/auth.h"

#include <openssl/crypto.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace kvtier::server {

absl::StatusOr<TenantAuth> TenantAuth::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be read"));
  return Parse(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()),
               path);
}

absl::StatusOr<TenantAuth> TenantAuth::Parse(const std::string& yaml, const std::string& source) {
  TenantAuth a;
  try {
    YAML::Node root = YAML::Load(yaml);
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": expected a map of name: token (or name: {token: ..., role: ...})"));
    }
    for (const auto& kv : root) {
      if (!kv.first.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": a name must be a string"));
      }
      const std::string name = kv.first.as<std::string>();
      if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": an empty name"));
      Entry e;
      if (kv.second.IsScalar()) {
        e.token = kv.second.as<std::string>();
      } else if (kv.second.IsMap()) {
        for (const auto& field : kv.second) {
          const std::string f = field.first.as<std::string>();
          if (f != "token" && f != "role") {
            return absl::InvalidArgumentError(absl::StrCat(
                source, ": ", name, ": unknown field '", f, "' (expected token, role)"));
          }
          if (!field.second.IsScalar()) {
            return absl::InvalidArgumentError(
                absl::StrCat(source, ": ", name, ".", f, ": expected a string"));
          }
        }
        if (!kv.second["token"]) {
          return absl::InvalidArgumentError(absl::StrCat(source, ": ", name, ": no token"));
        }
        e.token = kv.second["token"].as<std::string>();
        const std::string role = kv.second["role"] ? kv.second["role"].as<std::string>() : "tenant";
        if (role == "cluster") {
          e.role = Role::kCluster;
        } else if (role != "tenant") {
          return absl::InvalidArgumentError(absl::StrCat(
              source, ": ", name, ".role: '", role, "' is not a role (tenant or cluster)"));
        }
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": ", name, ": expected a token or {token, role}"));
      }
      if (e.token.size() < 16) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": ", name, ": token shorter than 16 characters"));
      }
      // A token names its holder: shared by two, it would let the first found act as the other
      // and lock the other out.
      for (const auto& [other, other_entry] : a.entries_) {
        if (other_entry.token == e.token) {
          return absl::InvalidArgumentError(absl::StrCat(
              source, ": ", name, " and ", other, " have the same token; each needs its own"));
        }
      }
      if (!a.entries_.emplace(name, std::move(e)).second) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": ", name, " is given twice"));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  if (a.entries_.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no tokens"));
  return a;
}

TenantAuth TenantAuth::FromMap(absl::flat_hash_map<std::string, std::string> tokens) {
  TenantAuth a;
  for (auto& [tenant, token] : tokens) a.entries_[tenant] = Entry{std::move(token), Role::kTenant};
  return a;
}

absl::StatusOr<Principal> TenantAuth::Authenticate(const grpc::ServerContext& ctx) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing authorization: Bearer <token>");
  const std::string value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.rfind(kBearer, 0) != 0) {
    return absl::UnauthenticatedError("authorization must be: Bearer <token>");
  }
  const std::string token = value.substr(kBearer.size());
  // Compare against every token in constant time per comparison.
  for (const auto& [name, e] : entries_) {
    if (e.token.size() == token.size() &&
        CRYPTO_memcmp(e.token.data(), token.data(), token.size()) == 0) {
      return Principal{name, e.role};
    }
  }
  return absl::UnauthenticatedError("invalid token");
}

absl::Status TenantAuth::Check(const grpc::ServerContext& ctx, const std::string& tenant) const {
  auto who = Authenticate(ctx);
  if (!who.ok()) return who.status();
  if (who->role != Role::kTenant) {
    return absl::PermissionDeniedError(
        absl::StrCat("a cluster token reaches no tenant's blocks (tenant '", tenant, "')"));
  }
  if (who->name != tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat("the token does not grant access to tenant '", tenant, "'"));
  }
  return absl::OkStatus();
}

std::vector<std::string> TenantAuth::tenant_names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) {
    if (e.role == Role::kTenant) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

size_t TenantAuth::tenants() const {
  size_t n = 0;
  for (const auto& [name, e] : entries_) n += e.role == Role::kTenant ? 1 : 0;
  return n;
}

}  // namespace kvtier::server
