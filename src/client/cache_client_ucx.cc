// CacheClient's UCX data plane: leases, reads (one-sided, or served by the daemon), verification,
// and the fall back to gRPC.
#include <algorithm>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "client/internal.h"
#include "common/checksum.h"
#include "transfer/ucx_common.h"

namespace kvtier {

using client_internal::CallEnd;
using client_internal::Deadline;
using client_internal::FromGrpc;
using client_internal::PrepareCall;
using client_internal::TierFromDaemon;
using client_internal::WithRetries;

namespace {

using SteadyClock = std::chrono::steady_clock;

// Attempts at a UCX read before giving up on it (a lease that ran out, a bad checksum).
constexpr int kUcxAttempts = 3;
// After a failed connect, how long reads go to gRPC before UCX is tried again.
constexpr auto kReconnectPause = std::chrono::seconds(1);

// The end of a lease with a safety margin for the two clocks' rates (1%) and scheduling (1 ms).
SteadyClock::time_point SafeEnd(const LeaseInfo& lease, SteadyClock::time_point granted_at) {
  const auto ttl = lease.expires - granted_at;
  return lease.expires - ttl / 100 - std::chrono::milliseconds(1);
}

}  // namespace

absl::StatusOr<LeaseInfo> CacheClient::Lease(std::span<const BlockKey> keys, uint32_t ttl_ms) {
  return Lease(keys, ttl_ms, CallEnd(options_));
}

absl::StatusOr<LeaseInfo> CacheClient::Lease(std::span<const BlockKey> keys, uint32_t ttl_ms,
                                             Deadline end) {
  v1::LeaseRequest req;
  req.set_tenant(options_.tenant);
  req.set_packed_keys(PackKeys(keys));
  req.set_ttl_ms(ttl_ms);
  LeaseInfo out;
  absl::Status st = WithRetries(options_, end, [&](grpc::ClientContext* ctx) {
    const SteadyClock::time_point sent = SteadyClock::now();
    v1::LeaseResponse res;
    grpc::Status s = rpc_->stub->Lease(ctx, req, &res);
    if (!s.ok()) return s;
    if (static_cast<size_t>(res.blocks_size()) != keys.size()) {
      return grpc::Status(
          grpc::StatusCode::INTERNAL,
          absl::StrCat("lease: ", res.blocks_size(), " blocks for ", keys.size(), " keys"));
    }
    out.id = res.lease_id();
    out.expires = sent + std::chrono::milliseconds(res.expires_in_ms());
    out.blocks.clear();
    for (int i = 0; i < res.blocks_size(); ++i) {
      const v1::LeasedBlock& b = res.blocks(i);
      absl::StatusOr<Tier> tier = TierFromDaemon(b.tier(), "lease");
      if (!tier.ok()) {
        return grpc::Status(grpc::StatusCode::INTERNAL, std::string(tier.status().message()));
      }
      out.blocks.push_back({.key = keys[i],
                            .tier = *tier,
                            .size = b.size(),
                            .checksum = b.checksum(),
                            .offset = b.address(),
                            .generation = b.generation()});
    }
    return s;
  });
  if (!st.ok()) return st;
  return out;
}

void CacheClient::ReleaseInBackground(uint64_t lease_id, uint64_t bytes_read) {
  // Nobody waits for it: a lost Release costs only the lease's TTL of pinned memory.
  struct Call {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    v1::ReleaseResponse res;
  };
  auto* call = new Call;
  PrepareCall(options_, SteadyClock::now() + std::chrono::milliseconds(options_.deadline_ms),
              &call->ctx);
  call->req.set_tenant(options_.tenant);
  call->req.set_lease_id(lease_id);
  call->req.set_bytes_read(bytes_read);
  {
    std::lock_guard lock(ucx_->release_mu);
    ++ucx_->releases_in_flight;
  }
  rpc_->stub->async()->Release(&call->ctx, &call->req, &call->res,
                               [call, u = ucx_.get()](const grpc::Status&) {
                                 delete call;
                                 std::lock_guard lock(u->release_mu);
                                 if (--u->releases_in_flight == 0) u->release_done.notify_all();
                               });
}

absl::Status CacheClient::Release(uint64_t lease_id, uint64_t bytes_read) {
  v1::ReleaseRequest req;
  req.set_tenant(options_.tenant);
  req.set_lease_id(lease_id);
  req.set_bytes_read(bytes_read);
  return WithRetries(options_, CallEnd(options_), [&](grpc::ClientContext* ctx) {
    v1::ReleaseResponse res;
    return rpc_->stub->Release(ctx, req, &res);
  });
}

absl::StatusOr<bool> CacheClient::ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read) {
  return ReleaseVerified(lease, bytes_read, CallEnd(options_));
}

