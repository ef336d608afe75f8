#include "transfer/ucx_common.h"

#include <netdb.h>
#include <ucs/debug/log_def.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvtier::transfer {

absl::Status FromUcs(ucs_status_t status, const std::string& what) {
  if (status == UCS_OK) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(msg);
    case UCS_ERR_TIMED_OUT:
      return absl::DeadlineExceededError(msg);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::InvalidArgumentError(msg);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(msg);
    case UCS_ERR_UNSUPPORTED:
      return absl::UnimplementedError(msg);
    default:
      // Unreachable peers, reset connections, transport errors: worth another try elsewhere.
      return absl::UnavailableError(msg);
  }
}

absl::Status SplitHostPort(const std::string& address, const char* what, std::string* host,
                           int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", address, "' is not host:port"));
  }
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(std::string(address.substr(colon + 1)), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": port of '", address, "' is not 0-65535"));
  }
  *host = h.empty() ? "0.0.0.0" : h;
  *port = p;
  return absl::OkStatus();
}

absl::StatusOr<sockaddr_storage> ResolveAddress(const std::string& host, int port, bool passive,
                                                socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx: cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  sockaddr_storage out{};
  std::memcpy(&out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return out;
}

namespace {

// UCX prints its warnings and errors to stdout, which scripts parse: they go through spdlog.
ucs_log_func_rc_t UcxToSpdlog(const char* file, unsigned line, const char* function,
                              ucs_log_level_t level, const ucs_log_component_config_t* component,
                              const char* format, va_list ap) {
  if (level > component->log_level) return UCS_LOG_FUNC_RC_STOP;
  char message[1024];
  std::vsnprintf(message, sizeof(message), format, ap);
  const char* slash = std::strrchr(file, '/');
  const spdlog::level::level_enum to = level <= UCS_LOG_LEVEL_ERROR  ? spdlog::level::err
                                       : level == UCS_LOG_LEVEL_WARN ? spdlog::level::warn
                                       : level <= UCS_LOG_LEVEL_INFO ? spdlog::level::info
                                                                     : spdlog::level::debug;
  spdlog::log(to, "ucx: {} ({}:{} {})", message, slash != nullptr ? slash + 1 : file, line,
              function);
  return UCS_LOG_FUNC_RC_STOP;
}

}  // namespace

absl::Status SetAmHandlers(
    ucp_worker_h worker, void* arg,
    std::initializer_list<std::pair<unsigned, ucp_am_recv_callback_t>> handlers) {
  for (auto [id, cb] : handlers) {
    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    hp.id = id;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    hp.cb = cb;
    hp.arg = arg;
    if (ucs_status_t st = ucp_worker_set_am_recv_handler(worker, &hp); st != UCS_OK) {
      return FromUcs(st, "ucx: ucp_worker_set_am_recv_handler");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<UcxEndpointHost>> UcxEndpointHost::Create(uint64_t features) {
  static std::once_flag routed;
  std::call_once(routed, [] { ucs_log_push_handler(&UcxToSpdlog); });
  std::unique_ptr<UcxEndpointHost> h(new UcxEndpointHost());
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return FromUcs(s, "ucx: reading the configuration (UCX_* environment)");
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = features;
  ucs_status_t s = ucp_init(&params, config, &h->context_);
  ucp_config_release(config);
  if (s != UCS_OK) return FromUcs(s, "ucx: ucp_init");
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  if (s = ucp_worker_create(h->context_, &wp, &h->worker_); s != UCS_OK) {
    return FromUcs(s, "ucx: ucp_worker_create");
  }
  return h;
}

UcxEndpointHost::~UcxEndpointHost() {
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

}  // namespace kvtier::transfer
