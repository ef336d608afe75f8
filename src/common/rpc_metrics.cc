#include "common/rpc_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace kvtier {
namespace {

// The codes StatusCodeName names (UNKNOWN stands for the rest: OTHER).
constexpr grpc::StatusCode kCodes[] = {
    grpc::StatusCode::OK,          grpc::StatusCode::CANCELLED,
    grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::DEADLINE_EXCEEDED,
    grpc::StatusCode::NOT_FOUND,   grpc::StatusCode::FAILED_PRECONDITION,
    grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::UNAVAILABLE,
    grpc::StatusCode::DATA_LOSS,   grpc::StatusCode::UNAUTHENTICATED,
    grpc::StatusCode::PERMISSION_DENIED, grpc::StatusCode::UNKNOWN};

}  // namespace

const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    default:
      return "OTHER";
  }
}

RpcMetrics::RpcMetrics(prometheus::Registry& registry, const std::string& prefix,
                       const std::string& service, const std::vector<std::string>& methods) {
  auto& requests = prometheus::BuildCounter()
                       .Name(prefix + "_rpc_requests_total")
                       .Help(service + " calls by method and status code.")
                       .Register(registry);
  auto& latency = prometheus::BuildHistogram()
                      .Name(prefix + "_rpc_duration_seconds")
                      .Help(service + " call latency by method, seconds.")
                      .Register(registry);
  // From 5 us (a daemon Lookup of a short chain takes about 12 us, a Route a few) to 10 s (a
  // Put or Get of many large blocks).
  const prometheus::Histogram::BucketBoundaries buckets = {
      5e-6,  10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
      25e-3, 50e-3, 0.1,   0.25,  0.5,    1,      2.5,    5,    10};
  for (const std::string& rpc : methods) {
    Method& m = methods_[rpc];
    for (grpc::StatusCode code : kCodes) {
      const char* name = StatusCodeName(code);
      m.by_code[name] = &requests.Add({{"rpc", rpc}, {"code", name}});
    }
    m.latency = &latency.Add({{"rpc", rpc}}, buckets);
  }
}

void RpcMetrics::Observe(const std::string& rpc, grpc::StatusCode code, double seconds) {
  auto it = methods_.find(rpc);
  if (it == methods_.end()) return;
  it->second.latency->Observe(seconds);
  it->second.by_code.at(StatusCodeName(code))->Increment();
}

}  // namespace kvtier
