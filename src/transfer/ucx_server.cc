#include "transfer/ucx_server.h"

#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/internal/le_bytes.h"
#include "transfer/copy_pool.h"
#include "transfer/shm_sweep.h"

namespace kvtier::transfer {

const char* ModeName(DataPlaneMode mode) {
  return mode == DataPlaneMode::kServed ? "served" : "rkey";
}

// One served read whose bytes are being sent. Its sends' callbacks count down `outstanding`;
// the grant keeps the blocks in place until then.
struct UcxServer::ServedRead {
  UcxServer* server = nullptr;
  ucp_ep_h ep = nullptr;
  uint64_t id = 0;
  uint64_t bytes = 0;
  std::unique_ptr<ReadGrant> grant;
  std::vector<ServedHeaderBytes> headers;  // one per data message, valid until it is sent
  size_t outstanding = 0;
  bool issuing = true;  // sends are still being started
  ucs_status_t error = UCS_OK;
};

namespace {

// An answer (kServedReadDoneAm) in flight: its header and message must outlive the send.
struct Answering {
  ServedHeaderBytes header;
  std::string message;
};

void OnAnswerSent(void* request, ucs_status_t, void* user_data) {
  delete static_cast<Answering*>(user_data);
  ucp_request_free(request);
}

// Sends `a` (eager) as active message `id`, and deletes it once sent.
void SendAnswer(ucp_ep_h ep, unsigned id, Answering* a) {
  ucp_request_param_t param{};
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &OnAnswerSent;
  param.user_data = a;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  ucs_status_ptr_t req = ucp_am_send_nbx(ep, id, a->header.data(), a->header.size(),
                                         a->message.data(), a->message.size(), &param);
  if (!UCS_PTR_IS_PTR(req)) delete a;  // sent at once, or failed (the connection is ending)
}

}  // namespace

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

  const bool served = options.mode == DataPlaneMode::kServed;
  if (served && (options.served_chunk_bytes == 0 || options.max_served_reads_per_connection <= 0)) {
    return absl::InvalidArgumentError("ucx: served reads need a chunk size and a connection cap");
  }
  std::unique_ptr<UcxServer> s(new UcxServer());
  // Served: active messages only. Without UCP_FEATURE_RMA the worker has no handlers for
  // emulated gets and puts, which would read or write any address a peer names.
  auto ucx = UcxEndpointHost::Create(served ? UCP_FEATURE_AM | UCP_FEATURE_WAKEUP
                                            : UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP);
  if (!ucx.ok()) return ucx.status();
  s->ucx_ = std::move(*ucx);
  s->region_ = options.region;
  s->region_bytes_ = options.region_bytes;
  s->mode_ = options.mode;
  s->chunk_bytes_ = options.served_chunk_bytes;
  s->max_reads_per_connection_ = options.max_served_reads_per_connection;
  s->staging_bytes_ = options.staging_bytes;
  s->max_staging_areas_ = options.max_staging_areas;
  if (served) {
    if (s->region_ == nullptr) {
      void* p = mmap(nullptr, options.region_bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        return absl::ResourceExhaustedError(absl::StrCat("ucx: mmap of ", options.region_bytes,
                                                         " bytes failed: ", std::strerror(errno)));
      }
      (void)madvise(p, options.region_bytes, MADV_HUGEPAGE);
      s->region_ = p;
      s->allocated_ = s->mmapped_ = true;
      std::memset(p, 0, options.region_bytes);  // fault every page in now
    }
    if (absl::Status st = SetAmHandlers(s->ucx_->worker(), s.get(),
                                        {{kServedReadRequestAm, &UcxServer::OnReadRequest},
                                         {kServedStagingAm, &UcxServer::OnStagingRequest}});
        !st.ok()) {
      return st;
    }
  } else if (absl::Status st = s->ExportRegion(); !st.ok()) {
    return st;
  }

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

absl::Status UcxServer::ExportRegion() {
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_PROT;
  // Readers may read, never write: the default would let any rkey holder write the arena.
  mp.prot =
      UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE | UCP_MEM_MAP_PROT_REMOTE_READ;
  mp.address = region_;
  mp.length = region_bytes_;
  mp.flags = region_ == nullptr ? UCP_MEM_MAP_ALLOCATE : 0;
  if (ucs_status_t st = ucp_mem_map(ucx_->context(), &mp, &memh_); st != UCS_OK) {
    memh_ = nullptr;
    return FromUcs(st, region_ == nullptr ? "ucx: allocating the host arena"
                                          : "ucx: registering the host arena");
  }
  if (region_ == nullptr) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    if (ucs_status_t st = ucp_mem_query(memh_, &attr); st != UCS_OK) {
      return FromUcs(st, "ucx: ucp_mem_query");
    }
    region_ = attr.address;
    allocated_ = true;
    std::memset(region_, 0, region_bytes_);  // and fault every page in now
  }
  void* rkey = nullptr;
  size_t rkey_bytes = 0;
  if (ucs_status_t st = ucp_rkey_pack(ucx_->context(), memh_, &rkey, &rkey_bytes); st != UCS_OK) {
    return FromUcs(st, "ucx: packing the arena's remote key");
  }
  rkey_.assign(static_cast<const char*>(rkey), rkey_bytes);
  ucp_rkey_buffer_release(rkey);
  return absl::OkStatus();
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
  FinishServedReads();  // the connection's sends all completed (failed) with the close
  FreeStaging(ep);
  served_connections_.erase(ep);
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
    // Requests are served here, outside UCX's callbacks (which must not start sends).
    if (!staging_requests_.empty()) {
      auto asked = std::move(staging_requests_);
      staging_requests_.clear();
      for (auto [ep, keep] : asked) OfferStaging(ep, keep);
    }
    if (!requests_.empty()) {
      auto requests = std::move(requests_);
      requests_.clear();
      for (auto& [ep, message] : requests) Serve(ep, message);
    }
    FinishServedReads();
    while (!failed_.empty()) {
      ucp_ep_h ep = failed_.back();
      failed_.pop_back();
      CloseEndpoint(ep);
    }
    // Sends of served reads wait for room in the transport, which no event announces: keep
    // progressing while any is in flight.
    if (sending_ > 0) continue;
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
  requests_.clear();
  staging_requests_.clear();
  // Closing completes every send still in flight: their served reads end (grants released).
  while (!endpoints_.empty()) CloseEndpoint(endpoints_.back());
  FinishServedReads();
}

