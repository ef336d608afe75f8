#include "server/cache_service.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/method_handler.h>
#include <xxhash.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/internal/le_bytes.h"
#include "common/status_macros.h"
#include "common/tier_proto.h"
#include "server/auth.h"
#include "common/rpc_metrics.h"
#include "server/metrics.h"
#include "server/served_reads.h"
#include "spdlog/spdlog.h"
#include "server/put_assembly.h"
#include "server/request_keys.h"
#include "transfer/ucx_server.h"

namespace kvtier::server {
namespace {

// CacheService's method `name`: its index in the generated service, which lists the methods in
// .proto order as the descriptor does. Looked up by name, so that a reordered cache.proto cannot
// bind a raw handler to another method; a name the proto lacks stops the daemon at start.
int MethodIndex(const char* name) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::CacheService::service_full_name());
  const google::protobuf::MethodDescriptor* method =
      service == nullptr ? nullptr : service->FindMethodByName(name);
  if (method == nullptr) {
    std::fprintf(stderr, "kvtierd: CacheService has no method %s\n", name);
    std::abort();
  }
  return method->index();
}

// The next message of a raw client stream as `Message`: true with it parsed; false at the end of
// the stream, with `*status` OK, or at a message that does not parse, with INVALID_ARGUMENT.
template <typename Reader, typename Message>
bool ReadMessage(Reader* reader, Message* msg, const char* rpc, grpc::Status* status) {
  grpc::ByteBuffer bb;
  *status = grpc::Status::OK;
  if (!reader->Read(&bb)) return false;
  if (!grpc::SerializationTraits<Message>::Deserialize(&bb, msg).ok()) {
    *status =
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat(rpc, ": a message that is not a ", Message::descriptor()->name(),
                                  " (malformed, or a string that is not UTF-8)"));
    return false;
  }
  return true;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

// Limits left at 0 ("a share of the host tier") made concrete for `store`.
ServiceLimits Resolved(ServiceLimits limits, const BlockStore& store) {
  const uint64_t share = std::max<uint64_t>(store.options().host_bytes / 4,
                                            store.options().max_block_bytes);
  if (limits.max_inflight_bytes_per_tenant == 0) limits.max_inflight_bytes_per_tenant = share;
  if (limits.max_leased_bytes_per_tenant == 0) limits.max_leased_bytes_per_tenant = share;
  return limits;
}

}  // namespace

CacheServiceImpl::CacheServiceImpl(BlockStore* store, ServiceLimits limits, DaemonMetrics* metrics,
                                   const TenantAuth* auth)
    : store_(store),
      pins_(std::make_shared<PinLedger>()),
      limits_(Resolved(limits, *store)),
      metrics_(metrics),
      auth_(auth),
      inflight_bytes_(limits_.max_inflight_bytes, limits_.max_inflight_bytes_per_connection,
                      limits_.max_inflight_bytes_per_tenant,
                      [metrics](uint64_t total) {
                        if (metrics != nullptr) metrics->SetInflightBytes(total);
                      }),
      idle_(limits_.stream_idle_timeout),
      store_clock_(store->options().clock != nullptr ? store->options().clock
                                                     : SystemClock::Default()) {
  {
    MutexLock lock(&pins_->mu);
    pins_->store = store;
  }
  if (metrics_ != nullptr) metrics_->SetInflightLimit(limits_.max_inflight_bytes);
  // Get is re-registered with raw byte-buffer responses, so that a block can leave from the arena
  // without being copied into a message first. The wire format is unchanged.
  MarkMethodStreamed(
      MethodIndex("Get"),
      new grpc::internal::SplitServerStreamingHandler<v1::GetRequest, grpc::ByteBuffer>(
          [this](grpc::ServerContext* ctx,
                 grpc::ServerSplitStreamer<v1::GetRequest, grpc::ByteBuffer>* stream) {
            v1::GetRequest request;
            if (!stream->Read(&request)) {
              return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "get: no request");
            }
            return Get(ctx, &request, stream);
          }));
  MarkMethodStreamed(MethodIndex("GetSession"),
                     new grpc::internal::BidiStreamingHandler<CacheServiceImpl, grpc::ByteBuffer,
                                                              grpc::ByteBuffer>(
                         [](CacheServiceImpl* self, grpc::ServerContext* ctx,
                            grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
                           return self->GetSession(ctx, stream);
                         },
                         this));
  MarkMethodStreamed(MethodIndex("LeaseSession"),
                     new grpc::internal::BidiStreamingHandler<CacheServiceImpl, grpc::ByteBuffer,
                                                              grpc::ByteBuffer>(
                         [](CacheServiceImpl* self, grpc::ServerContext* ctx,
                            grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
                           return self->LeaseSession(ctx, stream);
                         },
                         this));
  // gRPC answers a request it cannot parse with INTERNAL; the contract says INVALID_ARGUMENT,
  // which these methods now answer themselves (the parse is the same work gRPC did).
  ParseOwnRequest("Lookup", &CacheServiceImpl::Lookup);
  ParseOwnRequest("Lease", &CacheServiceImpl::Lease);
  ParseOwnRequest("Release", &CacheServiceImpl::Release);
  ParseOwnRequest("Delete", &CacheServiceImpl::Delete);
  ParseOwnRequest("Stats", &CacheServiceImpl::Stats);
  ParseOwnRequest("DataPlane", &CacheServiceImpl::DataPlane);
  MarkMethodStreamed(
      MethodIndex("WatchBlocks"),
      new grpc::internal::SplitServerStreamingHandler<grpc::ByteBuffer, v1::BlockEventBatch>(
          [this](grpc::ServerContext* ctx,
                 grpc::ServerSplitStreamer<grpc::ByteBuffer, v1::BlockEventBatch>* stream) {
            v1::WatchBlocksRequest request;
            grpc::Status read;
            if (!ReadMessage(stream, &request, "WatchBlocks", &read)) {
              return read.ok() ? grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                              "WatchBlocks: no request")
                               : read;
            }
            return WatchEvents(ctx, &request, stream);
          }));
  // Put reads raw messages too (see Put in the header). A client stream served as the
  // bidirectional kind, as gRPC serves every streamed method: one response, written at the end.
  MarkMethodStreamed(MethodIndex("Put"),
                     new grpc::internal::ClientStreamingHandler<CacheServiceImpl, grpc::ByteBuffer,
                                                                v1::PutResponse>(
                         [](CacheServiceImpl* self, grpc::ServerContext* ctx,
                            grpc::ServerReader<grpc::ByteBuffer>* reader,
                            v1::PutResponse* response) { return self->Put(ctx, reader, response); },
                         this));
}

