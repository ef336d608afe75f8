#include "worker/attention_service.h"

#include "absl/strings/str_cat.h"
#include "common/layout_proto.h"

namespace kvtier::worker {
namespace {

AttentionMode ModeOf(v1::AttentionMode mode) {
  switch (mode) {
    case v1::ATTENTION_MODE_DENSE:
      return AttentionMode::kDense;
    case v1::ATTENTION_MODE_HEAD_SPARSE:
      return AttentionMode::kHeadSparse;
    case v1::ATTENTION_MODE_MLA:
      return AttentionMode::kMla;
    default:
      return AttentionMode::kUnspecified;
  }
}

template <typename T>
std::span<const T> View(const google::protobuf::RepeatedField<T>& field) {
  return {field.data(), static_cast<size_t>(field.size())};
}

}  // namespace

absl::StatusOr<DecodeStepRequest> FromProto(const v1::DecodeRequest& request) {
  DecodeStepRequest out;
  out.tenant = request.tenant();
  if (out.tenant.empty()) return absl::InvalidArgumentError("tenant: must be set");
  out.model = request.model();
  out.adapter = request.adapter();
  auto layout = LayoutFromProto(request.layout());
  if (!layout.ok()) return layout.status();
  out.layout = *layout;
  out.mode = ModeOf(request.mode());
  if (request.mode() != v1::ATTENTION_MODE_UNSPECIFIED &&
      out.mode == AttentionMode::kUnspecified) {
    return absl::InvalidArgumentError(absl::StrCat("mode: ", request.mode(), " is not known"));
  }
  const v1::HeadProfile& p = request.profile();
  out.profile.sink = p.sink();
  out.profile.window = p.window();
  for (const v1::HeadProfile::Layer& l : p.layers()) {
    out.profile.recall_heads.emplace_back(l.recall_heads().begin(), l.recall_heads().end());
  }
  out.scale = request.scale();
  for (int si = 0; si < request.sequences_size(); ++si) {
    const v1::Sequence& seq = request.sequences(si);
    SequenceQuery& q = out.sequences.emplace_back();
    const std::string& packed = seq.packed_keys();
    if (packed.size() % BlockKey::kBytes != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences[", si, "].packed_keys: not a multiple of 16 bytes"));
    }
    for (size_t i = 0; i < packed.size(); i += BlockKey::kBytes) {
      q.keys.push_back(BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(packed.data()) + i));
    }
    q.tokens = View(seq.tokens());
    q.context_tokens = seq.context_tokens();
    for (const v1::LayerQuery& lq : seq.queries()) {
      q.queries.push_back({.layer = lq.layer(), .q = View(lq.q()), .q_rope = View(lq.q_rope())});
    }
  }
  return out;
}

void ToProto(const DecodeStepResult& result, v1::DecodeResponse* response) {
  for (const std::vector<LayerOutput>& layers : result.sequences) {
    v1::SequenceOutput* so = response->add_sequences();
    for (const LayerOutput& l : layers) {
      v1::LayerOutput* lo = so->add_layers();
      lo->set_layer(l.layer);
      lo->mutable_out()->Assign(l.out.begin(), l.out.end());
      lo->mutable_lse()->Assign(l.lse.begin(), l.lse.end());
    }
  }
  v1::DecodeStats* s = response->mutable_stats();
  s->set_bytes_fetched(result.stats.bytes_fetched);
  s->set_bytes_fetched_ucx(result.stats.bytes_fetched_ucx);
  s->set_bytes_from_pool(result.stats.bytes_from_pool);
  s->set_bytes_skipped(result.stats.bytes_skipped);
  s->set_nodes_read(result.stats.nodes_read);
  s->set_fetch_us(result.stats.fetch_us);
  s->set_compute_us(result.stats.compute_us);
  response->set_device(result.device);
}

grpc::Status AttentionServiceImpl::Decode(grpc::ServerContext* context,
                                          const v1::DecodeRequest* request,
                                          v1::DecodeResponse* response) {
  std::string token;
  auto auth = context->client_metadata().find("authorization");
  if (auth != context->client_metadata().end()) {
    const std::string value(auth->second.data(), auth->second.size());
    if (value.rfind("Bearer ", 0) == 0) token = value.substr(7);
  }
  absl::StatusOr<DecodeStepResult> result;
  auto step = FromProto(*request);
  if (step.ok()) {
    result = worker_->Decode(*step, token);
  } else {
    result = step.status();
  }
  if (!result.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(result.status().code()),
                        std::string(result.status().message()));
  }
  ToProto(*result, response);
  return grpc::Status::OK;
}

}  // namespace kvtier::worker
