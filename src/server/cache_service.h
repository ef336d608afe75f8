#pragma once
// CacheServiceImpl: kvtier.v1.CacheService over one BlockStore (the gRPC edge of kvtierd).
//
// Tenant isolation: the store never sees a client's key. Each (tenant, key) becomes the store key
// XXH3-128("KVTIER/TENANT/1" || u32le(len(tenant)) || tenant || key), parents likewise, so no key
// a tenant can send names another tenant's block. Errors are absl::Status inside and become
// gRPC status codes here. Thread-safe (the store is).

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "cache/block_store.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/mutex.h"
#include "common/split_runner.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "server/block_events.h"
#include "server/idle_watchdog.h"
#include "server/inflight.h"
#include "server/lease_handles.h"
#include "server/tenants.h"

namespace kvtier::transfer {
class ReadGrant;
class UcxServer;
struct RegionRange;
}  // namespace kvtier::transfer

namespace kvtier::server {

class DaemonMetrics;
class TenantAuth;

struct ServiceLimits {
  size_t max_keys_per_request = 1 << 20;  // Default: 1,048,576. Keys in one Lookup/Lease/Delete.
  // Default: 65,536. Keys in one Get (each answered with a message of its own, so a request's
  // work is bounded; the clients ask for longer Gets in pieces).
  size_t max_keys_per_get = 1 << 16;
  size_t get_chunk_bytes = 16 << 20;      // Default: 16 MiB. Payload bytes per Get message.
  size_t max_tenant_bytes = 256;          // Default: 256. Longest tenant name.
  // Default: 4 GiB. Payload bytes held for Puts being received and Gets being sent, in total.
  uint64_t max_inflight_bytes = uint64_t{4} << 30;
  // Default: 1 GiB. The same, per client connection.
  uint64_t max_inflight_bytes_per_connection = uint64_t{1} << 30;
  // Default: 0, meaning a quarter of the host tier (at least its largest block). The same, per
  // tenant: a Put's bytes are reserved in the host tier, which no other put can then use.
  uint64_t max_inflight_bytes_per_tenant = 0;
  // Default: 0, meaning a quarter of the host tier (at least its largest block). Bytes of blocks
  // under one tenant's live leases (which the store cannot evict).
  uint64_t max_leased_bytes_per_tenant = 0;
  // Default: 30 s. A Put stream that sends nothing, or a Get whose client reads nothing, for this
  // long is cancelled, giving back what it held. 0: never.
  std::chrono::milliseconds stream_idle_timeout{30'000};
};

class CacheServiceImpl final : public kvtier::v1::CacheService::Service {
 public:
  using GetWriter = grpc::internal::WriterInterface<grpc::ByteBuffer>;

  // `metrics` may be null (no /metrics endpoint), `auth` null (no tokens required). None is owned.
  CacheServiceImpl(BlockStore* store, ServiceLimits limits = {}, DaemonMetrics* metrics = nullptr,
                   const TenantAuth* auth = nullptr);
  ~CacheServiceImpl() override { DetachStore(); }

  // RPCs being served right now (for a graceful shutdown).
  int in_flight() const { return in_flight_.load(); }
  // Starts a graceful stop: calls that begin from now on (Get requests on open sessions too) are
  // answered UNAVAILABLE, so in_flight() only falls.
  void Drain() { draining_.store(true); }
  // Payload bytes held for requests in progress.
  uint64_t inflight_bytes() const { return inflight_bytes_.total(); }
  // The limits in force (those left to a share of the host tier made concrete).
  const ServiceLimits& limits() const { return limits_; }
  // Call after the server has stopped and before the store is closed: host blocks that gRPC still
  // references (a zero-copy Get's buffers can outlive the call) are then no longer unpinned.
  void DetachStore();

