#pragma once
// RpcMetrics: a gRPC service's request counts and latency, the same for every kvtier server:
// <prefix>_rpc_requests_total{rpc,code} and <prefix>_rpc_duration_seconds{rpc}. Every method and
// every code it can answer has its series from the start, so that an error ratio has data
// before the first error. Thread-safe.

#include <grpcpp/support/status.h>

#include <map>
#include <string>
#include <vector>

namespace prometheus {
class Registry;
class Counter;
class Histogram;
}  // namespace prometheus

namespace kvtier {

// The status code's name as metrics and logs spell it (OK, INVALID_ARGUMENT, ...; OTHER for
// codes kvtier's servers do not answer).
const char* StatusCodeName(grpc::StatusCode code);

class RpcMetrics {
 public:
  // `prefix`: kvtier (the daemon), kvtier_router, ...; `methods`: the service's method names.
  RpcMetrics(prometheus::Registry& registry, const std::string& prefix, const std::string& service,
             const std::vector<std::string>& methods);
  // One finished call of `rpc` (one of `methods`; others are not counted).
  void Observe(const std::string& rpc, grpc::StatusCode code, double seconds);

 private:
  struct Method {
    std::map<std::string, prometheus::Counter*> by_code;  // by StatusCodeName
    prometheus::Histogram* latency = nullptr;
  };
  std::map<std::string, Method> methods_;
};

}  // namespace kvtier