UcxServer::~UcxServer() {
  StopServing();
  if (memh_ != nullptr) ucp_mem_unmap(ucx_->context(), memh_);
  if (mmapped_) munmap(region_, region_bytes_);
}

void UcxServer::SetReadAuthorizer(ReadAuthorizer authorizer) {
  auto shared = std::make_shared<const ReadAuthorizer>(std::move(authorizer));
  MutexLock lock(&authorizer_mu_);
  authorizer_ = std::move(shared);
}

bool UcxServer::Alive(ucp_ep_h ep) const {
  return std::find(endpoints_.begin(), endpoints_.end(), ep) != endpoints_.end() &&
         std::find(failed_.begin(), failed_.end(), ep) == failed_.end();
}

ucs_status_t UcxServer::OnReadRequest(void* arg, const void*, size_t, void* data, size_t length,
                                      const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  // A request is small and sent eager; one that comes by rendezvous is not kvtier's.
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_ERR_UNSUPPORTED;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0 || param->reply_ep == nullptr) {
    return UCS_OK;  // nowhere to answer
  }
  self->requests_.emplace_back(param->reply_ep,
                               std::string(static_cast<const char*>(data), length));
  return UCS_OK;
}

ucs_status_t UcxServer::OnStagingRequest(void* arg, const void*, size_t, void* data, size_t length,
                                         const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxServer*>(arg);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_ERR_UNSUPPORTED;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0 || param->reply_ep == nullptr) {
    return UCS_OK;
  }
  // One byte: 1 asks for the area, 0 gives it back (a reader that cannot map it).
  const bool keep = length >= 1 && static_cast<const uint8_t*>(data)[0] == 1;
  self->staging_requests_.emplace_back(param->reply_ep, keep);
  return UCS_OK;
}

void UcxServer::FreeStaging(ucp_ep_h ep) {
  auto it = served_connections_.find(ep);
  if (it == served_connections_.end() || it->second.staging == nullptr) return;
  ucp_mem_unmap(ucx_->context(), it->second.staging);
  it->second.staging = nullptr;
  it->second.staging_base = nullptr;
  it->second.staging_rkey.clear();
  --staging_areas_;
}

