// CacheClient's side of the UCX data plane: the daemon's control plane for UcxLeaseReader
// (DataPlane, Lease, Release over gRPC), and the calls of CacheClient that lease and read.
#include "absl/strings/str_cat.h"
#include "client/internal.h"
#include "transfer/ucx_common.h"

namespace kvtier {

using client_internal::CallEnd;
using client_internal::GrpcLeaseControl;
using client_internal::PrepareCall;
using client_internal::Readers;
using client_internal::TierFromDaemon;
using client_internal::WithRetries;

GrpcLeaseControl::~GrpcLeaseControl() {
  std::unique_lock lock(release_mu_);
  release_done_.wait(lock, [this] { return releases_in_flight_ == 0; });
}

absl::StatusOr<std::optional<transfer::RemoteRegion>> GrpcLeaseControl::DataPlane(
    CallDeadline deadline) {
  v1::DataPlaneRequest req;
  req.set_tenant(options_.tenant);
  req.set_accepts_served(true);
  v1::DataPlaneResponse res;
  absl::Status st = WithRetries(options_, deadline, [&](grpc::ClientContext* ctx) {
    return rpc_->stub->DataPlane(ctx, req, &res);
  });
  if (st.code() == absl::StatusCode::kUnimplemented) return std::nullopt;  // an older daemon
  if (!st.ok()) return st;
  if (!res.available()) return std::nullopt;
  transfer::RemoteRegion region{.host = res.ucx_host(),
                                .port = static_cast<int>(res.ucx_port()),
                                .served = res.mode() == v1::DATA_PLANE_MODE_SERVED,
                                .packed_rkey = res.rkey(),
                                .base = res.arena_base(),
                                .bytes = res.arena_bytes()};
  if (region.host.empty()) {  // the host this client calls
    int unused = 0;
    if (!transfer::SplitHostPort(options_.address, "address", &region.host, &unused).ok()) {
      return std::nullopt;  // a Unix socket: no host to reach UCX on
    }
  }
  return region;
}

namespace {

// A Lease's answer as a LeaseInfo; `sent`: when the request went out.
absl::StatusOr<LeaseInfo> LeaseInfoOf(const v1::LeaseResponse& res, std::span<const BlockKey> keys,
                                      CallDeadline sent) {
  if (static_cast<size_t>(res.blocks_size()) != keys.size()) {
    return absl::InternalError(
        absl::StrCat("lease: ", res.blocks_size(), " blocks for ", keys.size(), " keys"));
  }
  LeaseInfo out;
  out.id = res.lease_id();
  out.expires = sent + std::chrono::milliseconds(res.expires_in_ms());
  for (int i = 0; i < res.blocks_size(); ++i) {
    const v1::LeasedBlock& b = res.blocks(i);
    absl::StatusOr<Tier> tier = TierFromDaemon(b.tier(), "lease");
    if (!tier.ok()) return absl::InternalError(tier.status().message());
    out.blocks.push_back({.key = keys[i],
                          .tier = *tier,
                          .size = b.size(),
                          .checksum = b.checksum(),
                          .offset = b.address(),
                          .generation = b.generation()});
  }
  return out;
}

}  // namespace

std::unique_ptr<GrpcLeaseControl::Session> GrpcLeaseControl::TakeSession(CallDeadline end) {
  const auto now = std::chrono::steady_clock::now();
  std::unique_ptr<Session> session;
  std::vector<std::unique_ptr<Session>> due;  // due for renewal: closed outside the lock
  {
    std::lock_guard lock(sessions_mu_);
    if (!options_.lease_session || !sessions_) return nullptr;
    while (!idle_sessions_.empty() && session == nullptr) {
      session = std::move(idle_sessions_.back());
      idle_sessions_.pop_back();
      if (now >= session->renew_at) due.push_back(std::move(session));
    }
  }
  // A request on a session can wait until the session's deadline, which must not outlast the
  // call's (total_deadline_ms).
  const CallDeadline ends =
      session != nullptr ? session->ends : now + std::chrono::milliseconds(options_.deadline_ms);
  if (ends > end) {
    if (session != nullptr) GiveBack(std::move(session));
    return nullptr;
  }
  if (session == nullptr) {
    session = std::make_unique<Session>();
    session->ctx = std::make_unique<grpc::ClientContext>();
    PrepareCall(options_, ends, session->ctx.get());
    session->ends = ends;
    session->renew_at = now + std::chrono::milliseconds(options_.deadline_ms / 2);
    session->stream = rpc_->stub->LeaseSession(session->ctx.get());
  }
  return session;
}

void GrpcLeaseControl::GiveBack(std::unique_ptr<Session> session) {
  std::lock_guard lock(sessions_mu_);
  idle_sessions_.push_back(std::move(session));
}

bool GrpcLeaseControl::OnSession(const v1::LeaseSessionRequest& request, CallDeadline end,
                                 v1::LeaseSessionResponse* answer) {
  std::unique_ptr<Session> s = TakeSession(end);
  if (s == nullptr) return false;
  v1::LeaseSessionResponse dropped;
  bool ok = true;
  for (; ok && s->pending > 0; --s->pending) ok = s->stream->Read(&dropped);
  ok = ok && s->stream->Write(request);
  if (ok && answer != nullptr) {
    ok = s->stream->Read(answer);
  } else if (ok) {
    ++s->pending;
  }
  if (!ok) {
    // A daemon from before LeaseSession: not asked again.
    if (s->Close().error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      std::lock_guard lock(sessions_mu_);
      sessions_ = false;
    }
    return false;
  }
  GiveBack(std::move(s));
  return true;
}

absl::StatusOr<LeaseInfo> GrpcLeaseControl::Lease(std::span<const BlockKey> keys, uint32_t ttl_ms,
                                                  CallDeadline deadline) {
  v1::LeaseSessionRequest session_req;
  v1::LeaseRequest& req = *session_req.mutable_lease();
  req.set_tenant(options_.tenant);
  req.set_packed_keys(PackKeys(keys));
  req.set_ttl_ms(ttl_ms);
  const CallDeadline sent = std::chrono::steady_clock::now();
  v1::LeaseSessionResponse answer;
  // UNAVAILABLE (a daemon stopping) is left to the call, which retries it.
  if (OnSession(session_req, deadline, &answer) &&
      answer.code() != grpc::StatusCode::UNAVAILABLE) {
    session_leases_.fetch_add(1, std::memory_order_relaxed);
    if (answer.code() != grpc::StatusCode::OK) {
      return FromGrpc(grpc::Status(static_cast<grpc::StatusCode>(answer.code()), answer.message()));
    }
    return LeaseInfoOf(answer.lease(), keys, sent);
  }
  return LeaseCall(req, keys, deadline);
}

absl::StatusOr<LeaseInfo> GrpcLeaseControl::LeaseCall(const v1::LeaseRequest& req,
                                                      std::span<const BlockKey> keys,
                                                      CallDeadline deadline) {
  absl::StatusOr<LeaseInfo> out;
  absl::Status st = WithRetries(options_, deadline, [&](grpc::ClientContext* ctx) {
    const CallDeadline sent = std::chrono::steady_clock::now();
    v1::LeaseResponse res;
    grpc::Status s = rpc_->stub->Lease(ctx, req, &res);
    if (!s.ok()) return s;
    out = LeaseInfoOf(res, keys, sent);
    return grpc::Status::OK;
  });
  if (!st.ok()) return st;
  return out;
}

void GrpcLeaseControl::ReleaseInBackground(uint64_t lease_id, uint64_t bytes_read) {
  // Nobody waits for it: a lost Release costs only the lease's TTL of pinned memory.
  v1::LeaseSessionRequest session_req;
  v1::ReleaseRequest& release = *session_req.mutable_release();
  release.set_tenant(options_.tenant);
  release.set_lease_id(lease_id);
  release.set_bytes_read(bytes_read);
  if (OnSession(session_req, kNoDeadline, nullptr)) return;
  struct Call {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    v1::ReleaseResponse res;
  };
  auto* call = new Call;
  PrepareCall(options_,
              std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.deadline_ms),
              &call->ctx);
  call->req.set_tenant(options_.tenant);
  call->req.set_lease_id(lease_id);
  call->req.set_bytes_read(bytes_read);
  {
    std::lock_guard lock(release_mu_);
    ++releases_in_flight_;
  }
  rpc_->stub->async()->Release(&call->ctx, &call->req, &call->res,
                               [call, this](const grpc::Status&) {
                                 delete call;
                                 std::lock_guard lock(release_mu_);
                                 if (--releases_in_flight_ == 0) release_done_.notify_all();
                               });
}

