// kvtier-worker: decode attention over cached prefixes (kvtier.v1.AttentionService), reading the
// KV blocks from whichever kvtierd nodes hold them, with Prometheus metrics.
#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/process_tuning.h"
#include "common/service_main.h"
#include "common/version.h"
#include "spdlog/spdlog.h"
#include "worker/attention_service.h"
#include "worker/worker.h"

namespace {

constexpr char kUsage[] = R"(usage: kvtier-worker (--router HOST:PORT | --nodes LIST) [options]

Serves decode attention (kvtier.v1.AttentionService) over cached prefixes: finds which kvtierd
nodes hold a prefix's blocks, reads only the bytes the attention needs (the requested layers;
for head-sparse attention, outside the local window, only the recall heads' slices) over UCX
where the daemons offer it and gRPC otherwise, keeps them in a block pool, and computes on the
CUDA kernels on a GPU (the pool then in page-locked memory, its blocks also kept in GPU memory),
else on the CPU fast path.

options:
  --router HOST:PORT     kvtier-router: its membership orders the nodes asked for a prefix
  --nodes LIST           or: kvtierd gRPC addresses, comma-separated, asked in this order
  --listen HOST:PORT     gRPC address (default 127.0.0.1:7900; port 0 picks a free port)
  --metrics-listen H:P   Prometheus /metrics (default 127.0.0.1:9790; empty: none)
  --pool-mib N           block pool capacity (default 1024; 0: none, every request fetches)
  --spare-mib N          memory kept for reuse beyond the pool, where requests' other blocks
                         land (default 1024)
  --gpu-pool-mib N       on a GPU: the pool's blocks also kept in GPU memory, copied there once
                         while they stay (default 4096; 0: copied for every request)
  --threads N            compute threads per layer (default 0: every core)
  --fetch-threads N      threads reading from nodes for all requests, beside each request's
                         own (default 8)
  --fetch-deadline-ms N  deadline of each call to a daemon (default 10000)
  --max-request-blocks N blocks over all sequences of one request (default 1048576)
  --no-ucx               read blocks over gRPC only
  --device auto|cpu|cuda where attention runs (default auto: the GPU when there is one and this
                         build has its kernels, else the CPU; cuda: fail to start without one)
  --log-level LEVEL      trace, debug, info, warn, error, off (default info)
  --check-config         check the options as a start would, print "kvtier-worker:
                         configuration OK" and exit 0 (2 on an error); listens on nothing,
                         connects to nothing, and does not look for a GPU (--device cuda)
  --version              the version and commit of this build
  --help                 this text

Requests carry the tenant of their blocks; an `authorization: Bearer TOKEN` header is passed on
to the daemons, which check it. On start it prints "kvtier-worker metrics on HOST:PORT" (when
enabled), then "kvtier-worker listening on HOST:PORT". SIGTERM or SIGINT stops it.
)";

int Bad(const std::string& why) {
  std::fprintf(stderr, "kvtier-worker: %s\n\n%s", why.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists (gRPC's own start with its first object), so that every thread
  // inherits the mask and stop signals reach sigwait below, never a thread they would kill.
  sigset_t signals = kvtier::BlockStopSignals();
  if (kvtier::AskedForVersion(argc, argv)) {
    std::puts(kvtier::VersionLine("kvtier-worker").c_str());
    return 0;
  }
  kvtier::TuneProcessForThroughput();
  kvtier::worker::WorkerOptions options;
  std::string listen = "127.0.0.1:7900", metrics_listen = "127.0.0.1:9790";
  std::string log_level = "info";
  bool check_only = false;
  for (kvtier::ArgReader args(argc, argv); args.Next();) {
    const std::string a = args.flag();
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--router") {
      if (!args.Value(&options.router)) return Bad("--router needs HOST:PORT");
    } else if (a == "--nodes") {
      std::string list;
      if (!args.Value(&list)) return Bad("--nodes needs a list");
      options.nodes = absl::StrSplit(list, ',', absl::SkipEmpty());
    } else if (a == "--listen") {
      if (!args.Value(&listen)) return Bad("--listen needs HOST:PORT");
    } else if (a == "--metrics-listen") {
      if (!args.Value(&metrics_listen)) return Bad("--metrics-listen needs HOST:PORT or ''");
    } else if (a == "--pool-mib") {
      uint64_t mib = 0;
      if (!args.Number(&mib, 0)) return Bad("--pool-mib needs a number >= 0");
      options.pool_bytes = mib << 20;
    } else if (a == "--spare-mib") {
      uint64_t mib = 0;
      if (!args.Number(&mib, 0)) return Bad("--spare-mib needs a number >= 0");
      options.spare_bytes = mib << 20;
    } else if (a == "--gpu-pool-mib") {
      uint64_t mib = 0;
      if (!args.Number(&mib, 0)) return Bad("--gpu-pool-mib needs a number >= 0");
      options.gpu_pool_bytes = mib << 20;
    } else if (a == "--threads") {
      if (!args.Number(&options.threads, 0)) return Bad("--threads needs a number >= 0");
    } else if (a == "--fetch-threads") {
      if (!args.Number(&options.fetch_threads, 0)) return Bad("--fetch-threads needs a number >= 0");
    } else if (a == "--fetch-deadline-ms") {
      if (!args.Number(&options.fetch_deadline_ms, 1)) return Bad("--fetch-deadline-ms: > 0");
    } else if (a == "--max-request-blocks") {
      if (!args.Number(&options.max_request_blocks, 1)) return Bad("--max-request-blocks: > 0");
    } else if (a == "--device") {
      if (!args.Value(&options.device) ||
          (options.device != "auto" && options.device != "cpu" && options.device != "cuda")) {
        return Bad("--device needs auto, cpu or cuda");
      }
    } else if (a == "--no-ucx") {
      options.use_ucx = false;
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
  if (options.router.empty() == options.nodes.empty()) {
    return Bad("give one of --router and --nodes");
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
  for (const std::string& peer :
       options.router.empty() ? options.nodes : std::vector{options.router}) {
    if (!kvtier::CheckListenAddress(peer, /*unix_ok=*/true).ok()) {
      return Bad((options.router.empty() ? "--nodes: '" : "--router: '") + peer +
                 "' is not HOST:PORT or unix:PATH");
    }
  }
  if (check_only) {
    std::puts("kvtier-worker: configuration OK");
    return 0;
  }
  (void)kvtier::InitLogging(log_level);
  kvtier::RouteGrpcLogs();

  auto registry = std::make_shared<prometheus::Registry>();
  auto exposer = kvtier::ServeMetrics("kvtier-worker", metrics_listen, registry);
  if (!exposer.ok()) {
    spdlog::critical("{}", exposer.status().ToString());
    return 1;
  }
  auto worker = kvtier::worker::Worker::Create(options, registry.get());
  if (!worker.ok()) return Bad(std::string(worker.status().message()));
  kvtier::worker::AttentionServiceImpl service(worker->get());
  // Queries of many layers and sequences: messages up to 256 MiB.
  auto server = kvtier::StartGrpcServer("kvtier-worker", listen, &service, 256 << 20);
  if (!server.ok()) {
    spdlog::critical("{}", server.status().ToString());
    return 1;
  }
  spdlog::info("kvtier-worker: reading from {}, pool {} MiB",
               options.router.empty() ? "a static node list" : "router " + options.router,
               options.pool_bytes >> 20);
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("kvtier-worker: {} received, stopping", strsignal(sig));
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  (*server)->Wait();
  kvtier::ExitNow(0);
}
