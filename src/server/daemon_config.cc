#include "server/daemon_config.h"

#include <yaml-cpp/yaml.h>

#include <functional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/service_main.h"
#include "common/status_macros.h"

namespace kvtier::server {
namespace {

struct Option {
  std::string key;    // YAML path, dot-separated
  std::string flag;   // command-line flag without "--"
  std::string value;  // what the value looks like (empty for a boolean)
  std::string def;    // default, as text
  std::string help;
  // Applies a value given as text; INVALID_ARGUMENT with the reason (the caller adds the name).
  std::function<absl::Status(DaemonConfig&, const std::string&)> set;
};

absl::Status Bad(const std::string& why) { return absl::InvalidArgumentError(why); }

template <typename T>
absl::Status SetNumber(const std::string& v, T* out, uint64_t scale, bool allow_zero) {
  uint64_t n = 0;
  if (!absl::SimpleAtoi(v, &n)) return Bad("'" + v + "' is not a non-negative whole number");
  if (!allow_zero && n == 0) return Bad("must be > 0");
  if (n > UINT64_MAX / scale) return Bad("'" + v + "' is too large");
  *out = static_cast<T>(n * scale);
  return absl::OkStatus();
}

absl::Status SetBool(const std::string& v, bool* out) {
  if (v == "true" || v == "yes" || v == "on" || v == "1") {
    *out = true;
  } else if (v == "false" || v == "no" || v == "off" || v == "0") {
    *out = false;
  } else {
    return Bad("'" + v + "' is not true or false");
  }
  return absl::OkStatus();
}

constexpr uint64_t kMiB = 1 << 20;

// A ZMQ endpoint kvtierd can bind: tcp://HOST:PORT or ipc://PATH.
absl::Status CheckZmqEndpoint(const std::string& v) {
  if (absl::StartsWith(v, "tcp://")) {
    if (CheckListenAddress(v.substr(6), /*unix_ok=*/false).ok()) return absl::OkStatus();
  } else if (absl::StartsWith(v, "ipc://") && v.size() > 6) {
    return absl::OkStatus();
  }
  return Bad("'" + v + "' is not tcp://HOST:PORT (port 0..65535) or ipc://PATH");
}

// Sets a ZMQ endpoint option (empty: off).
std::function<absl::Status(DaemonConfig&, const std::string&)> SetZmqEndpoint(
    std::string DaemonConfig::*field) {
  return [field](DaemonConfig& c, const std::string& v) {
    if (!v.empty()) KVTIER_RETURN_IF_ERROR(CheckZmqEndpoint(v));
    c.*field = v;
    return absl::OkStatus();
  };
}

const std::vector<Option>& Options() {
  static const std::vector<Option> options = {
      {"listen", "listen", "HOST:PORT|unix:PATH", "127.0.0.1:7700",
       "gRPC address; port 0 picks a free port; unix:PATH listens on a Unix socket",
       [](DaemonConfig& c, const std::string& v) {
         KVTIER_RETURN_IF_ERROR(CheckListenAddress(v, /*unix_ok=*/true));
         c.listen = v;
         return absl::OkStatus();
       }},
      {"metrics_listen", "metrics-listen", "HOST:PORT", "127.0.0.1:9770",
       "Prometheus /metrics over HTTP; port 0 picks a free port; empty: none",
       [](DaemonConfig& c, const std::string& v) {
         if (!v.empty()) KVTIER_RETURN_IF_ERROR(CheckListenAddress(v, /*unix_ok=*/false));
         c.metrics_listen = v;
         return absl::OkStatus();
       }},
      {"advertise_address", "advertise-address", "HOST:PORT", "(none)",
       "the gRPC address clients and kvtier-router reach this daemon at, as /metrics reports it "
       "(kvtier_daemon_info); empty: the listen address with its bound port",
       [](DaemonConfig& c, const std::string& v) {
         if (!v.empty()) KVTIER_RETURN_IF_ERROR(CheckListenAddress(v, /*unix_ok=*/false));
         c.advertise_address = v;
         return absl::OkStatus();
       }},
      {"ucx.listen", "ucx-listen", "HOST:PORT|auto|off", "auto",
       "UCX data plane listener for block reads of leased blocks; port 0 picks a free port. "
       "auto: the gRPC host (127.0.0.1 for a Unix socket), any port",
       [](DaemonConfig& c, const std::string& v) {
         if (v != "auto" && v != "off" && !CheckListenAddress(v, /*unix_ok=*/false).ok()) {
           return Bad("'" + v + "' is not HOST:PORT (port 0..65535), auto or off");
         }
         c.ucx_listen = v;
         return absl::OkStatus();
       }},
      {"ucx.mode", "ucx-mode", "rkey|served|auto", "auto",
       "rkey: readers get the host arena's remote key and read one-sided (any byte of the "
       "arena: one trust domain); served: the daemon sends each reader the ranges of its own "
       "leases, and no key exists (several tenants). auto: served with auth on and two or more "
       "tenants, else rkey",
       [](DaemonConfig& c, const std::string& v) {
         if (v != "rkey" && v != "served" && v != "auto") {
           return Bad("'" + v + "' is not rkey, served or auto");
         }
         c.ucx_mode = v;
         return absl::OkStatus();
       }},
      {"events.zmq_endpoint", "kv-events-endpoint", "tcp://HOST:PORT|ipc://PATH", "(none)",
       "publish the store's block stored/removed events in vLLM's KV-event format (ZMQ PUB, "
       "msgpack) for KV-aware routers; port 0 picks a free port",
       SetZmqEndpoint(&DaemonConfig::kv_events_endpoint)},
      {"events.zmq_replay_endpoint", "kv-events-replay-endpoint", "tcp://HOST:PORT|ipc://PATH",
       "(none)",
       "ZMQ ROUTER socket that replays the last 10,000 event batches to subscribers that "
       "missed some; needs events.zmq_endpoint",
       SetZmqEndpoint(&DaemonConfig::kv_events_replay_endpoint)},
      {"log_level", "log-level", "LEVEL", "info", "trace, debug, info, warn, error or off",
       [](DaemonConfig& c, const std::string& v) {
         if (!ValidateLogLevel(v).ok()) return Bad("'" + v + "' is not a log level");
         c.log_level = v;
         return absl::OkStatus();
       }},
      {"log_format", "log-format", "FORMAT", "text",
       "text, or json (one object a line: ts, level, msg) for log collectors",
       [](DaemonConfig& c, const std::string& v) {
         if (v != "text" && v != "json") return Bad("'" + v + "' is not text or json");
         c.log_format = v;
         return absl::OkStatus();
       }},
      {"max_message_mib", "max-message-mib", "N", "64",
       "largest gRPC message accepted, MiB (1..2047: gRPC counts message sizes in an int)",
       [](DaemonConfig& c, const std::string& v) {
         KVTIER_RETURN_IF_ERROR(SetNumber(v, &c.max_message_bytes, kMiB, false));
         if (c.max_message_bytes > 2047 * kMiB) return Bad("'" + v + "' is over 2047");
         return absl::OkStatus();
       }},
      {"auth.tokens_file", "auth-tokens", "FILE", "(none)",
       "YAML map tenant: token; every call must then carry its tenant's bearer token",
       [](DaemonConfig& c, const std::string& v) {
         c.auth_tokens_file = v;
         return absl::OkStatus();
       }},
      {"tls.cert", "tls-cert", "FILE", "(none)", "PEM certificate chain: serve gRPC over TLS",
       [](DaemonConfig& c, const std::string& v) {
         c.tls_cert = v;
         return absl::OkStatus();
       }},
      {"tls.key", "tls-key", "FILE", "(none)", "PEM private key of tls.cert",
       [](DaemonConfig& c, const std::string& v) {
         c.tls_key = v;
         return absl::OkStatus();
       }},
      {"tls.client_ca", "tls-client-ca", "FILE", "(none)",
       "PEM CA: require client certificates it signed (mutual TLS)",
       [](DaemonConfig& c, const std::string& v) {
         c.tls_client_ca = v;
         return absl::OkStatus();
       }},
      {"store.host_mib", "host-mib", "N", "1024", "host tier (pinned RAM), MiB",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.host_bytes, kMiB, false);
       }},
      {"store.hugepages", "hugepages", "BOOL", "true",
       "back the host tier with 2 MiB pages where the system has them (with ucx.listen on, the "
       "UCX data plane allocates the host tier instead)",
       [](DaemonConfig& c, const std::string& v) { return SetBool(v, &c.store.host_hugepages); }},
      {"store.mlock", "mlock", "BOOL", "true", "lock the host tier in RAM (warns if not permitted)",
       [](DaemonConfig& c, const std::string& v) { return SetBool(v, &c.store.host_lock); }},
      {"store.max_block_mib", "max-block-mib", "N", "8", "largest block accepted, MiB",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.max_block_bytes, kMiB, false);
       }},
      {"store.hbm_mib", "hbm-mib", "N", "0", "HBM tier, MiB; used only where a GPU is present",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.hbm_bytes, kMiB, true);
       }},
      {"store.hbm_device", "hbm-device", "N", "0", "CUDA device of the HBM tier",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.hbm_device, 1, true);
       }},
      {"store.nvme.path", "data", "DIR", "./kvtier-data",
       "NVMe tier directory (blob files + RocksDB metadata); empty: no NVMe tier",
       [](DaemonConfig& c, const std::string& v) {
         c.store.nvme_path = v;
         return absl::OkStatus();
       }},
      {"store.nvme.capacity_gib", "nvme-gib", "N", "64", "NVMe tier capacity, GiB",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.nvme_bytes, kMiB * 1024, false);
       }},
      {"store.nvme.admission", "admission", "POLICY", "seen-twice",
       "which demoted blocks are written to flash: all, or seen-twice (read since their put)",
       [](DaemonConfig& c, const std::string& v) {
         if (v == "all") {
           c.store.nvme_admission = NvmeAdmission::kAll;
         } else if (v == "seen-twice") {
           c.store.nvme_admission = NvmeAdmission::kSeenTwice;
         } else {
           return Bad("'" + v + "' is not all or seen-twice");
         }
         return absl::OkStatus();
       }},
      {"store.nvme.write_mib_per_s", "nvme-write-mib-per-s", "N", "0",
       "flash write budget for demotions, MiB/s; 0: unlimited",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.nvme_write_bytes_per_s, kMiB, true);
       }},
      {"store.nvme.direct_io", "direct-io", "BOOL", "true", "O_DIRECT payload I/O on the NVMe tier",
       [](DaemonConfig& c, const std::string& v) { return SetBool(v, &c.store.nvme_direct_io); }},
      {"store.lease_ttl_ms", "lease-ttl-ms", "N", "30000", "lease TTL when a client names none",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.lease_ttl_us, 1000, false);
       }},
      {"store.max_lease_ttl_ms", "max-lease-ttl-ms", "N", "300000", "longest lease TTL allowed",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.max_lease_ttl_us, 1000, false);
       }},
      {"store.max_leased_mib", "max-leased-mib", "N", "0",
       "cap on bytes pinned by leases (each block once), MiB; 0: half the host tier",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.max_leased_bytes, kMiB, true);
       }},
      {"limits.max_inflight_mib", "max-inflight-mib", "N", "4096",
       "payload MiB held for requests in progress, in total (RESOURCE_EXHAUSTED beyond)",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.limits.max_inflight_bytes, kMiB, false);
       }},
      {"limits.max_inflight_mib_per_connection", "max-inflight-mib-per-connection", "N", "1024",
       "the same, per client connection",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.limits.max_inflight_bytes_per_connection, kMiB, false);
       }},
      {"limits.max_inflight_mib_per_tenant", "max-inflight-mib-per-tenant", "N", "0",
       "the same, per tenant; 0: a quarter of the host tier (at least one largest block)",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.limits.max_inflight_bytes_per_tenant, kMiB, true);
       }},
      {"limits.max_leased_mib_per_tenant", "max-leased-mib-per-tenant", "N", "0",
       "bytes under one tenant's live leases, MiB; 0: a quarter of the host tier (at least one "
       "largest block)",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.limits.max_leased_bytes_per_tenant, kMiB, true);
       }},
      {"limits.max_resident_mib_per_tenant", "max-resident-mib-per-tenant", "N", "0",
       "bytes of one tenant's blocks in each memory tier, MiB (a put past it evicts that tenant's "
       "own blocks first); 0: three quarters of the host tier when the token file names two or "
       "more tenants, else no cap",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.store.tenant_memory_bytes, kMiB, true);
       }},
      {"limits.stream_idle_timeout_s", "stream-idle-timeout-s", "N", "30",
       "cancel a Put stream that sends nothing, or a Get whose client reads nothing, for this "
       "long; 0: never",
       [](DaemonConfig& c, const std::string& v) {
         uint64_t seconds = 0;
         KVTIER_RETURN_IF_ERROR(SetNumber(v, &seconds, 1, true));
         if (seconds > 86'400) return Bad("at most 86400 (a day)");
         c.limits.stream_idle_timeout = std::chrono::seconds(static_cast<int64_t>(seconds));
         return absl::OkStatus();
       }},
      {"limits.max_keys_per_get", "max-keys-per-get", "N", "65536",
       "keys in one Get (the clients split longer ones)",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.limits.max_keys_per_get, 1, false);
       }},
      {"limits.max_keys_per_request", "max-keys-per-request", "N", "1048576",
       "keys in one Lookup, Lease or Delete",
       [](DaemonConfig& c, const std::string& v) {
         return SetNumber(v, &c.limits.max_keys_per_request, 1, false);
       }},
  };
  return options;
}