template <typename Request, typename Response>
void CacheServiceImpl::ParseOwnRequest(const char* rpc, UnaryMethod<Request, Response> method) {
  MarkMethodStreamed(
      MethodIndex(rpc), new grpc::internal::StreamedUnaryHandler<grpc::ByteBuffer, Response>(
                 [this, rpc, method](grpc::ServerContext* ctx,
                                     grpc::ServerUnaryStreamer<grpc::ByteBuffer, Response>* stream) {
                   Request request;
                   grpc::Status read;
                   if (!ReadMessage(stream, &request, rpc, &read)) {
                     if (read.ok()) {
                       read = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                           absl::StrCat(rpc, ": no request"));
                     }
                     return Observed(rpc, ctx, "", [&] { return read; });
                   }
                   Response response;
                   grpc::Status st = (this->*method)(ctx, &request, &response);
                   if (st.ok()) stream->Write(response);
                   return st;
                 }));
}

void CacheServiceImpl::DetachStore() {
  MutexLock lock(&pins_->mu);
  pins_->store = nullptr;
}

absl::StatusOr<InflightBytes::Hold> CacheServiceImpl::HoldBytes(const grpc::ServerContext* ctx,
                                                                uint16_t tenant, uint64_t n) {
  const std::string peer = ctx->peer();
  if (absl::Status st = inflight_bytes_.Acquire(peer, tenant, n); !st.ok()) return st;
  return InflightBytes::Hold(&inflight_bytes_, peer, tenant, n);
}

uint16_t CacheServiceImpl::TenantId(const std::string& tenant) {
  return tenants_ != nullptr ? tenants_->Id(tenant) : Tenants::kOther;
}

