#include "client/ucx_lease_reader.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "client/retry.h"
#include "common/status_macros.h"

namespace kvtier {

namespace {

using client_internal::EarlierOf;

// Attempts at a UCX read before giving up on it (a lease that ran out, a bad checksum).
constexpr int kUcxAttempts = 3;
// After a failed connect, how long calls go to gRPC before UCX is tried again.
constexpr auto kReconnectPause = std::chrono::seconds(1);

// The end of a lease with a safety margin for the two clocks' rates (1%) and scheduling (1 ms).
CallDeadline SafeEnd(const LeaseInfo& lease, CallDeadline granted_at) {
  const auto ttl = lease.expires - granted_at;
  return lease.expires - ttl / 100 - std::chrono::milliseconds(1);
}

absl::Status NoDataPlane() {
  return NotServed(absl::UnavailableError("ucx: the daemon offers no data plane"));
}

class UcxConnection final : public DataConnection {
 public:
  explicit UcxConnection(std::unique_ptr<transfer::UcxReader> reader)
      : reader_(std::move(reader)) {}
  absl::Status Read(std::span<const transfer::ReadOp> ops, CallDeadline deadline,
                    uint64_t lease) override {
    return reader_->Read(ops, deadline, lease);
  }
  absl::Status RegisterBuffer(std::span<uint8_t> buffer) override {
    return reader_->RegisterBuffer(buffer.data(), buffer.size());
  }
  bool broken() const override { return reader_->broken(); }
  // Served reads over TCP are safe, only slower than gRPC; rkey reads over TCP are emulated
  // with messages the daemon answers, and UCX 1.13 may abort it when a reader dies mid-read.
  bool fast() const override {
    return reader_->served() ? reader_->staged() || reader_->native_am() : reader_->one_sided();
  }

 private:
  std::unique_ptr<transfer::UcxReader> reader_;
};

class UcxTransport final : public DataTransport {
 public:
  absl::StatusOr<std::unique_ptr<DataConnection>> Connect(const transfer::RemoteRegion& region,
                                                          CallDeadline deadline) override {
    auto reader = transfer::UcxReader::Connect(region, deadline);
    if (!reader.ok()) return reader.status();
    return std::make_unique<UcxConnection>(std::move(*reader));
  }
};

}  // namespace

std::unique_ptr<DataTransport> NewUcxTransport() { return std::make_unique<UcxTransport>(); }

UcxLeaseReader::UcxLeaseReader(LeaseControl* control, DataTransport* transport,
                               UcxLeaseReaderOptions options)
    : control_(control),
      transport_(transport),
      options_(options),
      max_open_(options.max_connections) {}

CallDeadline UcxLeaseReader::Now() const { return client_internal::SteadyNow(*options_.clock); }

UcxReadStats UcxLeaseReader::stats() const {
  return {.ucx_bytes = ucx_bytes_.load(),
          .leases = leases_.load(),
          .lease_retries = lease_retries_.load(),
          .fallbacks = fallbacks_.load(),
          .connects = connects_.load(),
          .verified_reads = verified_reads_.load()};
}

void UcxLeaseReader::RegisterBuffer(std::span<uint8_t> buffer) {
  // Registered by each connection when it is next taken (Acquire), outside this lock.
  MutexLock lock(&mu_);
  buffers_.push_back(buffer);
}

absl::StatusOr<std::vector<std::optional<size_t>>> UcxLeaseReader::ReadBlocks(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
    CallDeadline deadline) {
  if (absl::flat_hash_set<BlockKey>(keys.begin(), keys.end()).size() != keys.size()) {
    return NotServed(absl::InvalidArgumentError("ucx: a lease names each block once"));
  }
  std::vector<std::optional<size_t>> sizes(keys.size());
  KVTIER_RETURN_IF_ERROR(
      Read(keys, deadline, [&](const LeaseInfo& lease) -> absl::StatusOr<std::vector<BlockRead>> {
        std::vector<BlockRead> reads;
        reads.reserve(keys.size());
        for (size_t i = 0; i < keys.size(); ++i) {
          const uint64_t size = lease.blocks[i].size;
          if (size > dst[i].size()) return BlockTooLarge(keys[i], size, dst[i].size());
          sizes[i] = size;
          reads.push_back({.block = i, .offset = 0, .dst = dst[i].first(size)});
        }
        return reads;
      }));
  return sizes;
}

absl::Status UcxLeaseReader::ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline) {
  const RangeBlocks blocks = BlocksOf(reads);
  return Read(
      blocks.keys, deadline, [&](const LeaseInfo& lease) -> absl::StatusOr<std::vector<BlockRead>> {
        std::vector<BlockRead> plan;
        plan.reserve(reads.size());
        for (size_t i = 0; i < reads.size(); ++i) {
          const uint64_t size = lease.blocks[blocks.block_of[i]].size;
          if (!Inside(reads[i], size)) return RangeOutside(reads[i], size);
          plan.push_back(
              {.block = blocks.block_of[i], .offset = reads[i].offset, .dst = reads[i].dst});
        }
        return plan;
      });
}

