#pragma once
// InflightBytes: caps the payload bytes a daemon holds for requests in progress (blocks being
// received by Put, blocks being sent by Get), in total, per client connection and per tenant, so
// that no mix of requests can make kvtierd's memory grow without bound, and no tenant can hold
// the host tier's space (a Put's reservation cannot be evicted) so that others' puts fail.
// Thread-safe.

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
  InflightBytes(uint64_t total_limit, uint64_t per_connection_limit, uint64_t per_tenant_limit,
                std::function<void(uint64_t)> on_change = nullptr)
      : total_limit_(total_limit),
        per_connection_limit_(per_connection_limit),
        per_tenant_limit_(per_tenant_limit),
        on_change_(std::move(on_change)) {}

  // Reserves `n` bytes for connection `peer` and tenant number `tenant`; RESOURCE_EXHAUSTED
  // naming the limit when one would be passed.
  absl::Status Acquire(const std::string& peer, uint16_t tenant, uint64_t n);
  void Release(const std::string& peer, uint16_t tenant, uint64_t n);
  uint64_t total() const;
  uint64_t tenant_total(uint16_t tenant) const;
  uint64_t per_tenant_limit() const { return per_tenant_limit_; }

  // Holds a reservation until destroyed or Reset(); an empty Hold holds nothing.
  class Hold {
   public:
    Hold() = default;
    Hold(InflightBytes* owner, std::string peer, uint16_t tenant, uint64_t n)
        : owner_(owner), peer_(std::move(peer)), tenant_(tenant), n_(n) {}
    Hold(Hold&& o) noexcept { *this = std::move(o); }
    Hold& operator=(Hold&& o) noexcept {
      if (this != &o) {
        Reset();
        owner_ = std::exchange(o.owner_, nullptr);
        peer_ = std::move(o.peer_);
        tenant_ = o.tenant_;
        n_ = o.n_;
      }
      return *this;
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() { Reset(); }
    void Reset() {
      if (owner_ != nullptr) owner_->Release(peer_, tenant_, n_);
      owner_ = nullptr;
    }

   private:
    InflightBytes* owner_ = nullptr;
    std::string peer_;
    uint16_t tenant_ = 0;
    uint64_t n_ = 0;
  };

 private:
  const uint64_t total_limit_;
  const uint64_t per_connection_limit_;
  const uint64_t per_tenant_limit_;
  const std::function<void(uint64_t)> on_change_;
  mutable Mutex mu_;
  uint64_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> per_peer_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint16_t, uint64_t> per_tenant_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::server
