#pragma once
// Pieces shared by the files of CacheClient (not part of its API).

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/block_reader.h"
#include "client/cache_client.h"
#include "client/retry.h"
#include "client/ucx_lease_reader.h"
#include "common/tier_proto.h"
#include "kvtier/v1/cache.grpc.pb.h"

namespace kvtier {
namespace client_internal {

inline absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// A tier the daemon named in its answer to `rpc`; INTERNAL for one this build does not know.
inline absl::StatusOr<Tier> TierFromDaemon(int tier, const char* rpc) {
  std::optional<Tier> t = TierFromProto(tier);
  if (!t.has_value()) {
    return absl::InternalError(
        absl::StrCat(rpc, ": the daemon named tier ", tier, ", unknown to this client"));
  }
  return *t;
}

// Get streams in progress in this process, over all clients: a Get alone reads on its own
// thread, one among others on gRPC's callback threads (see GetStream).
std::atomic<int>& GetsInFlight();

// The deadline of a whole call made now (total_deadline_ms), or none.
inline Deadline CallEnd(const ClientOptions& o) {
  if (o.total_deadline_ms <= 0) return kNoDeadline;
  return std::chrono::steady_clock::now() + std::chrono::milliseconds(o.total_deadline_ms);
}

inline RetryPolicy RetryPolicyOf(const ClientOptions& o) {
  return {.max_attempts = o.max_attempts,
          .attempt_ms = o.deadline_ms,
          .initial_backoff_ms = o.initial_backoff_ms,
          .max_backoff_ms = o.max_backoff_ms};
}

// Sets what every call of a client carries: its deadline and, with auth, its bearer token.
// REQUIRES: `deadline` is a time, not kNoDeadline (attempts have one: Retry).
inline void PrepareCall(const ClientOptions& o, Deadline deadline, grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    (deadline - std::chrono::steady_clock::now()));
  if (!o.bearer_token.empty()) ctx->AddMetadata("authorization", "Bearer " + o.bearer_token);
}

// Runs `attempt` (which returns a grpc::Status) with a fresh context per attempt, retried as
// Retry (retry.h) says: UNAVAILABLE, with jittered backoff, within `end`.
template <typename F>
absl::Status WithRetries(const ClientOptions& o, Deadline end, F attempt) {
  return Retry(RetryPolicyOf(o), end, RetryEnv{}, [&](Deadline attempt_deadline) {
    grpc::ClientContext ctx;
    PrepareCall(o, attempt_deadline, &ctx);
    return FromGrpc(attempt(&ctx));
  });
}

// Ends a client's long-lived stream (a session): its status, CANCELLED when it was still open;
// OK when there was none.
template <typename Stream>
grpc::Status CloseStream(std::unique_ptr<grpc::ClientContext>& ctx,
                         std::unique_ptr<Stream>& stream) {
  if (stream == nullptr) return grpc::Status::OK;
  ctx->TryCancel();
  grpc::Status st = stream->Finish();
  stream.reset();
  ctx.reset();
  return st;
}

struct Rpc {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::CacheService::Stub> stub;
  // Get and GetSession, called raw (GetStream parses their responses itself).
  std::unique_ptr<grpc::internal::RpcMethod> get_method;
  std::unique_ptr<grpc::internal::RpcMethod> session_method;
  // A GetSession stream, used by one Get at a time (see GetStream). Replaced when it breaks and
  // when half its deadline (the client's deadline_ms) has passed.
  struct Session {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::GetRequest, grpc::ByteBuffer>> stream;
    std::chrono::steady_clock::time_point renew_at;
    CallDeadline ends;  // the stream's deadline
    grpc::Status Close() { return CloseStream(ctx, stream); }
    ~Session() { (void)Close(); }
  };
  std::mutex session_mu;
  Session session;       // guarded by session_mu
  bool sessions = true;  // false once the daemon said it has no GetSession (session_mu)
  std::atomic<uint64_t> grpc_bytes{0}, session_gets{0};  // TransferStats'
};

// The daemon's control plane as UcxLeaseReader uses it, over the client's gRPC channel; also
// CacheClient's own Lease, Release and ReleaseVerified.
class GrpcLeaseControl final : public LeaseControl {
 public:
  GrpcLeaseControl(const ClientOptions& options, Rpc* rpc) : options_(options), rpc_(rpc) {}
  // Waits for the releases still in flight (each has a deadline): they point into this.
  ~GrpcLeaseControl() override;

  absl::StatusOr<std::optional<transfer::RemoteRegion>> DataPlane(CallDeadline deadline) override;
  absl::StatusOr<LeaseInfo> Lease(std::span<const BlockKey> keys, uint32_t ttl_ms,
                                  CallDeadline deadline) override;
  void ReleaseInBackground(uint64_t lease_id, uint64_t bytes_read) override;
  absl::StatusOr<bool> ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read,
                                       CallDeadline deadline) override;
  absl::Status Release(uint64_t lease_id, uint64_t bytes_read, CallDeadline deadline);

  uint64_t session_leases() const { return session_leases_.load(); }

 private:
  // One LeaseSession stream, used by one call at a time. Its answers come in order: a release
  // written without waiting (ReleaseInBackground) leaves its answer `pending`, read and dropped
  // before the next request's.
  struct Session {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::LeaseSessionRequest, v1::LeaseSessionResponse>>
        stream;
    CallDeadline ends;                             // the stream's deadline
    std::chrono::steady_clock::time_point renew_at;  // replaced after this
    int pending = 0;
    grpc::Status Close() { return CloseStream(ctx, stream); }
    ~Session() { (void)Close(); }
  };
  // Sends `request` on an idle session (or a new one) that ends no later than `end`; with
  // `answer`, waits for its answer there. False when no session could carry it (lease_session
  // off, a daemon without LeaseSession, a session that broke or would outlast `end`): the
  // caller then makes the call on its own.
  bool OnSession(const v1::LeaseSessionRequest& request, CallDeadline end,
                 v1::LeaseSessionResponse* answer);
  // An idle session, or a new one; null when there can be none.
  std::unique_ptr<Session> TakeSession(CallDeadline end);
  void GiveBack(std::unique_ptr<Session> session);
  // The Lease call on its own.
  absl::StatusOr<LeaseInfo> LeaseCall(const v1::LeaseRequest& request,
                                      std::span<const BlockKey> keys, CallDeadline deadline);

  const ClientOptions& options_;
  Rpc* rpc_;
  std::mutex release_mu_;
  std::condition_variable release_done_;
  int releases_in_flight_ = 0;  // guarded by release_mu_
  std::mutex sessions_mu_;
  std::vector<std::unique_ptr<Session>> idle_sessions_;  // guarded by sessions_mu_
  bool sessions_ = true;  // false once the daemon said it has no LeaseSession (sessions_mu_)
  std::atomic<uint64_t> session_leases_{0};
};

// How a client reads blocks (block_reader.h): gRPC, and with use_ucx UCX leases first.
// Destroyed in reverse: the fallback and the readers before what they use.
struct Readers {
  std::unique_ptr<GrpcLeaseControl> control;
  std::unique_ptr<DataTransport> transport;
  std::unique_ptr<GrpcBlockReader> grpc;
  std::unique_ptr<UcxLeaseReader> ucx;          // null without use_ucx
  std::unique_ptr<FallbackReader> ucx_or_grpc;  // null without use_ucx
};

}  // namespace client_internal
}  // namespace kvtier
