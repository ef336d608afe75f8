#pragma once
// ProcessMetrics: what every kvtier binary's /metrics says of the process itself, read at scrape
// time: kvtier_build_info{binary,version,commit} (always 1) and the process_* series that
// Prometheus' own clients export (CPU seconds, resident and virtual memory, open and maximum file
// descriptors, threads, start time), from /proc/self. MetricsServer serves it on every endpoint.

#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>

#include <string>
#include <vector>

namespace kvtier {

class ProcessMetrics final : public prometheus::Collectable {
 public:
  explicit ProcessMetrics(std::string binary) : binary_(std::move(binary)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string binary_;
};

}  // namespace kvtier