absl::Status UcxLeaseReader::Read(std::span<const BlockKey> keys, CallDeadline deadline,
                                  PlanFn plan) {
  if (keys.empty()) return NotServed(absl::InvalidArgumentError("ucx: no block to lease"));
  KVTIER_ASSIGN_OR_RETURN(Pooled pooled, Acquire(deadline));
  absl::Status st = ReadLeased(*pooled.connection, keys, deadline, plan);
  GiveBack(std::move(pooled));
  return st;
}

absl::StatusOr<UcxLeaseReader::Pooled> UcxLeaseReader::Acquire(CallDeadline deadline) {
  Pooled pooled;
  std::vector<std::span<uint8_t>> unregistered;
  {
    MutexLock lock(&mu_);
    for (;;) {
      if (!offered_) return NoDataPlane();
      if (!idle_.empty()) {
        pooled = std::move(idle_.back());
        idle_.pop_back();
        break;
      }
      if (open_ < max_open_) {
        // None idle: make one, unless a connect failed a moment ago.
        if (Now() < retry_after_) {
          return NotServed(absl::UnavailableError("ucx: reconnecting after a failed connect"));
        }
        ++open_;  // reserved while this call connects, outside the lock
        break;
      }
      returned_.Wait(&mu_);
    }
  }
  if (pooled.connection == nullptr) {
    KVTIER_ASSIGN_OR_RETURN(pooled, Connect(deadline));
  }
  {
    MutexLock lock(&mu_);
    if (pooled.registered < buffers_.size()) {
      unregistered.assign(buffers_.begin() + pooled.registered, buffers_.end());
      pooled.registered = buffers_.size();
    }
  }
  for (std::span<uint8_t> b : unregistered) {
    // Reads into a buffer this failed for still work, each registered by UCX as it goes.
    if (!pooled.connection->RegisterBuffer(b).ok()) break;
  }
  return pooled;
}

absl::StatusOr<UcxLeaseReader::Pooled> UcxLeaseReader::Connect(CallDeadline deadline) {
  auto region = control_->DataPlane(deadline);
  if (!region.ok()) {
    Unreserve();
    return region.status();
  }
  if (!region->has_value()) {
    MutexLock lock(&mu_);
    offered_ = false;  // a daemon without a data plane, or from before the DataPlane call
    --open_;
    returned_.SignalAll();
    return NoDataPlane();
  }
  auto connection =
      transport_->Connect(**region, EarlierOf(Now(), options_.read_timeout_ms, deadline));
  if (!connection.ok()) {
    {
      MutexLock lock(&mu_);
      retry_after_ = Now() + kReconnectPause;
      --open_;
      returned_.Signal();
    }
    fallbacks_.fetch_add(1);
    return NotServed(connection.status());
  }
  if (!(*connection)->fast() && !options_.software_rma) {
    MutexLock lock(&mu_);
    if (--open_ > 0) {
      // This client's other connections are fast: the daemon ran out of what makes one so (a
      // staging area each in served mode, ucx_server.h max_staging_areas). Keep to those.
      max_open_ = open_;
    } else {
      offered_ = false;  // UCX over TCP only: gRPC is faster, and safer for the daemon
    }
    returned_.SignalAll();
    return NotServed(absl::UnavailableError("ucx: only TCP to the daemon's data plane"));
  }
  connects_.fetch_add(1);
  return Pooled{.connection = std::move(*connection)};
}

void UcxLeaseReader::Unreserve() {
  MutexLock lock(&mu_);
  --open_;
  returned_.Signal();
}

void UcxLeaseReader::GiveBack(Pooled pooled) {
  // A broken connection is dropped (outside the lock: closing it waits for UCX) and the next
  // call that needs one connects anew.
  if (pooled.connection->broken()) {
    pooled.connection.reset();
    Unreserve();
    return;
  }
  MutexLock lock(&mu_);
  idle_.push_back(std::move(pooled));
  returned_.Signal();
}

