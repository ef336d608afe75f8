#include "router/node_channel.h"

#include <algorithm>

namespace kvtier::router {

absl::Status NodeCredentials::Validate() const {
  if (tls_ca_pem.empty() && !tls_cert_pem.empty()) {
    return absl::InvalidArgumentError("a TLS client certificate (--tls-cert) needs --tls-ca");
  }
  if (tls_cert_pem.empty() != tls_key_pem.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key: give both or neither");
  }
  return absl::OkStatus();
}

void NodeCredentials::Authorize(grpc::ClientContext* ctx) const {
  if (!bearer_token.empty()) ctx->AddMetadata("authorization", "Bearer " + bearer_token);
}

std::shared_ptr<grpc::Channel> NodeChannel(const std::string& address,
                                           const NodeCredentials& credentials, int reconnect_ms) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(reconnect_ms, 1000));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, reconnect_ms);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!credentials.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = credentials.tls_ca_pem;
    ssl.pem_private_key = credentials.tls_key_pem;
    ssl.pem_cert_chain = credentials.tls_cert_pem;
    creds = grpc::SslCredentials(ssl);
    if (!credentials.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(credentials.tls_server_name);
    }
  }
  return grpc::CreateCustomChannel(address, creds, args);
}

}  // namespace kvtier::router
