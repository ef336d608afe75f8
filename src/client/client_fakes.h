#pragma once
// Test doubles for the client's seams (block_reader.h, ucx_lease_reader.h): one fake daemon's
// blocks in a host arena, served by a fake control plane (DataPlane, Lease, Release), a fake
// data-plane transport and a fake Get stream, each with knobs that inject the faults the real
// ones meet (connects that fail, connections that break mid-read, wrong bytes, leases that end
// or vanish, a daemon without a data plane). Time is a ManualClock; nothing sleeps.

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "client/block_reader.h"
#include "client/retry.h"
#include "client/ucx_lease_reader.h"
#include "common/checksum.h"
#include "common/clock.h"
#include "common/mutex.h"

namespace kvtier::client_testing {

// A test block's bytes: distinct for every (id, i).
inline std::vector<uint8_t> Bytes(uint64_t id, size_t n) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(id * 131 + i * 7 + (i >> 8));
  return out;
}

// Blocks each caller until `n` callers have arrived: true then, false if 10 s passed first
// (which a test reports: the callers did not overlap).
class Rendezvous {
 public:
  explicit Rendezvous(int n) : n_(n) {}
  bool Arrive() {
    MutexLock lock(&mu_);
    ++arrived_;
    cv_.SignalAll();
    const int64_t limit_us = 10'000'000;
    const auto start = std::chrono::steady_clock::now();
    while (arrived_ < n_) {
      const int64_t waited = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::steady_clock::now() - start)
                                 .count();
      if (waited >= limit_us) return false;
      cv_.WaitFor(&mu_, limit_us - waited);
    }
    return true;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  const int n_;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
};

// One daemon: its blocks, its leases, its data plane, and the faults to inject. The knobs are
// set before the calls they affect; counters may be read once calls have returned.
class FakeDaemon final : public LeaseControl, public DataTransport {
 public:
  struct Block {
    uint64_t offset = 0;
    std::vector<uint8_t> bytes;
    Tier tier = Tier::kHost;
    uint32_t generation = 1;
  };

  // Stores `bytes` as block `key` in the arena.
  void Add(const BlockKey& key, std::vector<uint8_t> bytes, Tier tier = Tier::kHost) {
    MutexLock lock(&mu_);
    Block b{.offset = arena_.size(), .bytes = std::move(bytes), .tier = tier};
    arena_.insert(arena_.end(), b.bytes.begin(), b.bytes.end());
    blocks_[key] = std::move(b);
  }

  // Knobs.
  ManualClock clock;
  std::optional<absl::Status> data_plane_error;  // DataPlane fails with this
  bool offers_data_plane = true;
  std::atomic<bool> fast{true};            // new connections are fast() (not UCX over TCP)
  std::atomic<int> connect_failures{0};    // the next this many connects fail
  std::atomic<int> corrupt_reads{0};       // the next this many reads land a flipped byte
  std::atomic<int> broken_reads{0};        // ... fail and break their connection
  std::atomic<int> leases_gone{0};         // ... fail NOT_FOUND (a served read's lease ended)
  std::atomic<int64_t> lease_takes_us{0};  // each Lease call takes this long
  std::atomic<int64_t> read_takes_us{0};   // each Read takes this long
  uint32_t default_ttl_ms = 1'000;
  bool blocks_stay_put = true;     // ReleaseVerified's answer
  std::function<void()> on_lease;  // called inside each Lease
  std::function<void()> on_read;   // called inside each Read

  // Counters.
  std::atomic<int> data_plane_calls{0}, lease_calls{0}, verify_calls{0}, connect_calls{0}, reads{0};
  std::atomic<int> reads_in_flight{0}, most_reads_in_flight{0};

  // Lease ids released, with the bytes reported.
  std::vector<std::pair<uint64_t, uint64_t>> released() {
    MutexLock lock(&mu_);
    return released_;
  }
  // Every buffer each connection made so far registered, in order of connection.
  std::vector<std::vector<std::span<uint8_t>>> registered() {
    MutexLock lock(&mu_);
    return registered_;
  }

  // LeaseControl.
  absl::StatusOr<std::optional<transfer::RemoteRegion>> DataPlane(CallDeadline) override {
    ++data_plane_calls;
    if (data_plane_error.has_value()) return *data_plane_error;
    if (!offers_data_plane) return std::nullopt;
    return transfer::RemoteRegion{.host = "fake", .port = 1};
  }

  absl::StatusOr<LeaseInfo> Lease(std::span<const BlockKey> keys, uint32_t ttl_ms,
                                  CallDeadline) override {
    ++lease_calls;
    if (on_lease) on_lease();
    // Granted now; the answer arrives lease_takes_us later.
    const CallDeadline granted = client_internal::SteadyNow(clock);
    clock.AdvanceMicros(lease_takes_us.load());
    MutexLock lock(&mu_);
    LeaseInfo out{.id = next_lease_++};
    const uint32_t ttl = ttl_ms != 0 ? ttl_ms : default_ttl_ms;
    out.expires = granted + std::chrono::milliseconds(ttl);
    for (const BlockKey& k : keys) {
      auto it = blocks_.find(k);
      if (it == blocks_.end()) {
        return absl::NotFoundError(absl::StrCat("lease: block ", k.Hex(), " not found"));
      }
      const Block& b = it->second;
      out.blocks.push_back({.key = k,
                            .tier = b.tier,
                            .size = b.bytes.size(),
                            .checksum = Checksum(b.bytes.data(), b.bytes.size()),
                            .offset = b.offset,
                            .generation = b.generation});
    }
    return out;
  }