  // Put and GetSession read their requests raw and parse each one themselves: gRPC ends a client
  // stream quietly at a message it cannot parse (bad bytes, a string that is not UTF-8), which
  // would answer OK for a stream cut short.
  grpc::Status Put(grpc::ServerContext* ctx, grpc::ServerReader<grpc::ByteBuffer>* reader,
                   v1::PutResponse* response);
  // Get is served raw (see GetImpl): its responses are assembled as byte buffers.
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* request, GetWriter* writer);
  // Each request as Get (counted in flight and timed as one); the session itself is long-lived
  // and not counted in in_flight().
  grpc::Status GetSession(grpc::ServerContext* ctx,
                          grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream);
  // Each request as Lease or Release (counted and timed as one), its status in its answer; the
  // session itself is long-lived and not counted in in_flight().
  grpc::Status LeaseSession(grpc::ServerContext* ctx,
                            grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream);
  grpc::Status Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* request,
                      v1::LookupResponse* response) override;
  grpc::Status Lease(grpc::ServerContext* ctx, const v1::LeaseRequest* request,
                     v1::LeaseResponse* response) override;
  grpc::Status Release(grpc::ServerContext* ctx, const v1::ReleaseRequest* request,
                       v1::ReleaseResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* request,
                      v1::DeleteResponse* response) override;
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;
  grpc::Status DataPlane(grpc::ServerContext* ctx, const v1::DataPlaneRequest* request,
                         v1::DataPlaneResponse* response) override;
  // Long-lived: not counted in in_flight() (a shutdown does not wait for watchers).
  grpc::Status WatchBlocks(grpc::ServerContext* ctx, const v1::WatchBlocksRequest* request,
                           grpc::ServerWriter<v1::BlockEventBatch>* writer) override;

  // The events WatchBlocks serves, and the tenants' numbers and resident usage that the store's
  // events feed (neither owned; both outlive the service). Call before serving; without them
  // WatchBlocks is UNIMPLEMENTED and resident usage reads 0.
  void SetBlockEvents(BlockEvents* events, Tenants* tenants) {
    events_ = events;
    tenants_ = tenants;
  }

  // One tenant's usage now (its name, unnumbered, reads as nothing held).
  v1::TenantUsage UsageOf(const std::string& tenant);
  // Usage of every numbered tenant.
  std::vector<v1::TenantUsage> AllUsage();
  // Calls the idle-stream watchdog cancelled.
  uint64_t idle_cancels() const { return idle_.cancelled(); }

  // Offers `ucx` (the host arena's UCX data plane; not owned, outlives the service) to clients.
  // Call before serving.
  void SetDataPlane(const transfer::UcxServer* ucx) { ucx_ = ucx; }
  // What the data plane's served reads ask (ucx.mode served): whether a lease handle covers the
  // ranges. Valid while the service and its store are.
  std::function<absl::StatusOr<std::unique_ptr<transfer::ReadGrant>>(
      uint64_t, std::span<const transfer::RegionRange>)>
  ServedReadAuthorizer();

