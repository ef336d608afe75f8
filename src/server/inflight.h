#pragma once
// InflightBytes: caps the payload bytes a daemon holds for requests in progress (blocks being
// received by Put, blocks being sent by Get), in total and per client connection, so that no mix
// of requests can make kvtierd's memory grow without bound. Thread-safe.

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/mutex.h"

namespace kvtier::server {

class InflightBytes {
 public:
  // `on_change`, when set, is called with the new total after every change (outside the lock).
  InflightBytes(uint64_t total_limit, uint64_t per_connection_limit,
                std::function<void(uint64_t)> on_change = nullptr)
      : total_limit_(total_limit),
        per_connection_limit_(per_connection_limit),
        on_change_(std::move(on_change)) {}

  // Reserves `n` bytes for connection `peer`; RESOURCE_EXHAUSTED naming the limit when either
  // would be passed.
  absl::Status Acquire(const std::string& peer, uint64_t n);
  void Release(const std::string& peer, uint64_t n);
  uint64_t total() const;

  // Holds a reservation until destroyed or Reset(); an empty Hold holds nothing.
  class Hold {
   public:
    Hold() = default;
    Hold(InflightBytes* owner, std::string peer, uint64_t n)
        : owner_(owner), peer_(std::move(peer)), n_(n) {}
    Hold(Hold&& o) noexcept { *this = std::move(o); }
    Hold& operator=(Hold&& o) noexcept {
      if (this != &o) {
        Reset();
        owner_ = std::exchange(o.owner_, nullptr);
        peer_ = std::move(o.peer_);
        n_ = o.n_;
      }
      return *this;
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() { Reset(); }
    void Reset() {
      if (owner_ != nullptr) owner_->Release(peer_, n_);
      owner_ = nullptr;
    }

   private:
    InflightBytes* owner_ = nullptr;
    std::string peer_;
    uint64_t n_ = 0;
  };

 private:
  const uint64_t total_limit_;
  const uint64_t per_connection_limit_;
  const std::function<void(uint64_t)> on_change_;
  mutable Mutex mu_;
  uint64_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> per_peer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::server