absl::Status GrpcLeaseControl::Release(uint64_t lease_id, uint64_t bytes_read,
                                       CallDeadline deadline) {
  v1::ReleaseRequest req;
  req.set_tenant(options_.tenant);
  req.set_lease_id(lease_id);
  req.set_bytes_read(bytes_read);
  return WithRetries(options_, deadline, [&](grpc::ClientContext* ctx) {
    v1::ReleaseResponse res;
    return rpc_->stub->Release(ctx, req, &res);
  });
}

absl::StatusOr<bool> GrpcLeaseControl::ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read,
                                                       CallDeadline deadline) {
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
  absl::Status st = WithRetries(options_, deadline, [&](grpc::ClientContext* ctx) {
    return rpc_->stub->Release(ctx, req, &res);
  });
  if (!st.ok()) return st;
  return res.unchanged();
}

absl::StatusOr<LeaseInfo> CacheClient::Lease(std::span<const BlockKey> keys, uint32_t ttl_ms) {
  return readers_->control->Lease(keys, ttl_ms, CallEnd(options_));
}

absl::Status CacheClient::Release(uint64_t lease_id, uint64_t bytes_read) {
  return readers_->control->Release(lease_id, bytes_read, CallEnd(options_));
}

absl::StatusOr<bool> CacheClient::ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read) {
  return readers_->control->ReleaseVerified(lease, bytes_read, CallEnd(options_));
}

