#pragma once
// Pieces the main() of every kvtier server binary shares.

#include <signal.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace kvtier {

// Blocks SIGTERM and SIGINT in the calling thread and the threads it starts later; returns the
// set, for sigwait() to take them when the process is ready to stop.
sigset_t BlockStopSignals();

// Serves `registry` as /metrics on `listen` (HOST:PORT; port 0 picks a free one) and prints
// "<program> metrics on HOST:PORT". UNAVAILABLE when it cannot listen there.
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> ServeMetrics(
    const std::string& program, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry);

}  // namespace kvtier