template <typename F>
grpc::Status CacheServiceImpl::Observed(const char* rpc, const grpc::ServerContext* ctx,
                                        const std::string& tenant, F body) {
  InFlight guard(&in_flight_);  // counted before the check, so Drain's waiter sees it
  const auto start = std::chrono::steady_clock::now();
  grpc::Status st = draining_.load()
                        ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "kvtierd is stopping")
                        : body();
  if (metrics_ != nullptr) {
    metrics_->ObserveRpc(
        rpc, st.error_code(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  LogClientError(rpc, ctx, tenant, st);
  return st;
}

void CacheServiceImpl::LogClientError(const char* rpc, const grpc::ServerContext* ctx,
                                      const std::string& tenant, const grpc::Status& st) {
  switch (st.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      break;
    default:
      return;  // OK, a miss (NOT_FOUND), a cancelled call, or the daemon's own errors
  }
  uint64_t dropped = 0;
  if (!client_error_log_.Allow(&dropped)) return;
  // The tenant is the client's string: printed escaped and cut short.
  std::string who = absl::CHexEscape(tenant.substr(0, 64));
  spdlog::warn("client error: {} tenant '{}' peer {}: {}: {}{}", rpc, who, ctx->peer(),
               StatusCodeName(st.error_code()), st.error_message(),
               dropped > 0 ? absl::StrCat(" (", dropped, " more not logged)") : "");
}

absl::Status CacheServiceImpl::CheckTenant(const grpc::ServerContext* ctx,
                                           const std::string& tenant) const {
  KVTIER_RETURN_IF_ERROR(CheckTenantName(tenant, limits_.max_tenant_bytes));
  if (auth_ != nullptr) return auth_->Check(*ctx, tenant);
  return absl::OkStatus();
}

size_t CacheServiceImpl::MaxKeys(KeyLimit limit) const {
  return limit == KeyLimit::kGet ? limits_.max_keys_per_get : limits_.max_keys_per_request;
}

absl::StatusOr<size_t> CacheServiceImpl::CheckedKeyCount(
    const grpc::ServerContext* ctx, const std::string& tenant,
    const google::protobuf::RepeatedPtrField<std::string>& keys, const std::string& packed,
    KeyLimit limit) const {
  KVTIER_RETURN_IF_ERROR(CheckTenant(ctx, tenant));
  KVTIER_ASSIGN_OR_RETURN(const size_t n, KeyCount(keys, packed, SIZE_MAX));
  const bool get = limit == KeyLimit::kGet;
  if (n > MaxKeys(limit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        n, " keys exceed the limit of ", MaxKeys(limit),
        get ? " per Get (limits.max_keys_per_get); ask in pieces"
            : " per request (limits.max_keys_per_request)"));
  }
  return n;
}

absl::StatusOr<std::vector<BlockKey>> CacheServiceImpl::StoreKeys(
    const grpc::ServerContext* ctx, const std::string& tenant,
    const google::protobuf::RepeatedPtrField<std::string>& keys, const std::string& packed,
    KeyLimit limit) const {
  KVTIER_RETURN_IF_ERROR(CheckedKeyCount(ctx, tenant, keys, packed, limit).status());
  return StoreKeysOf(tenant, keys, packed, MaxKeys(limit));
}

// PutAssembly's sink over the store, for one Put call: the caller's tenant and connection, and
// the block being received with its bytes counted against the limits.
class CacheServiceImpl::StorePutSink final : public PutSink {
 public:
  StorePutSink(CacheServiceImpl* service, const grpc::ServerContext* ctx)
      : service_(service), ctx_(ctx) {}

  absl::Status Tenant(const std::string& tenant) override {
    tenant_ = tenant;  // named in the log of a refusal too
    KVTIER_RETURN_IF_ERROR(service_->CheckTenant(ctx_, tenant));
    tenant_id_ = service_->TenantId(tenant);
    return absl::OkStatus();
  }
  absl::Status Begin(const BlockKey& key, const BlockKey& parent, uint64_t size,
                     const PutOptions& options) override {
    KVTIER_ASSIGN_OR_RETURN(held_, service_->HoldBytes(ctx_, tenant_id_, size));
    PutOptions opts = options;
    opts.tenant = tenant_id_;
    KVTIER_ASSIGN_OR_RETURN(
        block_, service_->store_->BeginPut(TenantKey(tenant_, key), TenantKey(tenant_, parent),
                                           size, opts));
    return absl::OkStatus();
  }
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data) override {
    return block_->Write(offset, data);
  }
  const std::string& tenant() const { return tenant_; }
  absl::StatusOr<PutResult> Commit() override {
    absl::StatusOr<PutResult> put = block_->Commit();
    block_.reset();
    held_.Reset();
    return put;
  }

 private:
  CacheServiceImpl* service_;
  const grpc::ServerContext* ctx_;
  std::string tenant_;
  uint16_t tenant_id_ = Tenants::kOther;
  std::optional<BlockStore::PutHandle> block_;  // the block being received
  InflightBytes::Hold held_;                    // its bytes
};

grpc::Status CacheServiceImpl::PutImpl(grpc::ServerContext* ctx,
                                       grpc::ServerReader<grpc::ByteBuffer>* reader,
                                       v1::PutResponse* response, std::string* tenant) {
  StorePutSink sink(this, ctx);
  PutAssembly assembly(&sink);
  v1::PutRequest msg;
  grpc::Status read;
  absl::Status st;
  IdleWatchdog::Watch watch = idle_.Arm(ctx);
  while (st.ok() && ReadMessage(reader, &msg, "put", &read)) {
    watch.Touch();
    st = assembly.Add(msg);
  }
  *tenant = sink.tenant();
  // What was committed before an error stays, and is counted.
  response->set_stored(assembly.stored());
  response->set_present(assembly.present());
  if (!st.ok()) return ToGrpc(st);
  // The token is checked with the tenant, which the first message names: a stream that named
  // none must still carry a valid one.
  if (tenant->empty() && auth_ != nullptr) {
    if (auto who = auth_->Authenticate(*ctx); !who.ok()) return ToGrpc(who.status());
  }
  if (!read.ok()) return read;
  if (watch.fired()) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        absl::StrCat("put: the stream sent nothing for ",
                                     limits_.stream_idle_timeout.count(),
                                     " ms (limits.stream_idle_timeout_s)"));
  }
  // The stream ended inside a block (or the client went away): it is dropped, never visible.
  return ToGrpc(assembly.Finish());
}

