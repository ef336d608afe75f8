#include "server/inflight.h"

#include "absl/strings/str_cat.h"

namespace kvtier::server {
namespace {

// `n` more would pass `limit` with `held` held. Compared as `n > limit - held`: `held + n` wraps
// for an n near 2^64 (a client's size).
bool Passes(uint64_t held, uint64_t n, uint64_t limit) { return held > limit || n > limit - held; }

}  // namespace

absl::Status InflightBytes::Acquire(const std::string& peer, uint16_t tenant, uint64_t n) {
  uint64_t now;
  {
    MutexLock l(&mu_);
    auto peer_it = per_peer_.find(peer);
    const uint64_t mine = peer_it == per_peer_.end() ? 0 : peer_it->second;
    auto tenant_it = per_tenant_.find(tenant);
    const uint64_t ours = tenant_it == per_tenant_.end() ? 0 : tenant_it->second;
    if (Passes(mine, n, per_connection_limit_)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this connection has ", mine, " bytes in flight; ", n, " more would pass the limit of ",
          per_connection_limit_, " (limits.max_inflight_mib_per_connection)"));
    }
    if (Passes(ours, n, per_tenant_limit_)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this tenant has ", ours, " bytes in flight; ", n, " more would pass the limit of ",
          per_tenant_limit_, " (limits.max_inflight_mib_per_tenant)"));
    }
    if (Passes(total_, n, total_limit_)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the daemon has ", total_, " bytes in flight; ", n, " more would pass the limit of ",
          total_limit_, " (limits.max_inflight_mib); retry later"));
    }
    per_peer_[peer] = mine + n;
    per_tenant_[tenant] = ours + n;
    now = total_ += n;
  }
  if (on_change_) on_change_(now);
  return absl::OkStatus();
}

void InflightBytes::Release(const std::string& peer, uint16_t tenant, uint64_t n) {
  uint64_t now;
  {
    MutexLock l(&mu_);
    auto take = [n](auto& map, const auto& k) {
      auto it = map.find(k);
      if (it == map.end()) return;
      it->second -= std::min(it->second, n);
      if (it->second == 0) map.erase(it);
    };
    take(per_peer_, peer);
    take(per_tenant_, tenant);
    now = total_ -= std::min(total_, n);
  }
  if (on_change_) on_change_(now);
}

uint64_t InflightBytes::total() const {
  MutexLock l(&mu_);
  return total_;
}

uint64_t InflightBytes::tenant_total(uint16_t tenant) const {
  MutexLock l(&mu_);
  auto it = per_tenant_.find(tenant);
  return it == per_tenant_.end() ? 0 : it->second;
}

}  // namespace kvtier::server