absl::StatusOr<bool> CacheClient::ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read,
                                                  Deadline end) {
  v1::ReleaseRequest req;
  req.set_tenant(options_.tenant);
  req.set_lease_id(lease.id);
  req.set_bytes_read(bytes_read);
  std::vector<BlockKey> keys;
  keys.reserve(lease.blocks.size());
  for (const LeasedBlock& b : lease.blocks) {
    keys.push_back(b.key);
    req.add_addresses(b.offset);
    req.add_generations(b.generation);
  }
  req.set_packed_keys(PackKeys(keys));
  v1::ReleaseResponse res;
  absl::Status st = WithRetries(
      options_, end, [&](grpc::ClientContext* ctx) { return rpc_->stub->Release(ctx, req, &res); });
  if (!st.ok()) return st;
  return res.unchanged();
}

void CacheClient::RegisterBuffer(std::span<uint8_t> buffer) {
  MutexLock lock(&ucx_->mu);
  ucx_->buffers.push_back(buffer);
  if (ucx_->reader != nullptr && !ucx_->reader->broken()) {
    (void)ucx_->reader->RegisterBuffer(buffer.data(), buffer.size());
  }
}

TransferStats CacheClient::transfer_stats() const {
  return {.ucx_bytes = ucx_->ucx_bytes.load(),
          .grpc_bytes = ucx_->grpc_bytes.load(),
          .session_gets = ucx_->session_gets.load(),
          .leases = ucx_->leases.load(),
          .lease_retries = ucx_->lease_retries.load(),
          .ucx_fallbacks = ucx_->ucx_fallbacks.load(),
          .ucx_connects = ucx_->ucx_connects.load(),
          .verified_reads = ucx_->verified_reads.load()};
}

