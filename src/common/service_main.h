#pragma once
// Pieces the main() of every kvtier server binary shares.

#include <signal.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace kvtier {

// Blocks SIGTERM and SIGINT in the calling thread and the threads it starts later; returns the
// set, for sigwait() to take them when the process is ready to stop.
sigset_t BlockStopSignals();

// Serves `registry` as /metrics on `listen` (HOST:PORT; port 0 picks a free one) and prints
// "<program> metrics on HOST:PORT"; an empty `listen` serves nothing (nullptr). UNAVAILABLE when
// it cannot listen there.
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> ServeMetrics(
    const std::string& program, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry);

// Starts a gRPC server (plaintext) with `service`, the standard health service and reflection on
// `listen` (port 0 picks a free one), and prints "<program> listening on HOST:PORT".
// `max_message_bytes` (0: gRPC's default) bounds messages both ways. UNAVAILABLE when it cannot
// listen there.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& program,
                                                              const std::string& listen,
                                                              grpc::Service* service,
                                                              int max_message_bytes = 0);

}  // namespace kvtier
