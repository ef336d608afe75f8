// kvtierd: the kvtier cache daemon. Serves kvtier.v1.CacheService over gRPC from a tiered block
// store (host RAM + NVMe, and HBM where a GPU is present).
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "cache/block_store.h"
#include "common/logging.h"
#include "server/cache_service.h"
#include "spdlog/spdlog.h"

namespace {

constexpr char kUsage[] = R"(usage: kvtierd [options]

The kvtier cache daemon: keeps KV blocks of LLM prompts in host RAM and on NVMe (and in HBM where
a GPU is present) and serves them over gRPC (kvtier.v1.CacheService, grpc.health.v1.Health,
server reflection). With no options it starts a working single-node cache on 127.0.0.1:7700 with
its NVMe tier in ./kvtier-data.

options (defaults in brackets):
  --listen ADDR        gRPC address; port 0 picks a free port [127.0.0.1:7700]
  --data DIR           NVMe tier directory (blob files + RocksDB metadata) [./kvtier-data]
  --no-nvme            RAM only: no NVMe tier
  --host-mib N         host tier (pinned RAM) in MiB [1024]
  --nvme-gib N         NVMe tier capacity in GiB [64]
  --hbm-mib N          HBM tier in MiB, used only where a GPU is present [0]
  --max-block-mib N    largest block accepted, in MiB [8]
  --admission P        NVMe admission: all | seen-twice [seen-twice]
  --lease-ttl-ms N     default lease TTL [30000]
  --log-level L        trace | debug | info | warn | error | off [info]
  --help               this text

On start it prints one line to stdout, "kvtierd listening on HOST:PORT", then logs to stderr.
SIGTERM or SIGINT: stop accepting, finish in-flight requests (10 s at most), flush the NVMe tier.
)";

int Usage(const std::string& error) {
  std::fprintf(stderr, "kvtierd: %s\n\n%s", error.c_str(), kUsage);
  return 2;
}

bool ParsePositive(const char* s, uint64_t* out) {
  return s != nullptr && absl::SimpleAtoi(s, out) && *out > 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:7700";
  std::string log_level = "info";
  kvtier::StoreOptions so;
  so.nvme_path = "./kvtier-data";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    uint64_t n = 0;
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--no-nvme") {
      so.nvme_path.clear();
      continue;
    } else if (v == nullptr) {
      return Usage("unknown option or missing value: '" + a + "'");
    } else if (a == "--listen") {
      listen = v;
    } else if (a == "--data") {
      so.nvme_path = v;
    } else if (a == "--host-mib") {
      if (!ParsePositive(v, &n)) return Usage("--host-mib: needs a number > 0");
      so.host_bytes = n << 20;
    } else if (a == "--nvme-gib") {
      if (!ParsePositive(v, &n)) return Usage("--nvme-gib: needs a number > 0");
      so.nvme_bytes = n << 30;
    } else if (a == "--hbm-mib") {
      if (!absl::SimpleAtoi(v, &n)) return Usage("--hbm-mib: needs a number");
      so.hbm_bytes = n << 20;
    } else if (a == "--max-block-mib") {
      if (!ParsePositive(v, &n)) return Usage("--max-block-mib: needs a number > 0");
      so.max_block_bytes = n << 20;
    } else if (a == "--admission") {
      if (std::strcmp(v, "all") == 0) {
        so.nvme_admission = kvtier::NvmeAdmission::kAll;
      } else if (std::strcmp(v, "seen-twice") == 0) {
        so.nvme_admission = kvtier::NvmeAdmission::kSeenTwice;
      } else {
        return Usage("--admission: all or seen-twice");
      }
    } else if (a == "--lease-ttl-ms") {
      if (!ParsePositive(v, &n)) return Usage("--lease-ttl-ms: needs a number > 0");
      so.lease_ttl_us = static_cast<int64_t>(n) * 1000;
      so.max_lease_ttl_us = std::max(so.max_lease_ttl_us, so.lease_ttl_us);
    } else if (a == "--log-level") {
      log_level = v;
    } else {
      return Usage("unknown option '" + a + "'");
    }
    ++i;
  }
  if (absl::Status st = kvtier::InitLogging(log_level); !st.ok()) {
    return Usage(std::string(st.message()));
  }

  // Signals are taken by a thread of ours, not by whichever thread they land on.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto store = kvtier::BlockStore::Open(so);
  if (!store.ok()) {
    spdlog::critical("cannot open the block store: {}", store.status().ToString());
    return 1;
  }
  kvtier::server::CacheServiceImpl service(store->get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::critical("cannot listen on {}", listen);
    return 1;
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::printf("kvtierd listening on %s:%d\n", host.c_str(), port);
  std::fflush(stdout);
  spdlog::info("kvtierd: host tier {} MiB, NVMe tier {}", so.host_bytes >> 20,
               so.nvme_path.empty() ? std::string("off") : so.nvme_path);

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("kvtierd: {} received, shutting down", strsignal(sig));
  // New calls are refused from here on; calls in flight get up to 10 s to finish. (With nothing in
  // flight, a short deadline: gRPC would otherwise wait for idle client connections.)
  const int busy = service.in_flight();
  server->Shutdown(std::chrono::system_clock::now() +
                   (busy > 0 ? std::chrono::milliseconds(10'000) : std::chrono::milliseconds(100)));
  server->Wait();
  store->reset();  // flushes the NVMe tier
  spdlog::info("kvtierd: stopped");
  spdlog::shutdown();
  std::fflush(nullptr);
  // Everything durable is on disk now. gRPC's library teardown can take seconds while clients
  // keep their connections open; there is nothing left for it to do.
  _exit(0);
}