void CacheClient::RegisterBuffer(std::span<uint8_t> buffer) {
  if (readers_->ucx != nullptr) readers_->ucx->RegisterBuffer(buffer);
}

TransferStats CacheClient::transfer_stats() const {
  const UcxReadStats u = readers_->ucx != nullptr ? readers_->ucx->stats() : UcxReadStats{};
  return {.ucx_bytes = u.ucx_bytes,
          .grpc_bytes = rpc_->grpc_bytes.load(),
          .session_gets = rpc_->session_gets.load(),
          .session_leases = readers_->control->session_leases(),
          .leases = u.leases,
          .lease_retries = u.lease_retries,
          .ucx_fallbacks = u.fallbacks,
          .ucx_connects = u.connects,
          .verified_reads = u.verified_reads};
}

absl::StatusOr<std::vector<std::optional<size_t>>> CacheClient::GetInto(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst) {
  if (dst.size() != keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("get: ", dst.size(), " buffers for ", keys.size(), " keys"));
  }
  Readers& r = *readers_;
  BlockReader* reader =
      r.ucx_or_grpc != nullptr ? static_cast<BlockReader*>(r.ucx_or_grpc.get()) : r.grpc.get();
  return reader->ReadBlocks(keys, dst, CallEnd(options_));
}

absl::Status CacheClient::ReadRanges(std::span<const RangeRead> reads, bool* over_ucx) {
  Readers& r = *readers_;
  if (r.ucx_or_grpc != nullptr) {
    return r.ucx_or_grpc->ReadRanges(reads, CallEnd(options_), over_ucx);
  }
  if (over_ucx != nullptr) *over_ucx = false;
  return r.grpc->ReadRanges(reads, CallEnd(options_));
}

}  // namespace kvtier