namespace {

// A host-tier block lent to gRPC: unpinned when gRPC drops its last reference to the bytes.
template <typename Ledger>
struct PinnedSlice {
  std::shared_ptr<Ledger> ledger;
  BlockStore::PinnedBlock block;
  static void Release(void* p) {
    auto* self = static_cast<PinnedSlice*>(p);
    {
      MutexLock lock(&self->ledger->mu);
      if (self->ledger->store != nullptr) self->ledger->store->UnpinHostBlock(self->block);
    }
    delete self;
  }
};

// The wire prefix of a GetResponse: header (field 1), found (field 2), and the tag and length of
// data (field 3) when `data_bytes` follow. Field order as protobuf writes it.
std::string ResponsePrefix(const v1::GetResponse& head, size_t data_bytes) {
  std::string out = head.SerializeAsString();
  if (data_bytes > 0) {
    google::protobuf::io::StringOutputStream s(&out);
    google::protobuf::io::CodedOutputStream c(&s);
    c.WriteTag(google::protobuf::internal::WireFormatLite::MakeTag(
        v1::GetResponse::kDataFieldNumber,
        google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    c.WriteVarint64(data_bytes);
  }
  return out;
}

grpc::ByteBuffer Serialized(const v1::GetResponse& msg) {
  grpc::ByteBuffer bb;
  bool own = false;
  (void)grpc::SerializationTraits<v1::GetResponse>::Serialize(msg, &bb, &own);
  return bb;
}

}  // namespace

absl::StatusOr<std::vector<grpc::ByteBuffer>> CacheServiceImpl::GetResponseFor(
    const v1::GetRequest& request, size_t i, const BlockKey& key, const BlockInfo& info) {
  v1::GetResponse head;
  head.mutable_header()->set_key(KeyBytes(request, i));
  head.set_found(true);
  if (info.size <= limits_.get_chunk_bytes) {
    auto pinned = store_->PinHostBlock(key);
    // The caller's own check stands in for this one; it asks again without client_verifies
    // if a block arrives damaged.
    if (pinned.ok() &&
        (request.client_verifies() || Checksum(pinned->data, pinned->size) == pinned->checksum)) {
      head.mutable_header()->set_size(pinned->size);
      head.mutable_header()->set_checksum(pinned->checksum);
      const std::string prefix = ResponsePrefix(head, pinned->size);
      grpc::Slice slices[2] = {grpc::Slice(prefix),
                               grpc::Slice(const_cast<uint8_t*>(pinned->data), pinned->size,
                                           &PinnedSlice<PinLedger>::Release,
                                           new PinnedSlice<PinLedger>{pins_, *pinned})};
      std::vector<grpc::ByteBuffer> out;
      out.emplace_back(slices, 2);
      return out;
    }
    if (pinned.ok()) store_->UnpinHostBlock(*pinned);  // Get below drops the damaged copy
  }
  // NVMe (promoted by the read), HBM, a damaged host copy, or a block too large for one message.
  std::vector<uint8_t> buf(info.size);
  auto n = store_->Get(key, std::span(buf));
  if (!n.ok()) return n.status();
  head.mutable_header()->set_size(*n);
  head.mutable_header()->set_checksum(info.checksum);
  std::vector<grpc::ByteBuffer> out;
  for (size_t off = 0; off < *n || off == 0; off += limits_.get_chunk_bytes) {
    head.set_data(buf.data() + off, std::min(limits_.get_chunk_bytes, *n - off));
    out.push_back(Serialized(head));
    head.clear_header();  // the later chunks carry data only
    head.clear_found();
  }
  return out;
}

grpc::Status CacheServiceImpl::GetImpl(grpc::ServerContext* ctx, const v1::GetRequest* request,
                                       GetWriter* writer) {
  auto keys = StoreKeys(ctx, request->tenant(), request->keys(), request->packed_keys(),
                       KeyLimit::kGet);
  if (!keys.ok()) return ToGrpc(keys.status());
  const uint16_t tenant_id = TenantId(request->tenant());
  IdleWatchdog::Watch watch = idle_.Arm(ctx);
  for (size_t i = 0; i < keys->size(); ++i) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    const BlockKey& key = (*keys)[i];
    auto info = store_->Stat(key);
    absl::StatusOr<std::vector<grpc::ByteBuffer>> msgs;
    InflightBytes::Hold held;
    if (info.ok()) {
      auto hold = HoldBytes(ctx, tenant_id, info->size);
      if (!hold.ok()) return ToGrpc(hold.status());
      held = std::move(*hold);
      msgs = GetResponseFor(*request, i, key, *info);
    } else {
      if (info.status().code() == absl::StatusCode::kNotFound) store_->CountGetMiss();
      msgs = info.status();
    }
    const bool found = msgs.ok();
    if (!msgs.ok()) {
      if (msgs.status().code() == absl::StatusCode::kDataLoss) {
        // The store names its own (tenant) key; the caller knows the block by its key.
        const std::string asked = KeyBytes(*request, i);
        return grpc::Status(
            grpc::StatusCode::DATA_LOSS,
            absl::StrCat("block ",
                         BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(asked.data())).Hex(),
                         " failed its checksum in the daemon and was dropped"));
      }
      if (msgs.status().code() != absl::StatusCode::kNotFound) return ToGrpc(msgs.status());
      v1::GetResponse missing;
      missing.mutable_header()->set_key(KeyBytes(*request, i));
      missing.set_found(false);
      msgs = std::vector<grpc::ByteBuffer>{Serialized(missing)};
    }
    for (const grpc::ByteBuffer& msg : *msgs) {
      watch.Touch();
      if (!writer->Write(msg)) {
        if (watch.fired()) {
          return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                              absl::StrCat("get: the client read nothing for ",
                                           limits_.stream_idle_timeout.count(), " ms"));
        }
        return grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
      }
    }
    if (found && metrics_ != nullptr) metrics_->AddServedBytes(info->tier, info->size);
  }
  return grpc::Status::OK;
}

