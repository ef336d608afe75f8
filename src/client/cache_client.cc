#include "client/cache_client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/grpc_tuning.h"
#include "kvtier/v1/cache.grpc.pb.h"

namespace kvtier {
namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Keys back to back, 16 bytes each (the packed_keys form of a request).
std::string Packed(std::span<const BlockKey> keys) {
  std::string out(keys.size() * BlockKey::kBytes, '\0');
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i].ToBytes(reinterpret_cast<uint8_t*>(out.data()) + i * BlockKey::kBytes);
  }
  return out;
}

const char* TierName(v1::Tier t) {
  switch (t) {
    case v1::TIER_HBM:
      return "hbm";
    case v1::TIER_HOST:
      return "host";
    case v1::TIER_NVME:
      return "nvme";
    default:
      return "unknown";
  }
}

void ToProto(const KvLayout& l, v1::KvLayout* p) {
  p->set_kind(l.kind == LayoutKind::kGqa ? v1::LAYOUT_KIND_GQA : v1::LAYOUT_KIND_MLA);
  p->set_dtype(l.dtype == DType::kFp16   ? v1::DTYPE_FP16
               : l.dtype == DType::kBf16 ? v1::DTYPE_BF16
                                         : v1::DTYPE_FP8_E4M3);
  p->set_layers(l.layers);
  p->set_kv_heads(l.kv_heads);
  p->set_head_dim(l.head_dim);
  p->set_block_tokens(l.block_tokens);
  p->set_latent_rank(l.latent_rank);
  p->set_rope_dim(l.rope_dim);
}

}  // namespace

struct CacheClient::Rpc {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::CacheService::Stub> stub;
};

CacheClient::CacheClient(const ClientOptions& options) : options_(options) {}
CacheClient::~CacheClient() = default;

absl::StatusOr<std::unique_ptr<CacheClient>> CacheClient::Create(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("client: address must be set");
  if (options.tenant.empty()) return absl::InvalidArgumentError("client: tenant must be set");
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("client: max_attempts must be >= 1");
  }
  if (options.chunk_bytes == 0)
    return absl::InvalidArgumentError("client: chunk_bytes must be > 0");
  std::unique_ptr<CacheClient> c(new CacheClient(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kGrpcMaxFrameBytes);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kGrpcStreamWindowBytes);
  args.SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, kGrpcWriteBufferBytes);
  args.SetInt(GRPC_ARG_TCP_READ_CHUNK_SIZE, kGrpcReadChunkBytes);
  c->rpc_ = std::make_unique<Rpc>();
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_ca_pem;
    ssl.pem_private_key = options.tls_key_pem;
    ssl.pem_cert_chain = options.tls_cert_pem;
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  } else if (!options.tls_cert_pem.empty()) {
    return absl::InvalidArgumentError("client: a TLS client certificate needs tls_ca_pem");
  }
  c->rpc_->channel = grpc::CreateCustomChannel(options.address, creds, args);
  c->rpc_->stub = v1::CacheService::NewStub(c->rpc_->channel);
  return c;
}

namespace {

// Runs `attempt` (which returns a grpc::Status) until it succeeds, fails with anything but
// UNAVAILABLE, or runs out of attempts.
template <typename F>
absl::Status WithRetries(const ClientOptions& o, F attempt) {
  int64_t backoff = o.initial_backoff_ms;
  grpc::Status s;
  for (int i = 0; i < o.max_attempts; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(o.deadline_ms));
    if (!o.bearer_token.empty()) ctx.AddMetadata("authorization", "Bearer " + o.bearer_token);
    s = attempt(&ctx);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    if (i + 1 < o.max_attempts) {
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
      backoff *= 2;
    }
  }
  return FromGrpc(s);
}

}  // namespace

