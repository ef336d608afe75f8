#include "common/service_main.h"

#include <grpc/support/log.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

// LeakSanitizer's check, defined only where the binary is built with it.
extern "C" __attribute__((weak)) void __lsan_do_leak_check();

namespace kvtier {

sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> ServeMetrics(
    const std::string& program, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry) {
  if (listen.empty()) return std::unique_ptr<MetricsServer>();
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> server,
                          MetricsServer::Start(listen, program));
  server->RegisterCollectable(registry);
  std::printf("%s metrics on %s:%d\n", program.c_str(), listen.substr(0, listen.rfind(':')).c_str(),
              server->port());
  return server;
}

namespace {

bool IsUnixSocket(const std::string& listen) {
  return listen.starts_with("unix:") || listen.starts_with("unix-abstract:");
}

}  // namespace

std::string ListenHost(const std::string& listen) {
  return IsUnixSocket(listen) ? "127.0.0.1" : listen.substr(0, listen.rfind(':'));
}

absl::Status CheckListenAddress(const std::string& listen, bool unix_ok) {
  if (IsUnixSocket(listen)) {
    if (!unix_ok) return absl::InvalidArgumentError("'" + listen + "': not a Unix socket here");
    if (listen.substr(listen.find(':') + 1).empty()) {
      return absl::InvalidArgumentError("'" + listen + "' names no socket path");
    }
    return absl::OkStatus();
  }
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos)
    return absl::InvalidArgumentError("'" + listen + "' has no :PORT");
  uint32_t port = 0;
  if (!absl::SimpleAtoi(listen.substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError("'" + listen + "': the port must be 0..65535");
  }
  if (colon == 0) return absl::InvalidArgumentError("'" + listen + "' has no HOST");
  return absl::OkStatus();
}

void RouteGrpcLogs() {
  gpr_set_log_function([](gpr_log_func_args* args) {
    const char* file = args->file != nullptr ? args->file : "";
    if (const char* slash = std::strrchr(file, '/')) file = slash + 1;
    const spdlog::level::level_enum level = args->severity == GPR_LOG_SEVERITY_ERROR
                                                ? spdlog::level::err
                                                : args->severity == GPR_LOG_SEVERITY_INFO
                                                      ? spdlog::level::info
                                                      : spdlog::level::debug;
    spdlog::log(level, "grpc: {} ({}:{})", args->message, file, args->line);
  });
}

void NoSharedPort(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

std::string BoundAddress(const std::string& listen, int port) {
  if (IsUnixSocket(listen)) return listen;
  return absl::StrCat(ListenHost(listen), ":", port);
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& program,
                                                              const std::string& listen,
                                                              grpc::Service* service,
                                                              int max_message_bytes) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  if (absl::Status st = CheckListenAddress(listen, true); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--listen ", st.message()));
  }
  grpc::ServerBuilder builder;
  NoSharedPort(builder);
  if (max_message_bytes > 0) {
    builder.SetMaxReceiveMessageSize(max_message_bytes);
    builder.SetMaxSendMessageSize(max_message_bytes);
  }
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen, " (--listen): in use, or not an address here"));
  }
  std::printf("%s listening on %s\n", program.c_str(), BoundAddress(listen, port).c_str());
  std::fflush(stdout);
  return server;
}

void ExitNow(int code) {
  std::fflush(nullptr);
  if (__lsan_do_leak_check != nullptr) __lsan_do_leak_check();
  _exit(code);
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& setting) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(setting, ": cannot read '", path, "'"));
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(setting, ": '", path, "' holds no PEM data"));
  }
  return pem;
}

}  // namespace kvtier
