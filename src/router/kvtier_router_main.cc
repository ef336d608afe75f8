// kvtier-router: routes each request to the kvtierd node that should hold its prefix
// (kvtier.v1.RouteService), with health probes of every node and Prometheus metrics.
#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

#include "common/logging.h"
#include "common/process_tuning.h"
#include "common/service_main.h"
#include "common/version.h"
#include "router/membership.h"
#include "router/route_service.h"
#include "router/status_page.h"
#include "spdlog/spdlog.h"

namespace {

constexpr char kUsage[] =
    R"(usage: kvtier-router (--nodes LIST | --nodes-file FILE | --nodes-dns NAME:PORT) [options]

Routes requests (kvtier.v1.RouteService) to the kvtierd node that should prefill and cache them.
The routing key is the shallowest prefix key that is not hot (shared by more than 1/N of recent
requests). A new key goes to the first node in its consistent-hashing order that is at or under
its share of the work; a known key goes back to the node it was placed on, unless that node is
over --load-factor x its share (then to the next node in ring order within it). Placements are
remembered (--placement-entries). Nodes failing their gRPC health probes are ejected, their
prefixes placed anew, and re-admitted when they pass again.

options:
  --nodes LIST           kvtierd gRPC addresses, comma-separated, each with an optional
                         =WEIGHT (default 1)
  --nodes-file FILE      the same, one a line (# comments); re-read when it changes
  --nodes-dns NAME:PORT  every address NAME resolves to (a Kubernetes headless service),
                         re-resolved every --refresh-ms
  --refresh-ms N         how often the file or name is checked (default 5000)
  --listen HOST:PORT     gRPC address (default 127.0.0.1:7800; port 0 picks a free port)
  --metrics-listen H:P   Prometheus /metrics (default 127.0.0.1:9780; empty: none)
  --load-factor F        bounded loads' 1 + epsilon (default 1.25)
  --placement-entries N  prefixes whose node is remembered (default 1048576, 16 bytes each;
                         the least recently used are forgotten)
  --cache-aware          also index which node holds which blocks (each daemon's WatchBlocks
                         stream) and send a request, among the nodes within the load bound, to
                         the one holding the longest prefix of it; Route then reports the
                         expected cached prefix
  --engine-events NODE=ENDPOINT[+REPLAY]
                         follow the KV events (vLLM's protocol: ZMQ PUB, msgpack) of the
                         inference engine serving NODE (a member's address), with its replay
                         socket; repeatable; implies --cache-aware
  --engine-events-port N for members not named by --engine-events: the engine's events at
                         tcp://<the member's host>:N (implies --cache-aware)
  --engine-replay-port N ... and its replay socket at that port
  --engine-model ID      the engines' model id: their blocks are keyed by the tokens their
                         events carry in this namespace, and match requests for this model
                         (required with engine events)
  --engine-layout-fingerprint N
                         the engines' KV layout fingerprint in that namespace (default 0)
  --no-daemons           members are engines without kvtierd: no health probes (membership
                         alone says who serves), no WatchBlocks, no Stats
  --peers LIST           replica sync: the other kvtier-router replicas behind the same Service
                         (host:port of their --listen, comma-separated; this replica's own
                         address may be among them). Each follows the others' routing
                         decisions (popularity, placements, work per node) through their
                         RouteService.Sync streams, so that replicas route a prefix alike
  --peers-file FILE      the same, one a line; re-read when it changes
  --peers-dns NAME:PORT  the same: every address NAME resolves to (a headless Service over the
                         replicas), re-resolved every --refresh-ms
  --index-max-keys N     cap on the cache-aware index (default 2097152 keys; at most about
                         70 bytes a key)
  --tls-ca FILE          talk to the daemons over TLS: the CA that signed their certificates
  --tls-cert FILE        a client certificate for mutual TLS (with --tls-key and --tls-ca)
  --tls-key FILE         its private key
  --tls-server-name NAME the name checked in the daemons' certificates (default: each
                         address's host)
  --token-file FILE      a bearer token (the file's first line) for the daemons' Stats and
                         WatchBlocks; a daemon with auth needs a token of the `cluster` role.
                         Default: $KVTIER_TOKEN, if set
  --probe-interval-ms N  health probe period (default 1000)
  --failures-to-eject N  failed probes in a row that eject a node (default 2)
  --log-level LEVEL      trace, debug, info, warn, error, off (default info)
  --check-config         check the options (and read --nodes-file) as a start would, print
                         "kvtier-router: configuration OK" and exit 0 (2 on an error); listens
                         on nothing, and does not resolve --nodes-dns
  --version              the version and commit of this build
  --help                 this text

On start it prints "kvtier-router metrics on HOST:PORT" (when enabled), then
"kvtier-router listening on HOST:PORT". SIGTERM or SIGINT stops it.
)";

int Bad(const std::string& why) {
  std::fprintf(stderr, "kvtier-router: %s\n\n%s", why.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists (gRPC's own start with its first object), so that every thread
  // inherits the mask and stop signals reach sigwait below, never a thread they would kill.
  sigset_t signals = kvtier::BlockStopSignals();
  if (kvtier::AskedForVersion(argc, argv)) {
    std::puts(kvtier::VersionLine("kvtier-router").c_str());
    return 0;
  }
  kvtier::TuneProcessForThroughput();
  std::string nodes_flag, nodes_file, nodes_dns, listen = "127.0.0.1:7800";
  std::string metrics_listen = "127.0.0.1:9780";
  int refresh_ms = 5000;
  std::string log_level = "info";
  bool check_only = false;
  kvtier::router::RouterOptions options;
  kvtier::router::HealthOptions health;
  kvtier::router::CacheAwareOptions cache_aware;
  kvtier::router::NodeCredentials credentials;
  std::string tls_ca, tls_cert, tls_key, token_file;
  std::string peers_flag, peers_file, peers_dns;
  for (kvtier::ArgReader args(argc, argv); args.Next();) {
    const std::string a = args.flag();
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--nodes") {
      if (!args.Value(&nodes_flag)) return Bad("--nodes needs a list");
    } else if (a == "--nodes-file") {
      if (!args.Value(&nodes_file)) return Bad("--nodes-file needs a file");
    } else if (a == "--nodes-dns") {
      if (!args.Value(&nodes_dns)) return Bad("--nodes-dns needs NAME:PORT");
    } else if (a == "--refresh-ms") {
      if (!args.Number(&refresh_ms, 10)) return Bad("--refresh-ms: >= 10");
    } else if (a == "--listen") {
      if (!args.Value(&listen)) return Bad("--listen needs HOST:PORT");
    } else if (a == "--metrics-listen") {
      if (!args.Value(&metrics_listen)) return Bad("--metrics-listen needs HOST:PORT or ''");
    } else if (a == "--load-factor") {
      if (!args.Real(&options.load_factor, 1.0)) return Bad("--load-factor needs a number >= 1");
    } else if (a == "--placement-entries") {
      int n = 0;
      if (!args.Number(&n, 64)) return Bad("--placement-entries needs a number >= 64");
      options.placement_entries = static_cast<size_t>(n);
    } else if (a == "--cache-aware") {
      cache_aware.enabled = true;
    } else if (a == "--engine-events") {
      std::string v;
      if (!args.Value(&v) || v.find('=') == std::string::npos) {
        return Bad("--engine-events needs NODE=ENDPOINT[+REPLAY]");
      }
      const std::string node = v.substr(0, v.find('=')), rest = v.substr(v.find('=') + 1);
      const size_t plus = rest.find('+');
      cache_aware.engines.by_node[node] = {rest.substr(0, plus),
                                           plus == std::string::npos ? "" : rest.substr(plus + 1)};
      cache_aware.enabled = true;
    } else if (a == "--engine-events-port") {
      if (!args.Number(&cache_aware.engines.port, 1) || cache_aware.engines.port > 65535) {
        return Bad("--engine-events-port needs a port (1-65535)");
      }
      cache_aware.enabled = true;
    } else if (a == "--engine-replay-port") {
      if (!args.Number(&cache_aware.engines.replay_port, 1) ||
          cache_aware.engines.replay_port > 65535) {
        return Bad("--engine-replay-port needs a port (1-65535)");
      }
    } else if (a == "--engine-model") {
      if (!args.Value(&cache_aware.engines.keys.model_id)) return Bad("--engine-model needs an id");
    } else if (a == "--engine-layout-fingerprint") {
      std::string v;
      if (!args.Value(&v) || !absl::SimpleAtoi(v, &cache_aware.engines.keys.layout_fingerprint)) {
        return Bad("--engine-layout-fingerprint needs a number");
      }
    } else if (a == "--no-daemons") {
      health.enabled = false;
      cache_aware.daemons = false;
    } else if (a == "--peers") {
      if (!args.Value(&peers_flag)) return Bad("--peers needs a list");
    } else if (a == "--peers-file") {
      if (!args.Value(&peers_file)) return Bad("--peers-file needs a file");
    } else if (a == "--peers-dns") {
      if (!args.Value(&peers_dns)) return Bad("--peers-dns needs NAME:PORT");
    } else if (a == "--index-max-keys") {
      int n = 0;
      if (!args.Number(&n, 1)) return Bad("--index-max-keys needs a number > 0");
      cache_aware.max_keys = static_cast<size_t>(n);
    } else if (a == "--tls-ca") {
      if (!args.Value(&tls_ca)) return Bad("--tls-ca needs a file");
    } else if (a == "--tls-cert") {
      if (!args.Value(&tls_cert)) return Bad("--tls-cert needs a file");
    } else if (a == "--tls-key") {
      if (!args.Value(&tls_key)) return Bad("--tls-key needs a file");
    } else if (a == "--tls-server-name") {
      if (!args.Value(&credentials.tls_server_name)) return Bad("--tls-server-name needs a name");
    } else if (a == "--token-file") {
      if (!args.Value(&token_file)) return Bad("--token-file needs a file");
    } else if (a == "--probe-interval-ms") {
      if (!args.Number(&health.probe_interval_ms, 10)) return Bad("--probe-interval-ms: >= 10");
      health.probe_timeout_ms = std::min(health.probe_timeout_ms, health.probe_interval_ms);
    } else if (a == "--failures-to-eject") {
      if (!args.Number(&health.failures_to_eject, 1)) return Bad("--failures-to-eject: >= 1");
    } else if (a == "--log-level") {
      if (!args.Value(&log_level) || !kvtier::ValidateLogLevel(log_level).ok()) {
        return Bad("--log-level needs trace, debug, info, warn, error or off");
      }
    } else if (a == "--check-config") {
      check_only = true;
    } else {
      return Bad("unknown option '" + a + "'");
    }
  }
  if (cache_aware.engines.enabled() && cache_aware.engines.keys.model_id.empty()) {
    return Bad("engine events (--engine-events, --engine-events-port) need --engine-model");
  }
  if (cache_aware.engines.replay_port != 0 && cache_aware.engines.port == 0) {
    return Bad("--engine-replay-port needs --engine-events-port");
  }
  if (nodes_flag.empty() + nodes_file.empty() + nodes_dns.empty() != 2) {
    return Bad("give one of --nodes, --nodes-file and --nodes-dns");
  }
  // Addresses are checked before anything starts, so that --check-config refuses what a start
  // would.
  if (absl::Status st = kvtier::CheckListenAddress(listen, /*unix_ok=*/true); !st.ok()) {
    return Bad("--listen " + std::string(st.message()));
  }
  if (!metrics_listen.empty()) {
    if (absl::Status st = kvtier::CheckListenAddress(metrics_listen, /*unix_ok=*/false); !st.ok()) {
      return Bad("--metrics-listen " + std::string(st.message()));
    }
  }
  if (!nodes_dns.empty() && !kvtier::CheckListenAddress(nodes_dns, /*unix_ok=*/false).ok()) {
    return Bad("--nodes-dns: '" + nodes_dns + "' is not NAME:PORT");
  }
  if (peers_flag.empty() + peers_file.empty() + peers_dns.empty() < 2) {
    return Bad("give at most one of --peers, --peers-file and --peers-dns");
  }
  if (!peers_dns.empty() && !kvtier::CheckListenAddress(peers_dns, /*unix_ok=*/false).ok()) {
    return Bad("--peers-dns: '" + peers_dns + "' is not NAME:PORT");
  }
  for (auto [flag, path, pem] : {std::tuple{"--tls-ca", &tls_ca, &credentials.tls_ca_pem},
                                 std::tuple{"--tls-cert", &tls_cert, &credentials.tls_cert_pem},
                                 std::tuple{"--tls-key", &tls_key, &credentials.tls_key_pem}}) {
    if (path->empty()) continue;
    auto read = kvtier::ReadPemFile(*path, flag);
    if (!read.ok()) return Bad(std::string(read.status().message()));
    *pem = std::move(*read);
  }
  if (absl::Status st = credentials.Validate(); !st.ok()) return Bad(std::string(st.message()));
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in || !std::getline(in, credentials.bearer_token) ||
        absl::StripAsciiWhitespace(credentials.bearer_token).empty()) {
      return Bad("--token-file: cannot read a token from '" + token_file + "'");
    }
    credentials.bearer_token = std::string(absl::StripAsciiWhitespace(credentials.bearer_token));
  } else if (const char* env = std::getenv("KVTIER_TOKEN"); env != nullptr) {
    credentials.bearer_token = env;
  }
  // Where the membership comes from, now and at every refresh.
  std::unique_ptr<kvtier::router::MembershipSource> source =
      !nodes_file.empty()  ? kvtier::router::FileMembership(nodes_file)
      : !nodes_dns.empty() ? kvtier::router::DnsMembership(nodes_dns)
                           : kvtier::router::ListMembership(nodes_flag);
  // The peer replicas, where given; a file or name may list none yet.
  std::unique_ptr<kvtier::router::MembershipSource> peers_source =
      !peers_file.empty()  ? kvtier::router::FileMembership(peers_file)
      : !peers_dns.empty() ? kvtier::router::DnsMembership(peers_dns)
      : !peers_flag.empty() ? kvtier::router::ListMembership(peers_flag)
                            : nullptr;
  if (!peers_flag.empty()) {
    if (auto peers = peers_source->Fetch(); !peers.ok()) {
      return Bad("--peers: " + std::string(peers.status().message()));
    }
  }
  if (check_only) {
    // What --nodes-dns resolves to is the cluster's state, not configuration: left to the start.
    if (nodes_dns.empty()) {
      if (auto nodes = source->Fetch(); !nodes.ok()) {
        return Bad(std::string(nodes.status().message()));
      }
    }
    if (!peers_file.empty()) {
      if (auto peers = peers_source->Fetch(); !peers.ok()) {
        return Bad("--peers-file: " + std::string(peers.status().message()));
      }
    }
    std::puts("kvtier-router: configuration OK");
    return 0;
  }
  auto nodes = source->Fetch();
  if (!nodes.ok()) return Bad(std::string(nodes.status().message()));
  (void)kvtier::InitLogging(log_level);
  kvtier::RouteGrpcLogs();

  auto registry = std::make_shared<prometheus::Registry>();
  auto exposer = kvtier::ServeMetrics("kvtier-router", metrics_listen, registry);
  if (!exposer.ok()) {
    spdlog::critical("{}", exposer.status().ToString());
    return 1;
  }
  kvtier::router::RouteServiceImpl service(*nodes, options, health, registry.get(), cache_aware,
                                           credentials);
  if (*exposer != nullptr) {
    (*exposer)->SetPage([&service] { return kvtier::router::StatusPageHtml(service.Status()); });
    std::printf("kvtier-router status page on http://%s:%d/\n",
                metrics_listen.substr(0, metrics_listen.rfind(':')).c_str(), (*exposer)->port());
    std::fflush(stdout);
  }
  auto server = kvtier::StartGrpcServer("kvtier-router", listen, &service);
  if (!server.ok()) {
    spdlog::critical("{}", server.status().ToString());
    return 1;
  }
  spdlog::info("kvtier-router: {} nodes, load factor {}, cache-aware {}, daemons over {}{}",
               nodes->size(), options.load_factor, cache_aware.enabled ? "on" : "off",
               credentials.tls_ca_pem.empty() ? "plaintext" : "TLS",
               credentials.bearer_token.empty() ? "" : " with a token");
  std::optional<kvtier::router::MembershipRefresher> refresher, peers_refresher;
  if (source->changes()) {
    refresher.emplace(source.get(), *nodes, refresh_ms,
                      [&service](const auto& next) { service.SetMembers(next); });
  }
  if (peers_source != nullptr) {
    auto set_peers = [&service](const std::vector<kvtier::router::RingNode>& peers) {
      std::vector<std::string> addresses;
      for (const auto& p : peers) addresses.push_back(p.name);
      service.SetPeers(addresses);
    };
    // A file or name that lists nothing yet (the other replicas not up) is filled in later.
    auto peers = peers_source->Fetch();
    if (!peers.ok()) {
      spdlog::warn("kvtier-router: peers: {} (asked again every {} ms)", peers.status().ToString(),
                   refresh_ms);
    }
    const std::vector<kvtier::router::RingNode> initial =
        peers.ok() ? *peers : std::vector<kvtier::router::RingNode>{};
    set_peers(initial);
    if (peers_source->changes()) {
      peers_refresher.emplace(peers_source.get(), initial, refresh_ms, set_peers);
    }
  }
  int sig = 0;
  sigwait(&signals, &sig);
  peers_refresher.reset();
  refresher.reset();
  spdlog::info("kvtier-router: {} received, stopping", strsignal(sig));
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  (*server)->Wait();
  kvtier::ExitNow(0);
}
