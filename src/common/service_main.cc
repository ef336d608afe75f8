#include "common/service_main.h"

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace kvtier {

sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> ServeMetrics(
    const std::string& program, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics-listen: cannot serve on ", listen, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  std::printf("%s metrics on %s:%d\n", program.c_str(), listen.substr(0, listen.rfind(':')).c_str(),
              exposer->GetListeningPorts().front());
  return exposer;
}

}  // namespace kvtier
