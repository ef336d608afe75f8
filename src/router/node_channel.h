#pragma once
// How kvtier-router talks to its nodes: one channel per node for health probes, Stats and the
// cache-aware WatchBlocks stream, with the same security options as kvtier's clients (TLS with
// the CA that signed the daemons' certificates, a client certificate for mutual TLS, and a bearer
// token, which for a daemon with auth must have the `cluster` role).

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"

namespace kvtier::router {

struct NodeCredentials {
  // TLS: set tls_ca_pem to use it; add a client certificate and key for mutual TLS. PEM text.
  std::string tls_ca_pem;
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_server_name;  // Default: from the address. Overrides the name checked.
  std::string bearer_token;     // Default: none. Sent as `authorization: Bearer <token>`.

  // INVALID_ARGUMENT for a client certificate without a CA, or a key without a certificate.
  absl::Status Validate() const;
  // Adds the token (if any) to a call's metadata.
  void Authorize(grpc::ClientContext* ctx) const;
};

// A channel to `address` with `credentials` (REQUIRES: Validate() is OK), reconnecting no more
// than `reconnect_ms` apart so that a recovered node is seen soon.
std::shared_ptr<grpc::Channel> NodeChannel(const std::string& address,
                                           const NodeCredentials& credentials, int reconnect_ms);

}  // namespace kvtier::router
