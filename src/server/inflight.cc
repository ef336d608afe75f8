#include "server/inflight.h"

#include "absl/strings/str_cat.h"

namespace kvtier::server {

absl::Status InflightBytes::Acquire(const std::string& peer, uint64_t n) {
  uint64_t now;
  {
    MutexLock l(&mu_);
    uint64_t& mine = per_peer_[peer];
    // A copy: the errors below erase a new peer's entry, and `mine` with it.
    const uint64_t held = mine;
    // Compared as `n > limit - held`: `held + n` wraps for an n near 2^64 (a client's size).
    if (held > per_connection_limit_ || n > per_connection_limit_ - held) {
      if (held == 0) per_peer_.erase(peer);
      return absl::ResourceExhaustedError(absl::StrCat(
          "this connection has ", held, " bytes in flight; ", n, " more would pass the limit of ",
          per_connection_limit_, " (limits.max_inflight_mib_per_connection)"));
    }
    if (total_ > total_limit_ || n > total_limit_ - total_) {
      if (held == 0) per_peer_.erase(peer);
      return absl::ResourceExhaustedError(absl::StrCat(
          "the daemon has ", total_, " bytes in flight; ", n, " more would pass the limit of ",
          total_limit_, " (limits.max_inflight_mib); retry later"));
    }
    mine += n;
    now = total_ += n;
  }
  if (on_change_) on_change_(now);
  return absl::OkStatus();
}

void InflightBytes::Release(const std::string& peer, uint64_t n) {
  uint64_t now;
  {
    MutexLock l(&mu_);
    auto it = per_peer_.find(peer);
    if (it != per_peer_.end()) {
      it->second -= std::min(it->second, n);
      if (it->second == 0) per_peer_.erase(it);
    }
    now = total_ -= std::min(total_, n);
  }
  if (on_change_) on_change_(now);
}

uint64_t InflightBytes::total() const {
  MutexLock l(&mu_);
  return total_;
}

}  // namespace kvtier::server
