#include "server/lease_handles.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>

#include "spdlog/spdlog.h"

#include "absl/strings/string_view.h"

namespace kvtier::server {
namespace {

uint64_t RandomHandle() {
  uint64_t v = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof(v)) != 1) {
    spdlog::critical("kvtierd: the CSPRNG failed; lease handles cannot be made");
    std::abort();
  }
  return v;
}

}  // namespace

uint64_t LeaseHandles::Issue(Lease lease, int64_t now_us) {
  MutexLock l(&mu_);
  return IssueLocked(std::move(lease), now_us);
}

std::optional<uint64_t> LeaseHandles::IssueWithin(Lease lease, int64_t now_us,
                                                  uint64_t tenant_limit, uint64_t* held,
                                                  uint64_t* adding) {
  MutexLock l(&mu_);
  if (earliest_expiry_us_ <= now_us) DropLapsed(now_us);
  *held = 0;
  *adding = 0;
  auto it = tenants_.find(lease.tenant);
  for (const BlockInfo& b : lease.blocks) {
    if (it == tenants_.end() || !it->second.blocks.contains(b.key)) *adding += b.size;
  }
  if (it != tenants_.end()) *held = it->second.bytes;
  if (*held > tenant_limit || *adding > tenant_limit - *held) return std::nullopt;
  return IssueLocked(std::move(lease), now_us);
}

uint64_t LeaseHandles::IssueLocked(Lease lease, int64_t now_us) {
  if (leases_.size() >= sweep_at_) DropLapsed(now_us);
  uint64_t handle = RandomHandle();
  while (handle == 0 || leases_.contains(handle)) handle = RandomHandle();
  TenantHold& hold = tenants_[lease.tenant];
  for (const BlockInfo& b : lease.blocks) {
    Held& held = hold.blocks[b.key];
    if (held.leases++ != 0) continue;
    held.size = b.size;
    hold.bytes += b.size;
  }
  earliest_expiry_us_ = std::min(earliest_expiry_us_, lease.expires_at_us);
  leases_.emplace(handle, std::move(lease));
  return handle;
}

std::optional<LeaseHandles::Lease> LeaseHandles::Take(uint64_t handle, std::string_view tenant) {
  MutexLock l(&mu_);
  auto it = leases_.find(handle);
  if (it == leases_.end() || it->second.tenant != tenant) return std::nullopt;
  Lease lease = std::move(it->second);
  leases_.erase(it);
  Uncount(lease);
  return lease;
}

std::optional<LeaseHandles::Lease> LeaseHandles::Find(uint64_t handle, int64_t now_us) const {
  MutexLock l(&mu_);
  auto it = leases_.find(handle);
  if (it == leases_.end() || it->second.expires_at_us <= now_us) return std::nullopt;
  return it->second;
}

size_t LeaseHandles::size() const {
  MutexLock l(&mu_);
  return leases_.size();
}

uint64_t LeaseHandles::TenantBytes(std::string_view tenant, int64_t now_us) {
  MutexLock l(&mu_);
  if (earliest_expiry_us_ <= now_us) DropLapsed(now_us);
  auto it = tenants_.find(absl::string_view(tenant.data(), tenant.size()));
  return it == tenants_.end() ? 0 : it->second.bytes;
}

void LeaseHandles::DropLapsed(int64_t now_us) {
  earliest_expiry_us_ = INT64_MAX;
  absl::erase_if(leases_, [&](const auto& kv) {
    if (kv.second.expires_at_us > now_us) {
      earliest_expiry_us_ = std::min(earliest_expiry_us_, kv.second.expires_at_us);
      return false;
    }
    Uncount(kv.second);
    return true;
  });
  sweep_at_ = std::max<size_t>(1024, 2 * leases_.size());
}

void LeaseHandles::Uncount(const Lease& lease) {
  auto it = tenants_.find(lease.tenant);
  if (it == tenants_.end()) return;
  TenantHold& hold = it->second;
  for (const BlockInfo& b : lease.blocks) {
    auto held = hold.blocks.find(b.key);
    if (held == hold.blocks.end() || --held->second.leases != 0) continue;
    hold.bytes -= held->second.size;
    hold.blocks.erase(held);
  }
  if (hold.blocks.empty()) tenants_.erase(it);
}

}  // namespace kvtier::server