const Option* FindByKey(const std::string& key) {
  for (const Option& o : Options()) {
    if (o.key == key) return &o;
  }
  return nullptr;
}
const Option* FindByFlag(const std::string& flag) {
  for (const Option& o : Options()) {
    if (o.flag == flag) return &o;
  }
  return nullptr;
}

// Applies a YAML tree, naming the full key of anything unknown or malformed.
absl::Status ApplyYaml(const YAML::Node& node, const std::string& prefix, DaemonConfig& c) {
  if (!node.IsMap())
    return Bad(absl::StrCat(prefix.empty() ? "config" : prefix, ": expected a map"));
  for (const auto& kv : node) {
    const std::string key = (prefix.empty() ? "" : prefix + ".") + kv.first.as<std::string>();
    if (kv.second.IsMap()) {
      absl::Status st = ApplyYaml(kv.second, key, c);
      if (!st.ok()) return st;
      continue;
    }
    const Option* o = FindByKey(key);
    if (o == nullptr) return Bad(absl::StrCat(key, ": unknown setting"));
    if (!kv.second.IsScalar() && !kv.second.IsNull()) {
      return Bad(absl::StrCat(key, ": expected a single value"));
    }
    const std::string value = kv.second.IsNull() ? "" : kv.second.as<std::string>();
    absl::Status st = o->set(c, value);
    if (!st.ok()) return Bad(absl::StrCat(key, ": ", st.message()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string DaemonUsage() {
  std::string out = R"(usage: kvtierd [--config FILE] [options]

The kvtier cache daemon: keeps KV blocks of LLM prompts in host RAM and on NVMe (and in HBM where
a GPU is present) and serves them over gRPC (kvtier.v1.CacheService, grpc.health.v1.Health,
server reflection). With no options it starts a working single-node cache on 127.0.0.1:7700 with
its NVMe tier in ./kvtier-data.

Settings come from a YAML file (--config FILE, keys as below, nested by their dots) and are
overridden by flags. Every value is checked at start; an error names the key or flag.

  --config FILE                  YAML settings; given more than once, each file overrides the
                                 ones before it (flags still override them all)
)";
  for (const Option& o : Options()) {
    std::string left = "  --" + o.flag + (o.value.empty() ? "" : " " + o.value);
    if (left.size() < 32) left.resize(32, ' ');
    absl::StrAppend(&out, left, " ", o.help, "\n", std::string(33, ' '), "YAML ", o.key,
                    ", default ", o.def, "\n");
  }
  out += R"(  --no-nvme                      no NVMe tier (same as --data "")
  --check-config                 check the configuration, the token file and the TLS files as a
                                 start would, print "kvtierd: configuration OK" and exit 0 (2 on
                                 an error); opens no store, port or shared memory, and does not
                                 check the machine (memory, /dev/shm, the NVMe directory)
  --version                      the version and commit of this build
  --help                         this text

On start it prints "kvtierd metrics on HOST:PORT" and "kvtierd ucx on HOST:PORT" (when
enabled), then "kvtierd listening on HOST:PORT" (gRPC, last) to stdout, then logs to stderr.
SIGTERM or SIGINT: new calls are refused, calls in flight get up to 10 s, the NVMe tier is
flushed, and it exits 0.
)";
  return out;
}

absl::StatusOr<DaemonConfig> LoadDaemonConfig(int argc, char** argv, bool* help) {
  *help = false;
  DaemonConfig c;
  // The file first, so that flags override it wherever they stand.
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      *help = true;
      return c;
    }
    if (a != "--config") continue;
    if (i + 1 >= argc) return Bad("--config: needs a file");
    try {
      YAML::Node root = YAML::LoadFile(argv[i + 1]);
      if (!root.IsNull()) {
        absl::Status st = ApplyYaml(root, "", c);
        if (!st.ok()) return Bad(absl::StrCat(argv[i + 1], ": ", st.message()));
      }
    } catch (const YAML::Exception& e) {
      return Bad(absl::StrCat("--config ", argv[i + 1], ": ", e.what()));
    }
  }
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config") {
      ++i;
      continue;
    }
    if (a.rfind("--", 0) != 0) return Bad(absl::StrCat("unexpected argument '", a, "'"));
    std::string name = a.substr(2), value;
    if (name == "no-nvme") {
      c.store.nvme_path.clear();
      continue;
    }
    if (name == "check-config") {
      c.check_only = true;
      continue;
    }
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const Option* o = FindByFlag(name);
    if (o == nullptr) return Bad(absl::StrCat("unknown option '--", name, "' (see --help)"));
    if (eq == std::string::npos) {
      if (i + 1 >= argc) return Bad(absl::StrCat(a, ": needs a value"));
      value = argv[++i];
    }
    absl::Status st = o->set(c, value);
    if (!st.ok()) return Bad(absl::StrCat("--", name, ": ", st.message()));
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return Bad("tls.cert (--tls-cert) and tls.key (--tls-key): give both or neither");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return Bad("tls.client_ca (--tls-client-ca): needs tls.cert and tls.key");
  }
  if (!c.kv_events_replay_endpoint.empty() && c.kv_events_endpoint.empty()) {
    return Bad("events.zmq_replay_endpoint (--kv-events-replay-endpoint): needs "
               "events.zmq_endpoint (--kv-events-endpoint)");
  }
  if (c.store.max_lease_ttl_us < c.store.lease_ttl_us) {
    return Bad("store.max_lease_ttl_ms (--max-lease-ttl-ms): must be >= store.lease_ttl_ms");
  }
  absl::Status st = c.store.Validate();
  if (!st.ok()) return Bad(absl::StrCat("store: ", st.message()));
  return c;
}

}  // namespace kvtier::server
