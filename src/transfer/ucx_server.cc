#include "transfer/ucx_server.h"

#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvtier::transfer {

absl::StatusOr<std::unique_ptr<UcxServer>> UcxServer::Start(const UcxServerOptions& options) {
  if (options.region_bytes == 0) return absl::InvalidArgumentError("ucx: empty memory region");
  std::string host;
  int port = 0;
  if (absl::Status st = SplitHostPort(options.listen, "ucx.listen", &host, &port); !st.ok()) {
    return st;
  }
  socklen_t len = 0;
  auto addr = ResolveAddress(host, port, true, &len);
  if (!addr.ok()) return addr.status();

  std::unique_ptr<UcxServer> s(new UcxServer());
  auto ucx = UcxEndpointHost::Create();
  if (!ucx.ok()) return ucx.status();
  s->ucx_ = std::move(*ucx);
  s->region_ = options.region;
  s->region_bytes_ = options.region_bytes;

  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_PROT;
  // Readers may read, never write: the default would let any rkey holder write the arena.
  mp.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE |
            UCP_MEM_MAP_PROT_REMOTE_READ;
  mp.address = options.region;
  mp.length = options.region_bytes;
  mp.flags = options.region == nullptr ? UCP_MEM_MAP_ALLOCATE : 0;
  if (ucs_status_t st = ucp_mem_map(s->ucx_->context(), &mp, &s->memh_); st != UCS_OK) {
    s->memh_ = nullptr;
    return FromUcs(st, options.region == nullptr ? "ucx: allocating the host arena"
                                                 : "ucx: registering the host arena");
  }
  if (options.region == nullptr) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    if (ucs_status_t st = ucp_mem_query(s->memh_, &attr); st != UCS_OK) {
      return FromUcs(st, "ucx: ucp_mem_query");
    }
    s->region_ = attr.address;
    s->allocated_ = true;
    std::memset(s->region_, 0, options.region_bytes);  // and fault every page in now
  }
  void* rkey = nullptr;
  size_t rkey_bytes = 0;
  if (ucs_status_t st = ucp_rkey_pack(s->ucx_->context(), s->memh_, &rkey, &rkey_bytes);
      st != UCS_OK) {
    return FromUcs(st, "ucx: packing the arena's remote key");
  }
  s->rkey_.assign(static_cast<const char*>(rkey), rkey_bytes);
  ucp_rkey_buffer_release(rkey);

  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&*addr);
  lp.sockaddr.addrlen = len;
  lp.conn_handler.cb = &UcxServer::OnConnRequest;
  lp.conn_handler.arg = s.get();
  if (ucs_status_t st = ucp_listener_create(s->ucx_->worker(), &lp, &s->listener_); st != UCS_OK) {
    s->listener_ = nullptr;
    return FromUcs(st, absl::StrCat("ucx: cannot listen on ", options.listen));
  }
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (ucs_status_t st = ucp_listener_query(s->listener_, &la); st != UCS_OK) {
    return FromUcs(st, "ucx: ucp_listener_query");
  }
  const auto* bound = reinterpret_cast<const sockaddr*>(&la.sockaddr);
  s->port_ =
      ntohs(bound->sa_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(bound)->sin6_port
                                         : reinterpret_cast<const sockaddr_in*>(bound)->sin_port);
  s->host_ = host;
  s->thread_ = std::thread([raw = s.get()] { raw->Run(); });
  return s;
}

void UcxServer::OnConnRequest(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<UcxServer*>(arg);
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                  UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.conn_request = request;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &UcxServer::OnEndpointError;
  ep.err_handler.arg = self;
  ucp_ep_h handle = nullptr;
  if (ucs_status_t st = ucp_ep_create(self->ucx_->worker(), &ep, &handle); st != UCS_OK) {
    spdlog::warn("ucx: refusing a connection: {}", ucs_status_string(st));
    (void)ucp_listener_reject(self->listener_, request);  // the client learns at once
    return;
  }
  self->endpoints_.push_back(handle);
  self->connections_.fetch_add(1, std::memory_order_relaxed);
  self->accepted_.fetch_add(1, std::memory_order_relaxed);
}

void UcxServer::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<UcxServer*>(arg);
  spdlog::debug("ucx: client connection ended: {}", ucs_status_string(status));
  self->failed_.push_back(ep);  // closed outside the callback, by the progress loop
}

void UcxServer::CloseEndpoint(ucp_ep_h ep) {
  auto it = std::find(endpoints_.begin(), endpoints_.end(), ep);
  if (it == endpoints_.end()) return;
  endpoints_.erase(it);
  connections_.fetch_sub(1, std::memory_order_relaxed);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &param);
  if (UCS_PTR_IS_PTR(req)) {
    while (ucp_request_check_status(req) == UCS_INPROGRESS) ucp_worker_progress(ucx_->worker());
    ucp_request_free(req);
  }
}

void UcxServer::Run() {
  int efd = -1;
  if (ucs_status_t st = ucp_worker_get_efd(ucx_->worker(), &efd); st != UCS_OK) {
    spdlog::error("ucx: no event fd ({}); polling", ucs_status_string(st));
    efd = -1;
  }
  while (!stop_.load(std::memory_order_acquire)) {
    while (ucp_worker_progress(ucx_->worker()) != 0) {
    }
    while (!failed_.empty()) {
      ucp_ep_h ep = failed_.back();
      failed_.pop_back();
      CloseEndpoint(ep);
    }
    if (efd < 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      continue;
    }
    const ucs_status_t st = ucp_worker_arm(ucx_->worker());
    if (st == UCS_ERR_BUSY) continue;  // more events arrived meanwhile
    pollfd p{efd, POLLIN, 0};
    (void)poll(&p, 1, 1000);  // woken by events or by ucp_worker_signal from the destructor
  }
}

void UcxServer::StopServing() {
  if (thread_.joinable()) {
    stop_.store(true, std::memory_order_release);
    ucp_worker_signal(ucx_->worker());
    thread_.join();
  }
  if (ucx_ == nullptr) return;
  // No new connections first, then close the open ones.
  if (listener_ != nullptr) ucp_listener_destroy(listener_);
  listener_ = nullptr;
  while (!endpoints_.empty()) CloseEndpoint(endpoints_.back());
}

UcxServer::~UcxServer() {
  StopServing();
  if (memh_ != nullptr) ucp_mem_unmap(ucx_->context(), memh_);
}

}  // namespace kvtier::transfer