void UcxServer::OfferStaging(ucp_ep_h ep, bool keep) {
  if (!Alive(ep)) return;
  if (!keep) {
    FreeStaging(ep);
    return;
  }
  Connection& c = served_connections_[ep];
  // Memory of UCX's, in the form a reader on this host can map: shared memory that holds only
  // what this connection's reads put there. Made only while /dev/shm keeps room for twice that
  // beside it (a segment that outgrows it would SIGBUS the daemon); else the reader is sent its
  // bytes.
  if (c.staging == nullptr && staging_areas_ < max_staging_areas_ && staging_bytes_ > 0 &&
      SharedMemoryFreeBytes().value_or(0) >= 2 * staging_bytes_) {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.length = staging_bytes_;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    void* rkey = nullptr;
    size_t rkey_bytes = 0;
    if (ucp_mem_map(ucx_->context(), &mp, &c.staging) != UCS_OK) {
      c.staging = nullptr;
    } else if (ucp_mem_query(c.staging, &attr) != UCS_OK ||
               ucp_rkey_pack(ucx_->context(), c.staging, &rkey, &rkey_bytes) != UCS_OK) {
      ucp_mem_unmap(ucx_->context(), c.staging);
      c.staging = nullptr;
    } else {
      c.staging_base = static_cast<uint8_t*>(attr.address);
      c.staging_rkey.assign(static_cast<const char*>(rkey), rkey_bytes);
      ucp_rkey_buffer_release(rkey);
      ++staging_areas_;
    }
  }
  auto* a = new Answering{.header = EncodeHeader(ServedStagingHeader{
                              .base = reinterpret_cast<uint64_t>(c.staging_base),
                              .bytes = c.staging != nullptr ? staging_bytes_ : 0}),
                          .message = c.staging_rkey};  // empty: none, the reader is sent its bytes
  SendAnswer(ep, kServedStagingReplyAm, a);
}

void UcxServer::Answer(ucp_ep_h ep, uint64_t id, const absl::Status& status, uint64_t bytes) {
  if (!status.ok()) refused_.fetch_add(1, std::memory_order_relaxed);
  if (!Alive(ep)) return;
  auto* a =
      new Answering{.header = EncodeHeader(ServedDoneHeader{
                        .id = id, .code = static_cast<uint32_t>(status.code()), .bytes = bytes}),
                    .message = std::string(status.message().substr(0, 1024))};
  SendAnswer(ep, kServedReadDoneAm, a);
}