grpc::Status CacheServiceImpl::LookupImpl(grpc::ServerContext* ctx,
                                          const v1::LookupRequest* request,
                                          v1::LookupResponse* response) {
  const std::string& packed = request->packed_keys();
  LookupResult r;
  if (request->keys().empty() && packed.size() / BlockKey::kBytes >= kSplitLookupKeys) {
    auto n = CheckedKeyCount(ctx, request->tenant(), request->keys(), packed);
    if (!n.ok()) return ToGrpc(n.status());
    // Tenant keys and index probes are most of a long Lookup's time: each half of the chain is
    // keyed and looked up on a thread of its own (where the helper is free).
    std::vector<BlockKey> keys(*n);
    const size_t half = *n / 2;
    LookupResult second;
    auto piece = [&](size_t begin, size_t end, LookupResult* out) {
      PackedStoreKeys(request->tenant(), packed, begin, end, keys.data());
      *out = store_->LookupPiece(std::span(keys).subspan(begin, end - begin));
    };
    lookup_split_.Run([&] { piece(0, half, &r); }, [&] { piece(half, *n, &second); });
    if (r.matched == half) {
      r.tiers.insert(r.tiers.end(), second.tiers.begin(), second.tiers.end());
      r.matched += second.matched;
    }
    store_->CountLookup(*n, r);
  } else {
    auto keys = StoreKeys(ctx, request->tenant(), request->keys(), packed);
    if (!keys.ok()) return ToGrpc(keys.status());
    r = store_->Lookup(*keys);
  }
  response->set_matched(static_cast<uint32_t>(r.matched));
  response->mutable_tiers()->Reserve(static_cast<int>(r.tiers.size()));
  for (Tier t : r.tiers) response->add_tiers(TierToProto(t));
  return grpc::Status::OK;
}

