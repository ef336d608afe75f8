#pragma once
// AttentionService (gRPC) over a Worker: the request's messages into the worker's plain types
// (decode_types.h) and its result back, the caller's bearer token passed on to the daemons.

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/statusor.h"
#include "kvtier/v1/attention.grpc.pb.h"
#include "worker/decode_types.h"
#include "worker/worker.h"

namespace kvtier::worker {

// `request` as a DecodeStepRequest (its queries views into `request`, which must outlive it).
// INVALID_ARGUMENT naming the field that cannot be read (a layout, packed keys).
absl::StatusOr<DecodeStepRequest> FromProto(const v1::DecodeRequest& request);
void ToProto(const DecodeStepResult& result, v1::DecodeResponse* response);

class AttentionServiceImpl final : public v1::AttentionService::Service {
 public:
  explicit AttentionServiceImpl(Worker* worker) : worker_(worker) {}
  grpc::Status Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                      v1::DecodeResponse* response) override;

 private:
  Worker* worker_;
};

}  // namespace kvtier::worker
