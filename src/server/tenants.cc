#include "server/tenants.h"

#include "absl/strings/string_view.h"

namespace kvtier::server {

uint16_t Tenants::Id(std::string_view name) {
  MutexLock l(&mu_);
  auto it = ids_.find(absl::string_view(name.data(), name.size()));
  if (it != ids_.end()) return it->second;
  if (names_.size() >= kMaxTenants) return kOther;
  const auto id = static_cast<uint16_t>(names_.size());
  names_.emplace_back(name);
  ids_.emplace(std::string(name), id);
  return id;
}

std::optional<uint16_t> Tenants::Find(std::string_view name) const {
  MutexLock l(&mu_);
  auto it = ids_.find(absl::string_view(name.data(), name.size()));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

std::string Tenants::Name(uint16_t id) const {
  MutexLock l(&mu_);
  return id < names_.size() ? names_[id] : std::string(kOtherName);
}

std::vector<std::pair<uint16_t, std::string>> Tenants::All() const {
  MutexLock l(&mu_);
  std::vector<std::pair<uint16_t, std::string>> out;
  out.reserve(names_.size());
  for (size_t i = 0; i < names_.size(); ++i) out.emplace_back(static_cast<uint16_t>(i), names_[i]);
  return out;
}

void Tenants::OnBlockEvent(const BlockEvent& event) {
  if (event.moved_from.has_value()) return;  // still resident
  const size_t id = event.tenant < kMaxTenants ? event.tenant : kOther;
  const int64_t sign = event.stored ? 1 : -1;
  bytes_[id].fetch_add(sign * int64_t{event.size}, std::memory_order_relaxed);
  blocks_[id].fetch_add(sign, std::memory_order_relaxed);
}

void Tenants::AddRecovered(uint64_t blocks, uint64_t bytes) {
  blocks_[kOther].fetch_add(static_cast<int64_t>(blocks), std::memory_order_relaxed);
  bytes_[kOther].fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
}

uint64_t Tenants::Get(const Counts& c, uint16_t id) {
  const int64_t v = id < kMaxTenants ? c[id].load(std::memory_order_relaxed) : 0;
  return v > 0 ? static_cast<uint64_t>(v) : 0;
}

}  // namespace kvtier::server