grpc::Status CacheServiceImpl::LeaseImpl(grpc::ServerContext* ctx, const v1::LeaseRequest* request,
                                         v1::LeaseResponse* response) {
  auto keys = StoreKeys(ctx, request->tenant(), request->keys(), request->packed_keys());
  if (!keys.ok()) return ToGrpc(keys.status());
  const auto start = std::chrono::steady_clock::now();
  auto grant = store_->Lease(*keys, int64_t{request->ttl_ms()} * 1000);
  if (!grant.ok()) return ToGrpc(grant.status());
  uint64_t bytes = 0;
  for (const BlockInfo& b : grant->blocks) bytes += b.size;

  // The sizes are known once granted: a lease that takes the tenant past its share is given back.
  uint64_t held = 0, adding = 0;
  const std::optional<uint64_t> handle = lease_handles_.IssueWithin(
      {.id = grant->id,
       .bytes = bytes,
       .expires_at_us = grant->expires_at_us,
       .tenant = request->tenant(),
       .blocks = SortedByPlace(grant->blocks)},
      store_clock_->NowMicros(), limits_.max_leased_bytes_per_tenant, &held, &adding);
  if (!handle.has_value()) {
    store_->Release(grant->id).IgnoreError();  // NOT_FOUND only if it lapsed already
    return ToGrpc(absl::ResourceExhaustedError(absl::StrCat(
        "lease: this tenant holds ", held, " leased bytes; ", adding,
        " more would pass the limit of ", limits_.max_leased_bytes_per_tenant,
        " (limits.max_leased_mib_per_tenant); release leases first")));
  }
  response->set_lease_id(*handle);
  if (metrics_ != nullptr) {
    metrics_->ObserveLease(
        grant->blocks.size(), bytes, grant->promoted,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  response->set_expires_in_ms(request->ttl_ms() != 0 ? request->ttl_ms()
                                                     : store_->options().lease_ttl_us / 1000);
  for (size_t i = 0; i < grant->blocks.size(); ++i) {
    const BlockInfo& b = grant->blocks[i];
    v1::LeasedBlock* out = response->add_blocks();
    out->set_key(KeyBytes(*request, i));
    out->set_tier(TierToProto(b.tier));
    out->set_size(b.size);
    out->set_checksum(b.checksum);
    out->set_address(b.location);
    out->set_generation(b.generation);
  }
  return grpc::Status::OK;
}

grpc::Status CacheServiceImpl::ReleaseImpl(grpc::ServerContext* ctx,
                                           const v1::ReleaseRequest* request,
                                           v1::ReleaseResponse* response) {
  if (absl::Status st = CheckTenant(ctx, request->tenant()); !st.ok()) return ToGrpc(st);
  std::vector<BlockInfo> seen;
  if (!request->packed_keys().empty()) {
    auto keys = StoreKeys(ctx, request->tenant(), google::protobuf::RepeatedPtrField<std::string>(),
                          request->packed_keys());
    if (!keys.ok()) return ToGrpc(keys.status());
    if (static_cast<size_t>(request->addresses_size()) != keys->size() ||
        static_cast<size_t>(request->generations_size()) != keys->size()) {
      return ToGrpc(absl::InvalidArgumentError(
          "release: one address and one generation per key in packed_keys"));
    }
    for (size_t i = 0; i < keys->size(); ++i) {
      seen.push_back(BlockInfo{.key = (*keys)[i],
                               .tier = Tier::kHost,
                               .location = request->addresses(i),
                               .generation = request->generations(i)});
    }
  }
  // Verified before the lease ends, so that the blocks cannot have moved in between.
  if (!seen.empty()) response->set_unchanged(store_->FirstChanged(seen) == seen.size());
  const std::optional<LeaseHandles::Lease> lease =
      lease_handles_.Take(request->lease_id(), request->tenant());
  absl::Status st = lease.has_value() ? store_->Release(lease->id)
                                      : absl::NotFoundError("release: no such lease");
  // Bytes read count only under a lease of this tenant's, and at most the lease's bytes.
  if (metrics_ != nullptr && lease.has_value()) {
    metrics_->AddUcxBytesRead(std::min<uint64_t>(request->bytes_read(), lease->bytes));
  }
  response->set_lease_active(st.ok());
  if (st.code() == absl::StatusCode::kNotFound) {
    if (!seen.empty()) return grpc::Status::OK;  // the answer is `unchanged`
    return ToGrpc(absl::NotFoundError("lease is unknown, expired, or another tenant's"));
  }
  return ToGrpc(st);
}

grpc::Status CacheServiceImpl::DeleteImpl(grpc::ServerContext* ctx,
                                          const v1::DeleteRequest* request,
                                          v1::DeleteResponse* response) {
  auto keys = StoreKeys(ctx, request->tenant(), request->keys(), request->packed_keys());
  if (!keys.ok()) return ToGrpc(keys.status());
  uint32_t deleted = 0;
  for (const BlockKey& k : *keys) {
    absl::Status st = store_->Delete(k);
    if (st.ok()) {
      ++deleted;
    } else if (st.code() != absl::StatusCode::kNotFound) {
      return ToGrpc(st);
    }
  }
  response->set_deleted(deleted);
  return grpc::Status::OK;
}

absl::StatusOr<CacheServiceImpl::View> CacheServiceImpl::ViewOf(const grpc::ServerContext* ctx,
                                                                const std::string& named) const {
  if (named.size() > limits_.max_tenant_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("tenant: longer than ", limits_.max_tenant_bytes, " bytes"));
  }
  if (auth_ == nullptr) return View{.whole = true, .tenant = named};
  absl::StatusOr<Principal> who = auth_->Authenticate(*ctx);
  if (!who.ok()) return who.status();
  if (who->role == Role::kCluster) return View{.whole = true, .tenant = named};
  if (!named.empty() && named != who->name) {
    return absl::PermissionDeniedError(
        absl::StrCat("the token does not grant access to tenant '", named, "'"));
  }
  return View{.whole = false, .tenant = who->name};
}

v1::TenantUsage CacheServiceImpl::UsageOf(const std::string& tenant) {
  v1::TenantUsage u;
  u.set_tenant(tenant);
  u.set_inflight_limit_bytes(limits_.max_inflight_bytes_per_tenant);
  u.set_leased_limit_bytes(limits_.max_leased_bytes_per_tenant);
  u.set_leased_bytes(lease_handles_.TenantBytes(tenant, store_clock_->NowMicros()));
  const std::optional<uint16_t> id =
      tenants_ != nullptr ? tenants_->Find(tenant) : std::nullopt;
  if (!id.has_value()) return u;  // never put or got anything: holds nothing
  u.set_resident_bytes(tenants_->resident_bytes(*id));
  u.set_resident_blocks(tenants_->resident_blocks(*id));
  u.set_inflight_bytes(inflight_bytes_.tenant_total(*id));
  return u;
}

std::vector<v1::TenantUsage> CacheServiceImpl::AllUsage() {
  std::vector<v1::TenantUsage> out;
  if (tenants_ == nullptr) return out;
  for (const auto& [id, name] : tenants_->All()) out.push_back(UsageOf(name));
  return out;
}

grpc::Status CacheServiceImpl::StatsImpl(grpc::ServerContext* ctx, const v1::StatsRequest* request,
                                         v1::StatsResponse* response) {
  absl::StatusOr<View> view = ViewOf(ctx, request->tenant());
  if (!view.ok()) return ToGrpc(view.status());
  if (!view->tenant.empty()) *response->mutable_tenant_usage() = UsageOf(view->tenant);
  if (!view->whole) return grpc::Status::OK;  // a tenant sees its own usage only
  const StoreStats st = store_->Stats();
  for (int t = 0; t < kNumTiers; ++t) {
    v1::TierStats* ts = response->add_tiers();
    ts->set_tier(TierToProto(static_cast<Tier>(t)));
    ts->set_present(st.tiers[t].present);
    ts->set_capacity_bytes(st.tiers[t].capacity_bytes);
    ts->set_used_bytes(st.tiers[t].used_bytes);
    ts->set_blocks(st.tiers[t].blocks);
    ts->set_hits(st.tiers[t].hits);
  }
  response->set_gets(st.gets);
  response->set_get_misses(st.get_misses);
  response->set_lookups(st.lookups);
  response->set_lookup_blocks_hit(st.lookup_blocks_hit);
  response->set_lookup_blocks_missed(st.lookup_blocks_missed);
  response->set_puts(st.puts);
  response->set_evictions(st.evictions);
  response->set_demotions(st.demotions);
  response->set_promotions(st.promotions);
  response->set_nvme_admission_rejections(st.nvme_admission_rejections);
  response->set_checksum_failures(st.checksum_failures);
  response->set_leases_active(st.leases_active);
  return grpc::Status::OK;
}

grpc::Status CacheServiceImpl::DataPlaneImpl(grpc::ServerContext* ctx,
                                             const v1::DataPlaneRequest* request,
                                             v1::DataPlaneResponse* response) {
  if (absl::Status st = CheckTenant(ctx, request->tenant()); !st.ok()) return ToGrpc(st);
  if (ucx_ == nullptr) {
    response->set_available(false);
    return grpc::Status::OK;
  }
  response->set_available(true);
  const std::string& host = ucx_->host();
  // A wildcard listener is reached at whatever address the client used for gRPC.
  if (host != "0.0.0.0" && host != "::") response->set_ucx_host(host);
  response->set_ucx_port(static_cast<uint32_t>(ucx_->port()));
  response->set_arena_bytes(ucx_->region_bytes());
  if (ucx_->mode() == transfer::DataPlaneMode::kServed) {
    // No remote key of the arena exists; a client that cannot ask for reads uses Get.
    response->set_available(request->accepts_served());
    response->set_mode(v1::DATA_PLANE_MODE_SERVED);
    return grpc::Status::OK;
  }
  response->set_rkey(ucx_->packed_rkey());
  response->set_arena_base(ucx_->region_base());
  return grpc::Status::OK;
}

transfer::ReadAuthorizer CacheServiceImpl::ServedReadAuthorizer() {
  return [this](uint64_t lease, std::span<const transfer::RegionRange> ranges) {
    return AuthorizeServedRead(lease_handles_, store_, store_clock_->NowMicros(), lease, ranges);
  };
}

grpc::Status CacheServiceImpl::WatchBlocks(grpc::ServerContext* ctx,
                                           const v1::WatchBlocksRequest* request,
                                           grpc::ServerWriter<v1::BlockEventBatch>* writer) {
  return WatchEvents(ctx, request, writer);
}

grpc::Status CacheServiceImpl::WatchEvents(
    grpc::ServerContext* ctx, const v1::WatchBlocksRequest* request,
    grpc::internal::WriterInterface<v1::BlockEventBatch>* writer) {
  absl::StatusOr<View> view = ViewOf(ctx, request->tenant());
  if (!view.ok()) return ToGrpc(view.status());
  if (events_ == nullptr || tenants_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this daemon publishes no block events");
  }
  // One tenant's events, by its number; a tenant without one has stored nothing yet, and gets
  // one now so that its first blocks are shown.
  std::optional<uint16_t> only;
  if (!view->tenant.empty()) {
    only = tenants_->Id(view->tenant);
    if (*only == Tenants::kOther) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("more than ", Tenants::kMaxTenants - 1,
                                       " tenants: no events of tenant '", view->tenant, "' alone"));
    }
  }
  uint64_t cursor = events_->head();
  v1::BlockEventBatch msg;
  msg.set_reset(true);
  if (!writer->Write(msg)) return grpc::Status::OK;
  while (!ctx->IsCancelled()) {
    BlockEvents::Batch b = events_->Read(cursor, 4096, std::chrono::milliseconds(200), only);
    cursor = b.next;
    if (b.events.empty() && !b.lost) continue;
    msg.set_reset(b.lost);
    msg.set_events(std::move(b.events));
    if (!writer->Write(msg)) break;
  }
  return grpc::Status::OK;
}