absl::StatusOr<bool> CacheClient::ReadOverUcx(std::span<const BlockKey> keys, Deadline end,
                                              PlanFn plan) {
  if (!options_.use_ucx || keys.empty()) return false;
  client_internal::Ucx& u = *ucx_;
  MutexLock lock(&u.mu);
  if (!u.offered) return false;
  if (u.reader == nullptr || u.reader->broken()) {
    if (SteadyClock::now() < u.retry_after) return false;
    u.reader.reset();
    v1::DataPlaneRequest req;
    req.set_tenant(options_.tenant);
    req.set_accepts_served(true);
    v1::DataPlaneResponse res;
    absl::Status st = WithRetries(options_, end, [&](grpc::ClientContext* ctx) {
      return rpc_->stub->DataPlane(ctx, req, &res);
    });
    if (st.code() == absl::StatusCode::kUnimplemented) {
      u.offered = false;  // a daemon without the DataPlane call
      return false;
    }
    if (!st.ok()) return st;
    if (!res.available()) {
      u.offered = false;
      return false;
    }
    transfer::RemoteRegion region{.host = res.ucx_host(),
                                  .port = static_cast<int>(res.ucx_port()),
                                  .served = res.mode() == v1::DATA_PLANE_MODE_SERVED,
                                  .packed_rkey = res.rkey(),
                                  .base = res.arena_base(),
                                  .bytes = res.arena_bytes()};
    if (region.host.empty()) {
      int unused = 0;
      if (!transfer::SplitHostPort(options_.address, "address", &region.host, &unused).ok()) {
        u.offered = false;
        return false;
      }
    }
    auto reader = transfer::UcxReader::Connect(
        region, client_internal::EarlierOf(SteadyClock::now(), options_.deadline_ms, end));
    if (!reader.ok()) {
      u.retry_after = SteadyClock::now() + kReconnectPause;
      u.ucx_fallbacks.fetch_add(1);
      return false;
    }
    // Only where UCX is faster than gRPC, unless told otherwise (ucx_software_rma): rkey mode
    // with the arena mapped or an RMA lane; served mode with the staging area mapped or an RDMA
    // lane. (Served reads over TCP are safe, only slower.)
    const transfer::UcxReader& r = **reader;
    const bool fast = r.served() ? r.staged() || r.native_am() : r.one_sided();
    if (!fast && !options_.ucx_software_rma) {
      u.offered = false;  // UCX over TCP only: use gRPC
      return false;
    }
    u.reader = std::move(*reader);
    u.ucx_connects.fetch_add(1);
    for (std::span<uint8_t> b : u.buffers) {
      if (absl::Status st = u.reader->RegisterBuffer(b.data(), b.size()); !st.ok()) {
        u.buffers.clear();  // reads still work, each registered by UCX as it goes
        break;
      }
    }
  }

  absl::Status last;
  for (int attempt = 0; attempt < kUcxAttempts; ++attempt) {
    const SteadyClock::time_point asked = SteadyClock::now();
    auto lease = Lease(keys, options_.lease_ttl_ms, end);
    if (!lease.ok()) {
      // Not cached, not leasable now (the pinned-bytes cap), or a problem Get will report too.
      return false;
    }
    u.leases.fetch_add(1);
    auto release = [&](uint64_t bytes) { ReleaseInBackground(lease->id, bytes); };
    for (const LeasedBlock& b : lease->blocks) {
      if (b.tier != Tier::kHost) {  // HBM blocks are not exported over UCX
        release(0);
        return false;
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
    const SteadyClock::time_point safe_end = SafeEnd(*lease, asked);
    if (SteadyClock::now() >= safe_end) {
      release(0);
      last = absl::DeadlineExceededError("ucx: the lease ended before the read began");
      u.lease_retries.fetch_add(1);
      continue;
    }
    absl::Status st = u.reader->Read(
        ops, client_internal::EarlierOf(SteadyClock::now(), options_.deadline_ms, end), lease->id);
    bool verified = true;
    for (size_t i = 0; i < ops.size() && st.ok() && verified; ++i) {
      const LeasedBlock& b = lease->blocks[(*reads)[i].block];
      if (ops[i].checksum != nullptr && sums[i] != b.checksum) {
        verified = false;
        last = absl::DataLossError(
            absl::StrCat("ucx: block ", b.key.Hex(), " read with a wrong checksum"));
      }
    }
    const bool in_time = SteadyClock::now() < safe_end;
    if (st.code() == absl::StatusCode::kNotFound && !u.reader->broken()) {
      // A served read whose lease the daemon no longer had (it ended first): a new lease.
      release(0);
      last = st;
      u.lease_retries.fetch_add(1);
      continue;
    }
    if (!st.ok()) {
      // The connection failed (the daemon went away, a transport error, a stuck read): gRPC
      // serves this read, and the next one reconnects.
      release(0);
      u.ucx_fallbacks.fetch_add(1);
      return false;
    }
    if (!verified) {
      release(bytes);
      u.lease_retries.fetch_add(1);
      continue;
    }
    if (in_time) {
      // Read while the lease held the blocks in place (and whole blocks also checked against
      // their checksums).
      release(bytes);
      u.ucx_bytes.fetch_add(bytes);
      return true;
    }
    // A read that may have outlived its lease proves nothing by itself: the daemon confirms
    // that every block stayed where the lease found it, with the same generation, so the bytes
    // read were the blocks'.
    auto unchanged = ReleaseVerified(*lease, bytes, end);
    if (!unchanged.ok()) {
      u.ucx_fallbacks.fetch_add(1);
      return false;  // the daemon is not answering: gRPC serves this read, or reports why not
    }
    if (*unchanged) {
      u.ucx_bytes.fetch_add(bytes);
      u.verified_reads.fetch_add(1);
      return true;
    }
    last = absl::DeadlineExceededError("ucx: a block moved before the read was verified");
    u.lease_retries.fetch_add(1);
  }
  // Persistently wrong bytes are an error; a lease too short for the read is worth trying by gRPC.
  if (last.code() == absl::StatusCode::kDataLoss) return last;
  u.ucx_fallbacks.fetch_add(1);
  return false;
}

absl::Status CacheClient::ReadRanges(std::span<const RangeRead> reads, bool* over_ucx) {
  std::vector<BlockKey> keys;
  absl::flat_hash_map<BlockKey, size_t> index;
  std::vector<size_t> block_of(reads.size());
  for (size_t i = 0; i < reads.size(); ++i) {
    auto [it, added] = index.try_emplace(reads[i].key, keys.size());
    if (added) keys.push_back(reads[i].key);
    block_of[i] = it->second;
  }
  auto out_of_range = [&](size_t i, uint64_t size) {
    return absl::OutOfRangeError(absl::StrCat("read: ", reads[i].dst.size(), " bytes at ",
                                              reads[i].offset, " of block ", reads[i].key.Hex(),
                                              " (", size, " bytes)"));
  };
  const Deadline end = CallEnd(options_);
  auto used =
      ReadOverUcx(keys, end, [&](const LeaseInfo& lease) -> absl::StatusOr<std::vector<BlockRead>> {
        std::vector<BlockRead> plan;
        plan.reserve(reads.size());
        for (size_t i = 0; i < reads.size(); ++i) {
          const uint64_t size = lease.blocks[block_of[i]].size;
          if (reads[i].offset > size || reads[i].dst.size() > size - reads[i].offset) {
            return out_of_range(i, size);
          }
          plan.push_back({.block = block_of[i], .offset = reads[i].offset, .dst = reads[i].dst});
        }
        return plan;
      });
  if (!used.ok()) return used.status();
  if (over_ucx != nullptr) *over_ucx = *used;
  if (*used) return absl::OkStatus();
  // gRPC: whole blocks, then the ranges out of them.
  auto blocks = Get(keys, end);
  if (!blocks.ok()) return blocks.status();
  for (size_t i = 0; i < reads.size(); ++i) {
    const auto& b = (*blocks)[block_of[i]];
    if (!b.has_value()) {
      return absl::NotFoundError(absl::StrCat("read: block ", reads[i].key.Hex(), " not found"));
    }
    if (reads[i].offset > b->size() || reads[i].dst.size() > b->size() - reads[i].offset) {
      return out_of_range(i, b->size());
    }
    CopyBytes(reads[i].dst.data(), b->data() + reads[i].offset, reads[i].dst.size());
  }
  return absl::OkStatus();
}

}  // namespace kvtier