 private:
  // `*tenant` is set to the tenant the stream names.
  grpc::Status PutImpl(grpc::ServerContext* ctx, grpc::ServerReader<grpc::ByteBuffer>* reader,
                       v1::PutResponse* response, std::string* tenant);
  grpc::Status GetImpl(grpc::ServerContext* ctx, const v1::GetRequest* request, GetWriter* writer);
  // The GetResponse messages of one present block (key index `i`): a host-tier block goes out in
  // one message that references the arena (pinned until gRPC has sent it); others are read (and
  // promoted) into a new buffer, in chunks of at most get_chunk_bytes.
  absl::StatusOr<std::vector<grpc::ByteBuffer>> GetResponseFor(const v1::GetRequest& request,
                                                               size_t i, const BlockKey& key,
                                                               const BlockInfo& info);
  grpc::Status LookupImpl(grpc::ServerContext* ctx, const v1::LookupRequest* request,
                          v1::LookupResponse* response);
  grpc::Status LeaseImpl(grpc::ServerContext* ctx, const v1::LeaseRequest* request,
                         v1::LeaseResponse* response);
  grpc::Status ReleaseImpl(grpc::ServerContext* ctx, const v1::ReleaseRequest* request,
                           v1::ReleaseResponse* response);
  grpc::Status DeleteImpl(grpc::ServerContext* ctx, const v1::DeleteRequest* request,
                          v1::DeleteResponse* response);
  grpc::Status StatsImpl(grpc::ServerContext* ctx, const v1::StatsRequest* request,
                         v1::StatsResponse* response);
  grpc::Status DataPlaneImpl(grpc::ServerContext* ctx, const v1::DataPlaneRequest* request,
                             v1::DataPlaneResponse* response);
  // WatchBlocks on any writer (it is served raw, see ParseOwnRequest).
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchBlocksRequest* request,
                           grpc::internal::WriterInterface<v1::BlockEventBatch>* writer);
  // Serves the one-request method `index` (.proto order) from raw bytes, which it parses itself:
  // a request that does not parse is INVALID_ARGUMENT (gRPC would say INTERNAL), then `method`.
  template <typename Request, typename Response>
  using UnaryMethod = grpc::Status (CacheServiceImpl::*)(grpc::ServerContext*, const Request*,
                                                         Response*);
  template <typename Request, typename Response>
  void ParseOwnRequest(const char* rpc, UnaryMethod<Request, Response> method);
  // Runs an RPC body: counts it in flight, records its latency and status code, and logs a
  // client's error (rate-limited) with the tenant (as `tenant` reads once the body has run).
  template <typename F>
  grpc::Status Observed(const char* rpc, const grpc::ServerContext* ctx, const std::string& tenant,
                        F body);
  void LogClientError(const char* rpc, const grpc::ServerContext* ctx, const std::string& tenant,
                      const grpc::Status& st);

  // The tenant name is valid and, with auth on, the caller's token grants it.
  absl::Status CheckTenant(const grpc::ServerContext* ctx, const std::string& tenant) const;
  // Reserves `n` payload bytes for the caller's connection and tenant until the Hold is destroyed.
  absl::StatusOr<InflightBytes::Hold> HoldBytes(const grpc::ServerContext* ctx, uint16_t tenant,
                                                uint64_t n);
  // The tenant's number for the store and the limits (Tenants::kOther without SetBlockEvents).
  uint16_t TenantId(const std::string& tenant);
  // Whose view a Stats or WatchBlocks call gets: the whole daemon (auth off, or a cluster token),
  // or one tenant's only (a tenant's token). `named` is the tenant the request names, if any.
  struct View {
    bool whole = false;
    std::string tenant;  // empty: none named
  };
  absl::StatusOr<View> ViewOf(const grpc::ServerContext* ctx, const std::string& named) const;
  // Which limit a request's key count is held to: max_keys_per_get for a Get, else
  // max_keys_per_request.
  enum class KeyLimit { kRequest, kGet };
  size_t MaxKeys(KeyLimit limit) const;
  // How many keys the request names, once the tenant and the keys' form are checked.
  // `keys` or `packed` (16 bytes a key) must be given, not both.
  absl::StatusOr<size_t> CheckedKeyCount(
      const grpc::ServerContext* ctx, const std::string& tenant,
      const google::protobuf::RepeatedPtrField<std::string>& keys, const std::string& packed,
      KeyLimit limit = KeyLimit::kRequest) const;
  // The store keys of `keys` (16 bytes each) for `tenant`, checked as CheckedKeyCount does.
  absl::StatusOr<std::vector<BlockKey>> StoreKeys(
      const grpc::ServerContext* ctx, const std::string& tenant,
      const google::protobuf::RepeatedPtrField<std::string>& keys, const std::string& packed,
      KeyLimit limit = KeyLimit::kRequest) const;

  // PutAssembly's sink over store_ for one Put call (cache_service.cc).
  class StorePutSink;

  // Counts an RPC in flight for its lifetime.
  class InFlight {
   public:
    explicit InFlight(std::atomic<int>* n) : n_(n) { n_->fetch_add(1); }
    ~InFlight() { n_->fetch_sub(1); }

   private:
    std::atomic<int>* n_;
  };

  // Unpins the host blocks that zero-copy Gets lent to gRPC. Shared with every lent buffer, so it
  // outlives the service.
  struct PinLedger {
    Mutex mu;
    BlockStore* store ABSL_GUARDED_BY(mu);
  };

  // Lookups of this many packed keys or more are split in two (SplitRunner).
  static constexpr size_t kSplitLookupKeys = 2048;

  BlockStore* store_;
  std::shared_ptr<PinLedger> pins_;
  ServiceLimits limits_;
  DaemonMetrics* metrics_;
  const TenantAuth* auth_;
  const transfer::UcxServer* ucx_ = nullptr;
  BlockEvents* events_ = nullptr;
  Tenants* tenants_ = nullptr;
  SplitRunner lookup_split_;  // the second half of long Lookups
  std::atomic<int> in_flight_{0};
  std::atomic<bool> draining_{false};
  InflightBytes inflight_bytes_;
  IdleWatchdog idle_;
  LogLimiter client_error_log_{10};  // lines a second
  LeaseHandles lease_handles_;  // the lease ids clients see
  const Clock* store_clock_;    // the store's clock, on which leases lapse
};

// absl::Status -> grpc::Status (the code numbers are the same).
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace kvtier::server
