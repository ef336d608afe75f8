#pragma once
// DaemonConfig: everything kvtierd can be told, from a YAML file (--config) with command-line
// flags overriding it. One table of options drives the YAML keys, the flags, --help and the
// error messages, so the three never disagree. Validated once, at start; errors name the field.

#include <string>

#include "absl/status/statusor.h"
#include "cache/store_options.h"
#include "server/cache_service.h"

namespace kvtier::server {

struct DaemonConfig {
  std::string listen = "127.0.0.1:7700";  // Default: 127.0.0.1:7700. gRPC address; port 0: any.
  std::string log_level = "info";         // Default: info.
  std::string log_format = "text";        // Default: text. Or json: one object a line.
  // Default: 127.0.0.1:9770. Prometheus /metrics over HTTP; empty: no endpoint.
  std::string metrics_listen = "127.0.0.1:9770";
  // Default: empty (the listen address with its bound port). The gRPC address clients and
  // kvtier-router reach this daemon at (the router's node name for it), reported as
  // kvtier_daemon_info{address}: in a pod, $(POD_IP):PORT.
  std::string advertise_address;
  size_t max_message_bytes = size_t{64} << 20;  // Default: 64 MiB. Largest gRPC message.
  // Default: empty (no auth). YAML file of tenant: token; when set, every call needs
  // `authorization: Bearer <token>` for the tenant it names.
  std::string auth_tokens_file;
  std::string tls_cert;       // Default: empty (plaintext). PEM certificate chain of the server.
  std::string tls_key;        // Default: empty. PEM private key of tls_cert.
  std::string tls_client_ca;  // Default: empty. When set, clients must present a cert it signed.
  // Default: auto. UCX data plane listener: HOST:PORT, off, or auto (the gRPC host, any free
  // port).
  std::string ucx_listen = "auto";
  // Default: auto. UCX data plane mode: rkey (one-sided reads of the whole arena), served (the
  // daemon sends each reader its own leased ranges), or auto (served when auth is on with two or
  // more tenants, else rkey). src/transfer/README.md, "Modes".
  std::string ucx_mode = "auto";
  // Default: empty (off). Where the store's block events are published in vLLM's KV-event
  // format (ZMQ PUB, msgpack; src/kvevents): tcp://HOST:PORT (port 0: any) or ipc://PATH.
  std::string kv_events_endpoint;
  // Default: empty (none). The ZMQ ROUTER socket that replays recent event batches.
  std::string kv_events_replay_endpoint;
  StoreOptions store;                     // Defaults as in StoreOptions, but nvme_path below.
  ServiceLimits limits;
  // Default: false. --check-config: validate the configuration (and the files it names) as a
  // start would, then exit without opening the store or any port. Not a YAML key.
  bool check_only = false;

  DaemonConfig() { store.nvme_path = "./kvtier-data"; }
};

// The help text: every option with its YAML key, flag, default and meaning.
std::string DaemonUsage();

// Parses argv (without the program name). Returns the config, or INVALID_ARGUMENT naming the
// YAML key or flag at fault. Sets *help when --help was given (the config is then defaults).
absl::StatusOr<DaemonConfig> LoadDaemonConfig(int argc, char** argv, bool* help);

}  // namespace kvtier::server
