#pragma once
// MetricsServer: kvtier's /metrics endpoint (Prometheus text format over HTTP/1.1). One thread
// serves every connection from an epoll loop, so no number of idle or half-open connections can
// hold up a scrape: each request is answered as soon as its bytes have arrived, whatever other
// connections do. A connection that has not sent a whole request within 5 s is closed (one that
// does not take its answer within 10 s too), and the oldest when more than 256 are open. Each
// answer closes its connection.
//
// Thread-safe; RegisterCollectable before or while serving.

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Collectable;
}

namespace kvtier {

class MetricsServer {
 public:
  // Serves on `listen` (HOST:PORT; port 0 picks a free one) the metrics of what registers, and
  // of the process (ProcessMetrics: build info of `binary`, CPU, memory, descriptors, threads).
  // UNAVAILABLE naming the address when it cannot listen there.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              const std::string& binary);
  ~MetricsServer();

  // Scrapes collect from `collectable` while it lives (held weakly).
  void RegisterCollectable(const std::weak_ptr<prometheus::Collectable>& collectable);
  // Serves `/` as an HTML page that `page` writes at each request (on the serving thread: it
  // must be quick). Without one, `/` answers as /metrics does.
  void SetPage(std::function<std::string()> page);
  int port() const { return port_; }

  // The text a scrape of /metrics answers (for tests and the server itself).
  std::string Scrape();

 private:
  MetricsServer() = default;
  void Run();
  std::function<std::string()> Page();

  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int stop_fd_ = -1;  // an eventfd: written to stop the loop
  int port_ = 0;
  std::mutex mu_;
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_;  // guarded by mu_
  std::shared_ptr<prometheus::Collectable> process_;                  // ProcessMetrics
  std::function<std::string()> page_;                                  // guarded by mu_
  std::thread thread_;
};

}  // namespace kvtier
