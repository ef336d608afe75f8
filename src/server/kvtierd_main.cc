// kvtierd: the kvtier cache daemon. Serves kvtier.v1.CacheService over gRPC from a tiered block
// store (host RAM + NVMe, and HBM where a GPU is present).
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cache/block_store.h"
#include "common/grpc_tuning.h"
#include "common/logging.h"
#include "common/process_tuning.h"
#include "common/service_main.h"
#include "common/version.h"
#include "kvevents/publisher.h"
#include "server/auth.h"
#include "server/cache_service.h"
#include "server/daemon_config.h"
#include "server/kv_event_feed.h"
#include "server/metrics.h"
#include "spdlog/spdlog.h"
#include "transfer/shm_sweep.h"
#include "transfer/ucx_server.h"

namespace {

// The host tier must fit in the memory available now and, with the UCX data plane (which maps it
// from shared memory), in /dev/shm's free space: a larger one filled /dev/shm with no error, and
// its segments outlived a kill.
absl::Status CheckHostTierFits(uint64_t host_bytes, bool shared_memory) {
  constexpr uint64_t kMiB = 1 << 20;
  uint64_t available_kib = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (std::sscanf(line.c_str(), "MemAvailable: %" SCNu64 " kB", &available_kib) == 1) break;
  }
  if (available_kib != 0 && host_bytes > available_kib * 1024) {
    return absl::ResourceExhaustedError(
        absl::StrCat("--host-mib (store.host_mib): ", host_bytes / kMiB, " MiB is more than the ",
                     available_kib / 1024, " MiB of memory available"));
  }
  if (shared_memory) {
    const std::optional<uint64_t> free_bytes = kvtier::transfer::SharedMemoryFreeBytes();
    if (free_bytes.has_value() && host_bytes > *free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "--host-mib (store.host_mib): ", host_bytes / kMiB, " MiB is more than the ",
          *free_bytes / kMiB,
          " MiB free in /dev/shm, where the UCX data plane maps the host tier (--ucx-listen off "
          "serves without it)"));
    }
  }
  return absl::OkStatus();
}

// The token file and the TLS files, read and checked: what a start checks before it opens
// anything, and all that --check-config reads besides the configuration itself.
struct Credentials {
  std::optional<kvtier::server::TenantAuth> auth;  // when auth.tokens_file is set
  std::string tls_cert, tls_key, tls_client_ca;    // PEM text; empty where not configured
};

absl::StatusOr<Credentials> LoadCredentials(const kvtier::server::DaemonConfig& config) {
  Credentials out;
  if (!config.auth_tokens_file.empty()) {
    auto a = kvtier::server::TenantAuth::LoadFile(config.auth_tokens_file);
    if (!a.ok()) {
      return absl::Status(a.status().code(),
                          absl::StrCat("auth.tokens_file: ", a.status().message()));
    }
    out.auth = std::move(*a);
  }
  struct PemFile {
    const std::string* path;
    const char* setting;
    std::string* pem;
  };
  for (const PemFile& f : {PemFile{&config.tls_cert, "tls.cert", &out.tls_cert},
                           PemFile{&config.tls_key, "tls.key", &out.tls_key},
                           PemFile{&config.tls_client_ca, "tls.client_ca", &out.tls_client_ca}}) {
    if (f.path->empty()) continue;
    auto pem = kvtier::ReadPemFile(*f.path, f.setting);
    if (!pem.ok()) return pem.status();
    *f.pem = std::move(*pem);
  }
  return out;
}

}  // namespace