grpc::Status CacheServiceImpl::DataPlane(grpc::ServerContext* ctx,
                                         const v1::DataPlaneRequest* request,
                                         v1::DataPlaneResponse* response) {
  return Observed("DataPlane", ctx, request->tenant(),
                  [&] { return DataPlaneImpl(ctx, request, response); });
}

grpc::Status CacheServiceImpl::Put(grpc::ServerContext* a0,
                                   grpc::ServerReader<grpc::ByteBuffer>* reader,
                                   v1::PutResponse* response) {
  std::string tenant;  // as the stream names it
  return Observed("Put", a0, tenant, [&] { return PutImpl(a0, reader, response, &tenant); });
}

grpc::Status CacheServiceImpl::Get(grpc::ServerContext* ctx, const v1::GetRequest* request,
                                   GetWriter* writer) {
  return Observed("Get", ctx, request->tenant(), [&] { return GetImpl(ctx, request, writer); });
}

grpc::Status CacheServiceImpl::GetSession(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  v1::GetRequest request;
  grpc::Status read;
  bool any = false;
  while (ReadMessage(stream, &request, "get session", &read)) {
    any = true;
    if (grpc::Status st = Get(ctx, &request, stream); !st.ok()) return st;
  }
  // Each request's token is checked with its tenant: a session that sent none must still carry
  // a valid one.
  if (!any && auth_ != nullptr) {
    if (auto who = auth_->Authenticate(*ctx); !who.ok()) return ToGrpc(who.status());
  }
  return read;
}