void UcxServer::Serve(ucp_ep_h ep, const std::string& message) {
  if (!Alive(ep)) return;
  auto request = DecodeServedReadRequest(message.data(), message.size());
  if (!request.ok()) {
    // Answer under the id the message claims, if it got that far.
    const uint64_t id = message.size() >= 16 ? internal::LeRead(message.data() + 8, 8) : 0;
    Answer(ep, id, request.status(), 0);
    return;
  }
  uint64_t total = 0;
  for (const RegionRange& r : request->ranges) {
    if (r.length == 0 || r.offset + r.length < r.offset) {
      Answer(ep, request->id,
             absl::InvalidArgumentError(absl::StrCat("served read: ", r.length, " bytes at ",
                                                     r.offset, " is not a range")),
             0);
      return;
    }
    if (r.offset > region_bytes_ || r.length > region_bytes_ - r.offset) {
      Answer(ep, request->id,
             absl::PermissionDeniedError(absl::StrCat("served read: ", r.length, " bytes at ",
                                                      r.offset, " is outside the arena")),
             0);
      return;
    }
    total += r.length;
  }
  if (total > kMaxServedReadBytes) {
    Answer(ep, request->id,
           absl::InvalidArgumentError(absl::StrCat("served read: ", total, " bytes in a request")),
           0);
    return;
  }
  Connection& conn = served_connections_[ep];
  const bool staged = request->staging_offset != kNotStaged;
  if (staged && (conn.staging == nullptr || request->staging_offset > staging_bytes_ ||
                 total > staging_bytes_ - request->staging_offset)) {
    Answer(ep, request->id,
           absl::InvalidArgumentError(absl::StrCat("served read: ", total, " bytes at ",
                                                   request->staging_offset,
                                                   " do not fit the staging area")),
           0);
    return;
  }
  if (!staged && conn.sending >= max_reads_per_connection_) {
    Answer(ep, request->id,
           absl::ResourceExhaustedError(absl::StrCat("served read: ", conn.sending,
                                                     " reads of this connection in progress")),
           0);
    return;
  }
  std::shared_ptr<const ReadAuthorizer> authorizer;
  {
    MutexLock lock(&authorizer_mu_);
    authorizer = authorizer_;
  }
  if (authorizer == nullptr) {
    Answer(ep, request->id, absl::UnavailableError("served read: the daemon is starting"), 0);
    return;
  }
  auto grant = (*authorizer)(request->lease, request->ranges);
  if (!grant.ok()) {
    Answer(ep, request->id, grant.status(), 0);
    return;
  }
  // Authorized: from here every byte delivered is of the blocks the grant holds in place.
  const auto* base = static_cast<const uint8_t*>(region_);
  if (staged) {
    // Copied by this thread and the copy pool's helpers (a batch of 2 MiB or more).
    std::vector<CopyOp> copies;
    copies.reserve(request->ranges.size());
    uint8_t* to = conn.staging_base + request->staging_offset;
    for (const RegionRange& r : request->ranges) {
      copies.push_back({.dst = to, .src = base + r.offset, .length = r.length});
      to += r.length;
    }
    CopyPool::Shared().Run(copies);
    grant->reset();
    served_.fetch_add(1, std::memory_order_relaxed);
    Answer(ep, request->id, absl::OkStatus(), total);
    return;
  }
  ++conn.sending;
  ++sending_;
  auto* read = new ServedRead{
      .server = this, .ep = ep, .id = request->id, .bytes = total, .grant = std::move(*grant)};
  size_t messages = 0;
  for (const RegionRange& r : request->ranges) {
    messages += (r.length + chunk_bytes_ - 1) / chunk_bytes_;
  }
  read->headers.reserve(messages);  // never reallocated: sends in flight point into it
  for (size_t i = 0; i < request->ranges.size() && read->error == UCS_OK; ++i) {
    const RegionRange& r = request->ranges[i];
    for (uint64_t off = 0; off < r.length && read->error == UCS_OK; off += chunk_bytes_) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk_bytes_, r.length - off));
      read->headers.push_back(EncodeHeader(
          ServedDataHeader{.id = request->id, .range = static_cast<uint32_t>(i), .offset = off}));
      ucp_request_param_t param{};
      param.op_attr_mask =
          UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
      param.cb.send = &UcxServer::OnDataSent;
      param.user_data = read;
      // Eager only: a rendezvous send would hand the reader a remote key of the arena.
      param.flags = UCP_AM_SEND_FLAG_EAGER;
      ucs_status_ptr_t req = ucp_am_send_nbx(ep, kServedReadDataAm, read->headers.back().data(),
                                             kServedHeaderBytes, base + r.offset + off, n, &param);
      if (UCS_PTR_IS_ERR(req)) {
        read->error = UCS_PTR_STATUS(req);
      } else if (req != nullptr) {
        ++read->outstanding;
      }
    }
  }
  read->issuing = false;
  if (read->outstanding == 0) finished_.push_back(read);
}

void UcxServer::OnDataSent(void* request, ucs_status_t status, void* user_data) {
  auto* read = static_cast<ServedRead*>(user_data);
  if (status != UCS_OK && read->error == UCS_OK) read->error = status;
  ucp_request_free(request);
  if (--read->outstanding == 0 && !read->issuing) read->server->finished_.push_back(read);
}

void UcxServer::FinishServedReads() {
  while (!finished_.empty()) {
    std::unique_ptr<ServedRead> read(finished_.back());
    finished_.pop_back();
    read->grant.reset();  // every byte has left the region
    --sending_;
    if (auto it = served_connections_.find(read->ep); it != served_connections_.end()) {
      --it->second.sending;
    }
    if (read->error == UCS_OK) {
      served_.fetch_add(1, std::memory_order_relaxed);
      Answer(read->ep, read->id, absl::OkStatus(), read->bytes);
    } else {
      Answer(read->ep, read->id, FromUcs(read->error, "served read: sending failed"), 0);
    }
  }
}

}  // namespace kvtier::transfer
