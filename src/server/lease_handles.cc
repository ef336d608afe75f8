#include "server/lease_handles.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>

#include "spdlog/spdlog.h"

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
  if (leases_.size() >= sweep_at_) DropLapsed(now_us);
  uint64_t handle = RandomHandle();
  while (handle == 0 || leases_.contains(handle)) handle = RandomHandle();
  leases_.emplace(handle, std::move(lease));
  return handle;
}

std::optional<LeaseHandles::Lease> LeaseHandles::Take(uint64_t handle, std::string_view tenant) {
  MutexLock l(&mu_);
  auto it = leases_.find(handle);
  if (it == leases_.end() || it->second.tenant != tenant) return std::nullopt;
  Lease lease = std::move(it->second);
  leases_.erase(it);
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

void LeaseHandles::DropLapsed(int64_t now_us) {
  absl::erase_if(leases_, [&](const auto& kv) { return kv.second.expires_at_us <= now_us; });
  sweep_at_ = std::max<size_t>(1024, 2 * leases_.size());
}

}  // namespace kvtier::server