// One line of what this daemon runs with, once it serves: the configuration as resolved (limits
// made concrete, UCX's transports, how the host arena's memory came out).
void LogEffectiveConfig(const kvtier::server::DaemonConfig& config, const kvtier::StoreOptions& so,
                        const kvtier::StoreStats& stats,
                        const kvtier::server::ServiceLimits& limits,
                        const kvtier::transfer::UcxServer* ucx,
                        const kvtier::server::TenantAuth* auth, const std::string& address) {
  const char* ucx_tls = std::getenv("UCX_TLS");
  const std::string data_plane =
      ucx == nullptr ? "off"
                     : absl::StrCat(ucx->host(), ":", ucx->port(), " (transports: ",
                                    ucx_tls != nullptr ? ucx_tls : "UCX's choice", ")");
  const std::string host_memory =
      ucx != nullptr ? "UCX shared memory"
                     : absl::StrCat(stats.host_hugetlb ? "2 MiB hugepages" : "normal pages",
                                    so.host_lock ? (stats.host_locked ? ", mlocked" : ", mlock refused")
                                                 : ", not locked");
  const std::string nvme =
      so.nvme_path.empty()
          ? "off"
          : absl::StrCat(so.nvme_path, " (", so.nvme_bytes >> 30, " GiB",
                         so.nvme_direct_io ? ", O_DIRECT" : "", ")");
  const std::string auth_mode =
      auth == nullptr ? "off"
                      : absl::StrCat(auth->tenants(), " tenants, ", auth->cluster_tokens(),
                                     " cluster tokens");
  spdlog::info(
      "kvtierd: serving {} with host tier {} MiB ({}), NVMe tier {}, HBM tier {} MiB; UCX data "
      "plane {}; auth {}; TLS {}; limits: message {} MiB, in flight {} / {} per connection / {} "
      "per tenant MiB, leased {} MiB per tenant, resident {} per tenant, keys {} per Get / {} per "
      "request, idle streams "
      "cancelled after {} s; metrics {}",
      address, so.host_bytes >> 20, host_memory, nvme, stats.tiers[static_cast<int>(kvtier::Tier::kHbm)].capacity_bytes >> 20,
      data_plane, auth_mode,
      config.tls_cert.empty() ? "off" : (config.tls_client_ca.empty() ? "on" : "on (mutual)"),
      config.max_message_bytes >> 20, limits.max_inflight_bytes >> 20,
      limits.max_inflight_bytes_per_connection >> 20, limits.max_inflight_bytes_per_tenant >> 20,
      limits.max_leased_bytes_per_tenant >> 20,
      so.tenant_memory_bytes == 0 ? std::string("no cap")
                                  : absl::StrCat(so.tenant_memory_bytes >> 20, " MiB"),
      limits.max_keys_per_get,
      limits.max_keys_per_request,
      std::chrono::duration_cast<std::chrono::seconds>(limits.stream_idle_timeout).count(),
      config.metrics_listen.empty() ? std::string("off") : config.metrics_listen);
}

