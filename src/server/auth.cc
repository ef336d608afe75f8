#include "server/auth.h"

#include <openssl/crypto.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace kvtier::server {

absl::StatusOr<TenantAuth> TenantAuth::LoadFile(const std::string& path) {
  absl::flat_hash_map<std::string, std::string> tokens;
  try {
    YAML::Node root = YAML::LoadFile(path);
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": expected a map of tenant: token"));
    }
    for (const auto& kv : root) {
      const std::string tenant = kv.first.as<std::string>();
      if (!kv.second.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", tenant, ": expected a token"));
      }
      const std::string token = kv.second.as<std::string>();
      if (token.size() < 16) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", tenant, ": token shorter than 16 characters"));
      }
      // A token names its tenant: shared by two, it would let the first found act as the other
      // and lock the other out.
      for (const auto& [other, other_token] : tokens) {
        if (other_token == token) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": ", tenant, " and ", other, " have the same token; each needs its own"));
        }
      }
      tokens[tenant] = token;
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no tenants"));
  return FromMap(std::move(tokens));
}

TenantAuth TenantAuth::FromMap(absl::flat_hash_map<std::string, std::string> tokens) {
  TenantAuth a;
  a.tokens_ = std::move(tokens);
  return a;
}

absl::StatusOr<std::string> TenantAuth::Authenticate(const grpc::ServerContext& ctx) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing authorization: Bearer <token>");
  const std::string value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.rfind(kBearer, 0) != 0) {
    return absl::UnauthenticatedError("authorization must be: Bearer <token>");
  }
  const std::string token = value.substr(kBearer.size());
  // Compare against every tenant's token in constant time per comparison.
  for (const auto& [tenant, expected] : tokens_) {
    if (expected.size() == token.size() &&
        CRYPTO_memcmp(expected.data(), token.data(), token.size()) == 0) {
      return tenant;
    }
  }
  return absl::UnauthenticatedError("invalid token");
}

absl::Status TenantAuth::Check(const grpc::ServerContext& ctx, const std::string& tenant) const {
  auto who = Authenticate(ctx);
  if (!who.ok()) return who.status();
  if (*who != tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat("the token does not grant access to tenant '", tenant, "'"));
  }
  return absl::OkStatus();
}

absl::Status TenantAuth::CheckAny(const grpc::ServerContext& ctx) const {
  return Authenticate(ctx).status();
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& setting) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(setting, ": cannot read '", path, "'"));
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(setting, ": '", path, "' holds no PEM data"));
  }
  return pem;
}

}  // namespace kvtier::server
