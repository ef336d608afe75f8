#pragma once
// Pieces the main() of every kvtier server binary shares.

#include <signal.h>

#include <limits>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "common/metrics_server.h"

namespace grpc {
class Server;
class Service;
class ServerBuilder;
}  // namespace grpc

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace kvtier {

// Walks a server binary's command line in order: `--name value` pairs and switches.
//
//   for (ArgReader args(argc, argv); args.Next();) {
//     if (args.flag() == "--listen") {
//       if (!args.Value(&listen)) return Bad("--listen needs HOST:PORT");
//     } else if ...
class ArgReader {
 public:
  ArgReader(int argc, char** argv) : argc_(argc), argv_(argv) {}
  bool Next() { return ++i_ < argc_; }
  std::string flag() const { return argv_[i_]; }
  // Takes the next argument as the flag's value; false when there is none.
  bool Value(std::string* out) {
    if (i_ + 1 >= argc_) return false;
    *out = argv_[++i_];
    return true;
  }
  // The value as an integer >= min (that fits T); false otherwise.
  template <typename T>
  bool Number(T* out, long long min) {
    std::string v;
    long long n = 0;
    if (!Value(&v) || !absl::SimpleAtoi(v, &n) || n < min ||
        (n >= 0 && static_cast<unsigned long long>(n) > std::numeric_limits<T>::max())) {
      return false;
    }
    *out = static_cast<T>(n);
    return true;
  }
  // The value as a number >= min.
  bool Real(double* out, double min) {
    std::string v;
    return Value(&v) && absl::SimpleAtod(v, out) && *out >= min;
  }

 private:
  int argc_;
  char** argv_;
  int i_ = 0;
};

// Blocks SIGTERM and SIGINT in the calling thread and the threads it starts later; returns the
// set, for sigwait() to take them when the process is ready to stop.
sigset_t BlockStopSignals();

// Serves `registry` as /metrics on `listen` (HOST:PORT; port 0 picks a free one) and prints
// "<program> metrics on HOST:PORT"; an empty `listen` serves nothing (nullptr). UNAVAILABLE when
// it cannot listen there.
absl::StatusOr<std::unique_ptr<MetricsServer>> ServeMetrics(
    const std::string& program, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry);

// OK when `listen` is HOST:PORT with a port in 0..65535 (0 picks a free one), or, where
// `unix_ok`, unix:PATH or unix-abstract:NAME; else INVALID_ARGUMENT saying what is wrong.
absl::Status CheckListenAddress(const std::string& listen, bool unix_ok);

// The contents of a PEM file; INVALID_ARGUMENT naming `setting` when it cannot be read or holds
// no PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& setting);

// Sends gRPC core's own log lines (connection and handshake errors) through spdlog, so that they
// take the program's log format and never mix with its stdout.
void RouteGrpcLogs();

// Turns off gRPC's SO_REUSEPORT: a second server on a port in use fails to start instead of
// taking a share of the first one's connections.
void NoSharedPort(grpc::ServerBuilder& builder);

// The host `listen` names: HOST of HOST:PORT, and 127.0.0.1 for a Unix socket (unix:PATH,
// unix-abstract:NAME), whose clients are on this host.
std::string ListenHost(const std::string& listen);

// The address a gRPC server asked to listen on `listen` is reachable at: HOST:PORT with the port
// it bound (`port`), or `listen` itself for a Unix socket.
std::string BoundAddress(const std::string& listen, int port);

// Starts a gRPC server (plaintext) with `service`, the standard health service and reflection on
// `listen` (port 0 picks a free one), and prints "<program> listening on HOST:PORT".
// `max_message_bytes` (0: gRPC's default) bounds messages both ways. UNAVAILABLE when it cannot
// listen there (in use: the port is never shared, unlike gRPC's default SO_REUSEPORT);
// INVALID_ARGUMENT for an address CheckListenAddress refuses.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& program,
                                                              const std::string& listen,
                                                              grpc::Service* service,
                                                              int max_message_bytes = 0);

// Ends a server binary at once with exit status `code`, its output flushed: _exit, because gRPC's
// library teardown can take seconds while clients keep their connections open, and there is
// nothing left for it to do. In a LeakSanitizer build (scripts/run-asan.sh) it first checks for
// leaks, as a normal exit would.
[[noreturn]] void ExitNow(int code);

}  // namespace kvtier