grpc::Status CacheServiceImpl::LeaseSession(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  v1::LeaseSessionRequest request;
  grpc::Status read;
  bool any = false;
  while (ReadMessage(stream, &request, "lease session", &read)) {
    any = true;
    v1::LeaseSessionResponse response;
    grpc::Status st;
    switch (request.call_case()) {
      case v1::LeaseSessionRequest::kLease:
        st = Lease(ctx, &request.lease(), response.mutable_lease());
        break;
      case v1::LeaseSessionRequest::kRelease:
        st = Release(ctx, &request.release(), response.mutable_release());
        break;
      default:
        st = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "lease session: a request with neither lease nor release");
    }
    if (!st.ok()) {
      response.Clear();
      response.set_code(st.error_code());
      response.set_message(st.error_message());
    }
    grpc::ByteBuffer bb;
    bool own = false;
    if (!grpc::SerializationTraits<v1::LeaseSessionResponse>::Serialize(response, &bb, &own).ok() ||
        !stream->Write(bb)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "lease session: the client went away");
    }
  }
  // Each request's token is checked with its tenant: a session that sent none must still carry
  // a valid one.
  if (!any && auth_ != nullptr) {
    if (auto who = auth_->Authenticate(*ctx); !who.ok()) return ToGrpc(who.status());
  }
  return read;
}

grpc::Status CacheServiceImpl::Lookup(grpc::ServerContext* a0, const v1::LookupRequest* request,
                                      v1::LookupResponse* response) {
  return Observed("Lookup", a0, request->tenant(),
                  [&] { return LookupImpl(a0, request, response); });
}

grpc::Status CacheServiceImpl::Lease(grpc::ServerContext* a0, const v1::LeaseRequest* request,
                                     v1::LeaseResponse* response) {
  return Observed("Lease", a0, request->tenant(),
                  [&] { return LeaseImpl(a0, request, response); });
}

grpc::Status CacheServiceImpl::Release(grpc::ServerContext* a0, const v1::ReleaseRequest* request,
                                       v1::ReleaseResponse* a2) {
  return Observed("Release", a0, request->tenant(), [&] { return ReleaseImpl(a0, request, a2); });
}

grpc::Status CacheServiceImpl::Delete(grpc::ServerContext* a0, const v1::DeleteRequest* request,
                                      v1::DeleteResponse* response) {
  return Observed("Delete", a0, request->tenant(),
                  [&] { return DeleteImpl(a0, request, response); });
}

grpc::Status CacheServiceImpl::Stats(grpc::ServerContext* a0, const v1::StatsRequest* a1,
                                     v1::StatsResponse* response) {
  return Observed("Stats", a0, a1->tenant(), [&] { return StatsImpl(a0, a1, response); });
}

}  // namespace kvtier::server