int main(int argc, char** argv) {
  // Before any thread exists (gRPC's own start with its first object), so that every thread
  // inherits the mask and stop signals reach sigwait below, never a thread they would kill.
  sigset_t signals = kvtier::BlockStopSignals();
  if (kvtier::AskedForVersion(argc, argv)) {
    std::puts(kvtier::VersionLine("kvtierd").c_str());
    return 0;
  }
  kvtier::TuneProcessForThroughput();
  bool help = false;
  auto config = kvtier::server::LoadDaemonConfig(argc - 1, argv + 1, &help);
  if (help) {
    std::fputs(kvtier::server::DaemonUsage().c_str(), stdout);
    return 0;
  }
  if (!config.ok()) {
    std::fprintf(stderr, "kvtierd: %s\n(see kvtierd --help)\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  if (config->check_only) {
    // Everything a start checks before it opens the store, and nothing after that.
    if (auto credentials = LoadCredentials(*config); !credentials.ok()) {
      std::fprintf(stderr, "kvtierd: %s\n", std::string(credentials.status().message()).c_str());
      return 2;
    }
    std::puts("kvtierd: configuration OK");
    return 0;
  }
  if (absl::Status st = kvtier::InitLogging(config->log_level, config->log_format); !st.ok()) {
    std::fprintf(stderr, "kvtierd: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  kvtier::RouteGrpcLogs();
  spdlog::info("{} starting", kvtier::VersionLine("kvtierd"));
  kvtier::StoreOptions so = config->store;
  const std::string& listen = config->listen;

  // Credentials first: a daemon that cannot enforce them must not open its store or serve.
  auto credentials = LoadCredentials(*config);
  if (!credentials.ok()) {
    spdlog::critical("{}", std::string(credentials.status().message()));
    return 2;
  }
  std::optional<kvtier::server::TenantAuth> auth = std::move(credentials->auth);
  if (auth.has_value()) {
    spdlog::info("kvtierd: bearer tokens required ({} tenants)", auth->tenants());
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!config->tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl(
        config->tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_key_cert_pairs.push_back({credentials->tls_key, credentials->tls_cert});
    ssl.pem_root_certs = credentials->tls_client_ca;
    creds = grpc::SslServerCredentials(ssl);
  }

  // The UCX data plane. rkey mode: one-sided reads of leased blocks straight from the host
  // arena, which UCX allocates so that readers on this host can map it (and copy at memory
  // speed); whoever reaches the listener can read all of it. served mode: the daemon sends each
  // reader the ranges of its own leases, for several tenants (src/transfer/README.md, "Modes").
  std::unique_ptr<kvtier::transfer::UcxServer> ucx;
  std::string ucx_listen = config->ucx_listen;
  if (ucx_listen == "auto") ucx_listen = kvtier::ListenHost(listen) + ":0";
  const bool tenants_apart = auth.has_value() && auth->tenants() >= 2;
  const bool served = config->ucx_mode == "served" || (config->ucx_mode == "auto" && tenants_apart);
  const auto ucx_mode =
      served ? kvtier::transfer::DataPlaneMode::kServed : kvtier::transfer::DataPlaneMode::kRkey;
  if (ucx_listen != "off" && !served && tenants_apart) {
    spdlog::warn(
        "kvtierd: ucx.mode is rkey with {} tenants: every client that can reach {} can read "
        "any block in the host arena, whatever its tenant",
        auth->tenants(), ucx_listen);
  }
  // Tenants kept apart in the memory tiers too: none may fill more than three quarters of one.
  if (so.tenant_memory_bytes == 0 && tenants_apart) {
    so.tenant_memory_bytes = std::max<uint64_t>(so.host_bytes / 4 * 3, so.max_block_bytes);
  }
  if (absl::Status st = CheckHostTierFits(so.host_bytes, ucx_listen != "off" && !served);
      !st.ok()) {
    spdlog::critical("{}", std::string(st.message()));
    return 2;
  }
  if (ucx_listen != "off") {
    // A daemon killed with SIGKILL may have left its arena in /dev/shm (where UCX names its
    // segments); a segment that nothing maps is garbage.
    const kvtier::transfer::ShmSweep swept = kvtier::transfer::RemoveOrphanShmSegments();
    if (swept.removed > 0) {
      spdlog::warn("kvtierd: removed {} shared-memory segments ({} MiB) that no process used, "
                   "left by UCX processes that died",
                   swept.removed, swept.bytes >> 20);
    }
    so.host_memory = [&](size_t bytes) -> absl::StatusOr<uint8_t*> {
      auto u = kvtier::transfer::UcxServer::Start(
          {.listen = ucx_listen, .region_bytes = bytes, .mode = ucx_mode});
      if (!u.ok()) {
        return absl::Status(u.status().code(), absl::StrCat("ucx.listen: ", u.status().message()));
      }
      ucx = std::move(*u);
      return ucx->allocated_region();
    };
  }
  // Block stored/removed events for CacheService.WatchBlocks (kvtier-router's cache-aware index).
  // The tenants' numbers (a token file's tenants first) and resident usage come from them too.
  kvtier::server::BlockEvents block_events;
  kvtier::server::Tenants tenants;
  if (auth.has_value()) {
    for (const std::string& t : auth->tenant_names()) tenants.Id(t);
  }
  // The same events in vLLM's KV-event format, for KV-aware routers (--kv-events-endpoint).
  // Subscribers of an earlier process forget what it announced: the first event says so.
  std::unique_ptr<kvtier::kvevents::KvEventPublisher> kv_events;
  if (!config->kv_events_endpoint.empty()) {
    auto p = kvtier::kvevents::KvEventPublisher::Start(
        {.endpoint = config->kv_events_endpoint,
         .replay_endpoint = config->kv_events_replay_endpoint});
    if (!p.ok()) {
      spdlog::critical("events.zmq_endpoint (--kv-events-endpoint): {}", p.status().ToString());
      return 1;
    }
    kv_events = std::move(*p);
    kv_events->Publish(kvtier::kvevents::AllBlocksCleared{});
    std::printf("kvtierd kv-events on %s\n", kv_events->endpoint().c_str());
    if (!kv_events->replay_endpoint().empty()) {
      std::printf("kvtierd kv-events-replay on %s\n", kv_events->replay_endpoint().c_str());
    }
  }
  so.on_block_event = [&block_events, &tenants, pub = kv_events.get()](const kvtier::BlockEvent& e) {
    tenants.OnBlockEvent(e);
    // WatchBlocks says whether a block is in the store; a move between tiers changes nothing
    // there.
    if (!e.moved_from.has_value()) block_events.Publish(e.key, e.tenant, e.stored);
    if (pub != nullptr) {
      for (kvtier::kvevents::Event& k : kvtier::server::KvEventsOf(e)) pub->Publish(std::move(k));
    }
  };
  auto store = kvtier::BlockStore::Open(so);
  if (!store.ok()) {
    spdlog::critical("cannot open the block store: {}", store.status().ToString());
    return 1;
  }
  {
    const kvtier::TierStats recovered = (*store)->Stats().tiers[static_cast<int>(kvtier::Tier::kNvme)];
    tenants.AddRecovered(recovered.blocks, recovered.used_bytes);
  }
  std::unique_ptr<kvtier::server::DaemonMetrics> metrics;
  if (!config->metrics_listen.empty()) {
    auto m = kvtier::server::DaemonMetrics::Start(config->metrics_listen, store->get());
    if (!m.ok()) {
      spdlog::critical("{}", m.status().ToString());
      return 1;
    }
    metrics = std::move(*m);
    const std::string mhost = config->metrics_listen.substr(0, config->metrics_listen.rfind(':'));
    std::printf("kvtierd metrics on %s:%d\n", mhost.c_str(), metrics->port());
  }
  kvtier::server::ServiceLimits limits = config->limits;
  // A Get message carries one chunk of payload plus its header: keep it under the message limit.
  limits.get_chunk_bytes = std::min(
      limits.get_chunk_bytes,
      config->max_message_bytes - std::min<size_t>(config->max_message_bytes / 2, 64 << 10));
  kvtier::server::CacheServiceImpl service(store->get(), limits, metrics.get(),
                                           auth.has_value() ? &*auth : nullptr);
  service.SetBlockEvents(&block_events, &tenants);
  if (metrics != nullptr) {
    kvtier::server::DaemonMetrics::ServiceSource source{
        .usage = [&service] { return service.AllUsage(); },
        .idle_cancels = [&service] { return service.idle_cancels(); },
        .kv_events_published =
            [&kv_events] { return kv_events ? kv_events->events_published() : uint64_t{0}; },
        .kv_events_dropped =
            [&kv_events] { return kv_events ? kv_events->events_dropped() : uint64_t{0}; }};
    if (ucx != nullptr) {  // 0 in rkey mode, where the daemon serves no reads itself
      source.served_reads = [&ucx] { return ucx->served_reads(); };
      source.served_read_refusals = [&ucx] { return ucx->served_refusals(); };
    }
    metrics->SetServiceSource(std::move(source));
  }
  if (ucx != nullptr) {
    service.SetDataPlane(ucx.get());
    if (served) ucx->SetReadAuthorizer(service.ServedReadAuthorizer());
    spdlog::info("kvtierd: UCX data plane in {} mode", kvtier::transfer::ModeName(ucx_mode));
    std::printf("kvtierd ucx on %s:%d\n", ucx->host().c_str(), ucx->port());
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  kvtier::NoSharedPort(builder);
  int port = 0;
  builder.AddListeningPort(listen, creds, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config->max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config->max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kvtier::kGrpcMaxFrameBytes);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kvtier::kGrpcStreamWindowBytes);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, kvtier::kGrpcWriteBufferBytes);
  builder.AddChannelArgument(GRPC_ARG_TCP_READ_CHUNK_SIZE, kvtier::kGrpcReadChunkBytes);
  // Handler threads stay: gRPC's defaults (at least 1 and at most 2 idle pollers) created and
  // ended about 20 threads a second under 8 clients' 1 MiB gets; with these, none.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 4);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 16);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::critical("cannot listen on {} (--listen, listen): in use, or not an address here",
                     listen);
    return 1;
  }
  std::printf("kvtierd listening on %s\n", kvtier::BoundAddress(listen, port).c_str());
  if (metrics != nullptr) {
    metrics->SetAddress(config->advertise_address.empty() ? kvtier::BoundAddress(listen, port)
                                                          : config->advertise_address);
  }
  std::fflush(stdout);
  LogEffectiveConfig(*config, (*store)->options(), (*store)->Stats(), service.limits(), ucx.get(),
                     auth.has_value() ? &*auth : nullptr, kvtier::BoundAddress(listen, port));

  // Leases also end on every put and lease; this ends them on an idle daemon too, so that the
  // pinned capacity of a client that never released comes back, and the lease gauge is right.
  std::atomic<bool> stopping{false};
  std::thread reaper([&] {
    while (!stopping.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      (*store)->ExpireLeases();
    }
  });

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("kvtierd: {} received, shutting down", strsignal(sig));
  // New calls are answered UNAVAILABLE from here on (and health says NOT_SERVING); calls in
  // flight get up to 10 s to finish. Then the server stops with a short deadline, which ends what
  // is left: idle Get sessions, watchers and client connections, which gRPC would otherwise wait
  // for.
  service.Drain();
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  const auto drain_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (service.in_flight() > 0 && std::chrono::steady_clock::now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  server->Wait();
  spdlog::debug("kvtierd: gRPC server stopped");
  stopping.store(true);
  reaper.join();
  if (ucx != nullptr) ucx->StopServing();  // clients' UCX reads fail from here on
  // The metrics endpoint is left to ExitNow below: stopping its HTTP server takes a second.
  if (metrics != nullptr) metrics->DetachStore();  // and the service's tenant usage
  service.DetachStore();
  store->reset();  // flushes the NVMe tier
  ucx.reset();     // frees the arena's memory
  spdlog::info("kvtierd: stopped");
  spdlog::shutdown();
  // Everything durable is on disk now.
  kvtier::ExitNow(0);
}
