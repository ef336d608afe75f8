#pragma once
// Shared pieces of kvtier's UCX code: status conversion and an owned UCP context and worker.

#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier::transfer {

// A UCX status as an absl::Status whose message starts with `what`.
absl::Status FromUcs(ucs_status_t status, const std::string& what);

// Splits "host:port" ("[v6]:port" too; an empty host is 0.0.0.0). INVALID_ARGUMENT names `what`.
absl::Status SplitHostPort(const std::string& address, const char* what, std::string* host,
                           int* port);
// Resolves host and port for a UCX listener (`passive`) or endpoint; *len is the address length.
absl::StatusOr<sockaddr_storage> ResolveAddress(const std::string& host, int port, bool passive,
                                                socklen_t* len);

// Sets `worker`'s active-message handlers: id -> callback, each called with `arg` and with
// whole messages only.
absl::Status SetAmHandlers(
    ucp_worker_h worker, void* arg,
    std::initializer_list<std::pair<unsigned, ucp_am_recv_callback_t>> handlers);

// A UCP context and one worker. Not thread-safe: one thread uses the worker.
class UcxEndpointHost {
 public:
  // `features`: UCP_FEATURE_* of the context. A context with UCP_FEATURE_RMA answers software-
  // emulated gets and puts (TCP) at whatever address a peer names; see ucx_server.h.
  static absl::StatusOr<std::unique_ptr<UcxEndpointHost>> Create(
      uint64_t features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP);
  ~UcxEndpointHost();
  UcxEndpointHost(const UcxEndpointHost&) = delete;
  UcxEndpointHost& operator=(const UcxEndpointHost&) = delete;

  ucp_context_h context() const { return context_; }
  ucp_worker_h worker() const { return worker_; }

 private:
  UcxEndpointHost() = default;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
};

}  // namespace kvtier::transfer