absl::StatusOr<PutResult> CacheClient::Put(std::span<const BlockToPut> blocks, bool durable,
                                           const KvLayout* layout) {
  PutResult result;
  absl::Status st = WithRetries(options_, [&](grpc::ClientContext* ctx) {
    v1::PutResponse res;
    auto writer = rpc_->stub->Put(ctx, &res);
    bool first = true;
    for (const BlockToPut& b : blocks) {
      size_t off = 0;
      do {  // at least one message per block, even an (invalid) empty one
        v1::PutRequest req;
        if (first) {
          req.set_tenant(options_.tenant);
          if (layout != nullptr) ToProto(*layout, req.mutable_layout());
          first = false;
        }
        if (off == 0) {
          v1::BlockHeader* h = req.mutable_header();
          h->set_key(b.key.ByteString());
          if (!b.parent.IsZero()) h->set_parent(b.parent.ByteString());
          h->set_size(b.data.size());
          h->set_checksum(Checksum(b.data.data(), b.data.size()));
          h->set_durable(durable);
        }
        const size_t n = std::min(options_.chunk_bytes, b.data.size() - off);
        req.set_data(b.data.data() + off, n);
        if (!writer->Write(req)) return writer->Finish();
        off += n;
      } while (off < b.data.size());
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (s.ok()) result = PutResult{res.stored(), res.present()};
    return s;
  });
  if (!st.ok()) return st;
  return result;
}

absl::StatusOr<std::vector<std::optional<std::vector<uint8_t>>>> CacheClient::Get(
    std::span<const BlockKey> keys) {
  std::vector<std::optional<std::vector<uint8_t>>> out;
  v1::GetRequest req;
  req.set_tenant(options_.tenant);
  req.set_packed_keys(Packed(keys));
  absl::Status st = WithRetries(options_, [&](grpc::ClientContext* ctx) {
    out.clear();
    out.reserve(keys.size());
    auto reader = rpc_->stub->Get(ctx, req);
    v1::GetResponse msg;
    std::vector<uint64_t> checksums;  // of the found blocks, in order
    while (reader->Read(&msg)) {
      if (msg.has_header()) {
        out.emplace_back();
        if (msg.found()) {
          out.back().emplace();
          out.back()->reserve(msg.header().size());
          checksums.push_back(msg.header().checksum());
        }
      }
      if (!out.empty() && out.back().has_value()) {
        out.back()->insert(out.back()->end(), msg.data().begin(), msg.data().end());
      }
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return s;
    if (out.size() != keys.size()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          absl::StrCat("get: ", out.size(), " answers for ", keys.size(), " keys"));
    }
    // End to end: the bytes that arrived are the bytes the daemon verified.
    size_t next = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      if (!out[i].has_value()) continue;
      if (Checksum(out[i]->data(), out[i]->size()) != checksums[next++]) {
        return grpc::Status(grpc::StatusCode::DATA_LOSS,
                            absl::StrCat("get: block ", keys[i].Hex(), " arrived corrupted"));
      }
    }
    return s;
  });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<RemoteLookup> CacheClient::Lookup(std::span<const BlockKey> chain) {
  v1::LookupRequest req;
  req.set_tenant(options_.tenant);
  req.set_packed_keys(Packed(chain));
  v1::LookupResponse res;
  absl::Status st = WithRetries(
      options_, [&](grpc::ClientContext* ctx) { return rpc_->stub->Lookup(ctx, req, &res); });
  if (!st.ok()) return st;
  RemoteLookup out;
  out.matched = res.matched();
  for (int t : res.tiers()) out.tiers.push_back(TierName(static_cast<v1::Tier>(t)));
  return out;
}

absl::StatusOr<uint32_t> CacheClient::Delete(std::span<const BlockKey> keys) {
  v1::DeleteRequest req;
  req.set_tenant(options_.tenant);
  req.set_packed_keys(Packed(keys));
  v1::DeleteResponse res;
  absl::Status st = WithRetries(
      options_, [&](grpc::ClientContext* ctx) { return rpc_->stub->Delete(ctx, req, &res); });
  if (!st.ok()) return st;
  return res.deleted();
}

absl::StatusOr<v1::StatsResponse> CacheClient::Stats() {
  v1::StatsResponse res;
  absl::Status st = WithRetries(options_, [&](grpc::ClientContext* ctx) {
    return rpc_->stub->Stats(ctx, v1::StatsRequest(), &res);
  });
  if (!st.ok()) return st;
  return res;
}

}  // namespace kvtier