absl::Status UcxLeaseReader::ReadLeased(DataConnection& connection, std::span<const BlockKey> keys,
                                        CallDeadline deadline, PlanFn plan) {
  absl::Status last;
  for (int attempt = 0; attempt < kUcxAttempts; ++attempt) {
    const CallDeadline asked = Now();
    auto lease = control_->Lease(keys, options_.lease_ttl_ms, deadline);
    // Not cached, not leasable now (the pinned-bytes cap), or a problem gRPC will report too.
    if (!lease.ok()) return NotServed(lease.status());
    leases_.fetch_add(1);
    auto release = [&](uint64_t bytes) { control_->ReleaseInBackground(lease->id, bytes); };
    for (const LeasedBlock& b : lease->blocks) {
      if (b.tier != Tier::kHost) {  // HBM blocks are not exported over UCX
        release(0);
        return NotServed(absl::FailedPreconditionError(
            absl::StrCat("ucx: block ", b.key.Hex(), " is in the ", TierName(b.tier), " tier")));
      }
    }
    auto reads = plan(*lease);
    if (!reads.ok()) {
      release(0);
      return reads.status();
    }
    std::vector<transfer::ReadOp> ops;
    ops.reserve(reads->size());
    std::vector<uint64_t> sums(reads->size());
    uint64_t bytes = 0;
    for (size_t i = 0; i < reads->size(); ++i) {
      const BlockRead& r = (*reads)[i];
      const LeasedBlock& b = lease->blocks[r.block];
      const bool whole = r.offset == 0 && r.dst.size() == b.size;  // verifiable
      ops.push_back({.offset = b.offset + r.offset,
                     .length = r.dst.size(),
                     .dst = r.dst.data(),
                     .checksum = whole ? &sums[i] : nullptr});
      bytes += r.dst.size();
    }
    // Reads in flight cannot be recalled without dropping the connection, so a read that ends
    // after its lease is let finish and then discarded (the block may have been reused meanwhile).
    const CallDeadline safe_end = SafeEnd(*lease, asked);
    if (Now() >= safe_end) {
      release(0);
      last = absl::DeadlineExceededError("ucx: the lease ended before the read began");
      lease_retries_.fetch_add(1);
      continue;
    }
    absl::Status st =
        connection.Read(ops, EarlierOf(Now(), options_.read_timeout_ms, deadline), lease->id);
    bool verified = true;
    for (size_t i = 0; i < ops.size() && st.ok() && verified; ++i) {
      const LeasedBlock& b = lease->blocks[(*reads)[i].block];
      if (ops[i].checksum != nullptr && sums[i] != b.checksum) {
        verified = false;
        last = absl::DataLossError(
            absl::StrCat("ucx: block ", b.key.Hex(), " read with a wrong checksum"));
      }
    }
    const bool in_time = Now() < safe_end;
    if (st.code() == absl::StatusCode::kNotFound && !connection.broken()) {
      // A served read whose lease the daemon no longer had (it ended first): a new lease.
      release(0);
      last = st;
      lease_retries_.fetch_add(1);
      continue;
    }
    if (!st.ok()) {
      // The connection failed (the daemon went away, a transport error, a stuck read): gRPC
      // serves this call, and the next one reconnects.
      release(0);
      fallbacks_.fetch_add(1);
      return NotServed(st);
    }
    if (!verified) {
      release(bytes);
      lease_retries_.fetch_add(1);
      continue;
    }
    if (in_time) {
      // Read while the lease held the blocks in place (and whole blocks also checked against
      // their checksums).
      release(bytes);
      ucx_bytes_.fetch_add(bytes);
      return absl::OkStatus();
    }
    // A read that may have outlived its lease proves nothing by itself: the daemon confirms
    // that every block stayed where the lease found it, with the same generation, so the bytes
    // read were the blocks'.
    auto unchanged = control_->ReleaseVerified(*lease, bytes, deadline);
    if (!unchanged.ok()) {
      fallbacks_.fetch_add(1);
      return NotServed(unchanged.status());  // gRPC serves this read, or reports why not
    }
    if (*unchanged) {
      ucx_bytes_.fetch_add(bytes);
      verified_reads_.fetch_add(1);
      return absl::OkStatus();
    }
    last = absl::DeadlineExceededError("ucx: a block moved before the read was verified");
    lease_retries_.fetch_add(1);
  }
  // Persistently wrong bytes are an error; a lease too short for the read is worth trying by gRPC.
  if (last.code() == absl::StatusCode::kDataLoss) return last;
  fallbacks_.fetch_add(1);
  return NotServed(last);
}

}  // namespace kvtier