  void ReleaseInBackground(uint64_t lease_id, uint64_t bytes_read) override {
    MutexLock lock(&mu_);
    released_.emplace_back(lease_id, bytes_read);
  }

  absl::StatusOr<bool> ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read,
                                       CallDeadline) override {
    ++verify_calls;
    MutexLock lock(&mu_);
    released_.emplace_back(lease.id, bytes_read);
    return blocks_stay_put;
  }

  // DataTransport.
  absl::StatusOr<std::unique_ptr<DataConnection>> Connect(const transfer::RemoteRegion&,
                                                          CallDeadline) override;

 private:
  friend class FakeConnection;
  Mutex mu_;
  std::vector<uint8_t> arena_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, Block> blocks_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::pair<uint64_t, uint64_t>> released_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::span<uint8_t>>> registered_ ABSL_GUARDED_BY(mu_);
};

// A connection to a FakeDaemon's arena.
class FakeConnection final : public DataConnection {
 public:
  FakeConnection(FakeDaemon* d, size_t index) : d_(d), index_(index), fast_(d->fast.load()) {}

  absl::Status Read(std::span<const transfer::ReadOp> ops, CallDeadline, uint64_t) override {
    if (broken_) return absl::UnavailableError("fake: the connection is broken");
    ++d_->reads;
    const int now = ++d_->reads_in_flight;
    for (int most = d_->most_reads_in_flight.load(); now > most;) {
      if (d_->most_reads_in_flight.compare_exchange_weak(most, now)) break;
    }
    if (d_->on_read) d_->on_read();
    d_->clock.AdvanceMicros(d_->read_takes_us.load());
    --d_->reads_in_flight;
    if (Take(d_->broken_reads)) {
      broken_ = true;
      return absl::UnavailableError("fake: the daemon went away mid-read");
    }
    if (Take(d_->leases_gone)) return absl::NotFoundError("fake: no such lease");
    const bool corrupt = Take(d_->corrupt_reads);
    MutexLock lock(&d_->mu_);
    for (const transfer::ReadOp& op : ops) {
      if (op.offset + op.length > d_->arena_.size()) return absl::OutOfRangeError("fake: range");
      std::memcpy(op.dst, d_->arena_.data() + op.offset, op.length);
      if (corrupt && op.length > 0) op.dst[0] ^= 0x40;
      if (op.checksum != nullptr) *op.checksum = Checksum(op.dst, op.length);
    }
    return absl::OkStatus();
  }
  absl::Status RegisterBuffer(std::span<uint8_t> buffer) override {
    MutexLock lock(&d_->mu_);
    d_->registered_[index_].push_back(buffer);
    return absl::OkStatus();
  }
  bool broken() const override { return broken_; }
  bool fast() const override { return fast_; }

 private:
  // Takes one of a counter's faults, if it has any left.
  static bool Take(std::atomic<int>& faults) {
    for (int n = faults.load(); n > 0;) {
      if (faults.compare_exchange_weak(n, n - 1)) return true;
    }
    return false;
  }
  FakeDaemon* d_;
  const size_t index_;
  const bool fast_;
  bool broken_ = false;
};

inline absl::StatusOr<std::unique_ptr<DataConnection>> FakeDaemon::Connect(
    const transfer::RemoteRegion&, CallDeadline) {
  ++connect_calls;
  for (int n = connect_failures.load(); n > 0;) {
    if (connect_failures.compare_exchange_weak(n, n - 1)) {
      return absl::UnavailableError("fake: connection refused");
    }
  }
  MutexLock lock(&mu_);
  registered_.emplace_back();
  return std::make_unique<FakeConnection>(this, registered_.size() - 1);
}

// A Get stream over the same blocks (what CacheClient::GetStream gives GrpcBlockReader).
inline GrpcBlockReader::GetStreamFn FakeGetStream(
    absl::flat_hash_map<BlockKey, std::vector<uint8_t>> blocks, std::atomic<int>* calls) {
  return [blocks = std::move(blocks), calls](std::span<const BlockKey> keys,
                                             const BlockPlaceFn& place,
                                             CallDeadline) -> absl::Status {
    if (calls != nullptr) ++*calls;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = blocks.find(keys[i]);
      auto dst =
          place(i, it == blocks.end() ? std::nullopt : std::optional<size_t>(it->second.size()));
      if (!dst.ok()) return dst.status();
      if (it != blocks.end()) std::memcpy(dst->data(), it->second.data(), it->second.size());
    }
    return absl::OkStatus();
  };
}

}  // namespace kvtier::client_testing
