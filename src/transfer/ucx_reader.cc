#include "transfer/ucx_reader.h"

#include <poll.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "transfer/copy_pool.h"
#include "transfer/served_read.h"

namespace kvtier::transfer {

// Completion state of one Read call, shared by its requests' callbacks.
struct UcxReader::Pending {
  size_t outstanding = 0;
  ucs_status_t first_error = UCS_OK;
};

struct UcxReader::Op {
  Pending* pending;
  const ReadOp* op;
};

struct UcxReader::Served {
  std::span<const ReadOp> ops;
  std::vector<bool> hashed;  // ops whose checksum was computed with their copy
  uint64_t asked = 0;        // bytes
  uint64_t staging_offset = kNotStaged;
  uint64_t id = 0;
  std::string message;    // the request, until its send completes
  void* send = nullptr;   // the request's send, when it did not complete at once
  uint64_t received = 0;  // bytes of kServedReadDataAm messages
  bool answered = false;  // the daemon's kServedReadDoneAm arrived
  uint64_t sent = 0;      // bytes, as the answer says
  absl::Status status;    // the answer's
  bool Complete() const {
    return answered && (!status.ok() || staging_offset != kNotStaged || received >= sent);
  }
};

namespace {

// Progress calls that found nothing before a served read waits on the event fd.
constexpr int kSpinsBeforeSleep = 64;

// Checksums a landed read, as soon as it lands (its bytes are then likely still in cache).
void Landed(const ReadOp& op) {
  if (op.checksum != nullptr) *op.checksum = Checksum(op.dst, op.length);
}

void OnReadDone(void* /*request*/, ucs_status_t status, void* user_data) {
  auto* op = static_cast<UcxReader::Op*>(user_data);
  UcxReader::Pending* p = op->pending;
  if (status != UCS_OK && p->first_error == UCS_OK) p->first_error = status;
  if (status == UCS_OK) Landed(*op->op);
  --p->outstanding;
}

// Progresses `worker` until `request` is complete; returns its status.
ucs_status_t Wait(ucp_worker_h worker, ucs_status_ptr_t request) {
  if (request == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
  ucs_status_t st;
  while ((st = ucp_request_check_status(request)) == UCS_INPROGRESS) ucp_worker_progress(worker);
  ucp_request_free(request);
  return st;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxReader>> UcxReader::Connect(const RemoteRegion& region,
                                                              Deadline deadline) {
  socklen_t len = 0;
  auto addr = ResolveAddress(region.host, region.port, false, &len);
  if (!addr.ok()) return addr.status();
  std::unique_ptr<UcxReader> r(new UcxReader(region));
  // rkey mode as before served mode existed (RMA, with wakeup); served mode needs active
  // messages only, and sleeps on the worker's event fd.
  auto ucx = UcxEndpointHost::Create(region.served ? UCP_FEATURE_AM | UCP_FEATURE_WAKEUP
                                                   : UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP);
  if (!ucx.ok()) return ucx.status();
  r->ucx_ = std::move(*ucx);
  if (region.served) {
    if (ucp_worker_get_efd(r->ucx_->worker(), &r->efd_) != UCS_OK) r->efd_ = -1;
    if (absl::Status st = SetAmHandlers(r->ucx_->worker(), r.get(),
                                        {{kServedReadDataAm, &UcxReader::OnServedData},
                                         {kServedReadDoneAm, &UcxReader::OnServedDone},
                                         {kServedStagingReplyAm, &UcxReader::OnStagingReply}});
        !st.ok()) {
      return st;
    }
  }

  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&*addr);
  ep.sockaddr.addrlen = len;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &UcxReader::OnError;
  ep.err_handler.arg = r.get();
  const std::string where = absl::StrCat(region.host, ":", region.port);
  if (ucs_status_t st = ucp_ep_create(r->ucx_->worker(), &ep, &r->ep_); st != UCS_OK) {
    r->ep_ = nullptr;
    return FromUcs(st, absl::StrCat("ucx: cannot connect to ", where));
  }
  // The endpoint is usable once the connection is established: flush waits for that.
  ucp_request_param_t param{};
  ucs_status_ptr_t req = ucp_ep_flush_nbx(r->ep_, &param);
  if (UCS_PTR_IS_PTR(req)) {
    ucs_status_t st;
    while ((st = ucp_request_check_status(req)) == UCS_INPROGRESS && !r->broken_) {
      ucp_worker_progress(r->ucx_->worker());
      if (std::chrono::steady_clock::now() > deadline) {
        ucp_request_cancel(r->ucx_->worker(), req);
        (void)Wait(r->ucx_->worker(), req);
        r->Break(absl::DeadlineExceededError(absl::StrCat("ucx: connecting to ", where)));
        return r->error_;
      }
    }
    if (st == UCS_INPROGRESS) {
      (void)Wait(r->ucx_->worker(), req);
    } else {
      ucp_request_free(req);
    }
    if (st != UCS_OK && st != UCS_INPROGRESS) {
      return FromUcs(st, absl::StrCat("ucx: connecting to ", where));
    }
  } else if (UCS_PTR_IS_ERR(req)) {
    return FromUcs(UCS_PTR_STATUS(req), absl::StrCat("ucx: connecting to ", where));
  }
  if (r->broken_) return r->error_;
  if (region.served) {
    // Whether active messages have a lane of their own beside TCP (RDMA): UCX 1.13 has no query
    // for it, but its endpoint report lists each lane's transport and uses.
    std::istringstream lanes(r->EndpointInfo());
    for (std::string line; std::getline(lanes, line);) {
      if (line.find("am_bw#") != std::string::npos && line.find("tcp/") == std::string::npos) {
        r->native_am_ = true;
      }
    }
    r->MapStaging(deadline);
    if (r->broken_) return r->error_;
    return r;
  }
  if (ucs_status_t st = ucp_ep_rkey_unpack(r->ep_, region.packed_rkey.data(), &r->rkey_);
      st != UCS_OK) {
    r->rkey_ = nullptr;
    return FromUcs(st, "ucx: unpacking the daemon's remote key");
  }
  // Whether UCX has a native RMA lane to the daemon (RDMA, CMA...); UCX 1.13 has no query for
  // it, but its endpoint report marks such lanes "rma_bw#N".
  r->native_rma_ = r->EndpointInfo().find("rma_bw#") != std::string::npos;
  // Where the region is mapped into this process (shared memory on one host), build its page
  // tables now, in one call, rather than by a fault per page during the first reads.
  void* local = nullptr;
  if (ucp_rkey_ptr(r->rkey_, region.base, &local) == UCS_OK && local != nullptr) {
    (void)madvise(local, region.bytes, MADV_POPULATE_READ);
    r->local_ = static_cast<const uint8_t*>(local);
  }
  return r;
}

std::string UcxReader::EndpointInfo() const {
  std::string out;
  char* text = nullptr;
  size_t len = 0;
  if (FILE* f = open_memstream(&text, &len); f != nullptr) {
    ucp_ep_print_info(ep_, f);
    std::fclose(f);
    if (text != nullptr) out.assign(text, len);
    std::free(text);
  }
  return out;
}

void UcxReader::OnError(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* self = static_cast<UcxReader*>(arg);
  self->broken_ = true;
  if (self->error_.ok()) {
    self->error_ = FromUcs(status, absl::StrCat("ucx: connection to ", self->region_.host, ":",
                                                self->region_.port, " lost"));
  }
}

void UcxReader::Break(const absl::Status& why) {
  broken_ = true;
  if (error_.ok()) error_ = why;
  // Close first (this completes every request still in flight), then drop the rkey they used.
  CloseEndpoint();
  if (rkey_ != nullptr) {
    ucp_rkey_destroy(rkey_);
    rkey_ = nullptr;
  }
}

void UcxReader::CloseEndpoint() {
  if (ep_ == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  (void)Wait(ucx_->worker(), ucp_ep_close_nbx(ep_, &param));  // completes every request
  ep_ = nullptr;
}

absl::Status UcxReader::RegisterBuffer(void* data, size_t size) {
  if (region_.served) return absl::OkStatus();
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = data;
  mp.length = size;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t st = ucp_mem_map(ucx_->context(), &mp, &memh); st != UCS_OK) {
    return FromUcs(st, "ucx: registering a read buffer");
  }
  registered_[reinterpret_cast<uintptr_t>(data)] = {size, memh};
  return absl::OkStatus();
}

ucp_mem_h UcxReader::MemhFor(const uint8_t* p, size_t n) const {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = registered_.upper_bound(a);
  if (it == registered_.begin()) return nullptr;
  --it;
  return a + n <= it->first + it->second.first ? it->second.second : nullptr;
}

absl::Status UcxReader::Read(std::span<const ReadOp> ops, Deadline deadline, uint64_t lease) {
  if (broken_) return error_;
  if (region_.served) return ReadServed(ops, deadline, lease);
  for (const ReadOp& op : ops) {
    if (op.offset > region_.bytes || op.length > region_.bytes - op.offset) {
      return absl::OutOfRangeError(absl::StrCat("ucx: read of ", op.length, " bytes at ", op.offset,
                                                " is outside the ", region_.bytes, "-byte region"));
    }
  }
  if (local_ != nullptr) {
    // The region is mapped here: a read is a copy (fused with its checksum), which UCX's
    // shared-memory gets would make too; a large batch is copied by this thread and a helper.
    std::vector<CopyOp> copies;
    copies.reserve(ops.size());
    for (const ReadOp& op : ops) {
      copies.push_back(
          {.dst = op.dst, .src = local_ + op.offset, .length = op.length, .checksum = op.checksum});
    }
    CopyPool::Shared().Run(copies);
    return absl::OkStatus();
  }
  Pending pending;
  std::vector<Op> state(ops.size());
  std::vector<void*> requests;
  requests.reserve(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    const ReadOp& op = ops[i];
    state[i] = {&pending, &op};
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &OnReadDone;
    param.user_data = &state[i];
    if (ucp_mem_h memh = MemhFor(op.dst, op.length); memh != nullptr) {
      param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
      param.memh = memh;
    }
    ucs_status_ptr_t req =
        ucp_get_nbx(ep_, op.dst, op.length, region_.base + op.offset, rkey_, &param);
    if (UCS_PTR_IS_ERR(req)) {
      if (pending.first_error == UCS_OK) pending.first_error = UCS_PTR_STATUS(req);
      break;
    }
    if (req != nullptr) {
      ++pending.outstanding;
      requests.push_back(req);
    } else {
      Landed(op);  // completed in place
    }
  }
  // Reads complete locally once their bytes have landed; a flush is not needed for gets.
  while (pending.outstanding > 0 && pending.first_error == UCS_OK && !broken_) {
    ucp_worker_progress(ucx_->worker());
    if (std::chrono::steady_clock::now() > deadline) {
      Break(absl::DeadlineExceededError(absl::StrCat("ucx: reads from ", region_.host, ":",
                                                     region_.port, " did not finish in time")));
      break;
    }
  }
  if (pending.outstanding > 0) {
    // An error or a lost connection with reads still running: end them all before returning,
    // so that none lands in a buffer after this call.
    Break(broken_ ? error_ : FromUcs(pending.first_error, "ucx: read failed"));
  }
  // Break completed every request; all callbacks have run.
  for (void* req : requests) ucp_request_free(req);
  if (broken_) return error_;
  if (pending.first_error != UCS_OK) {
    Break(FromUcs(pending.first_error, "ucx: read failed"));
    return error_;
  }
  return absl::OkStatus();
}

ucs_status_t UcxReader::OnServedData(void* arg, const void* header, size_t header_length,
                                     void* data, size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxReader*>(arg);
  ServedDataHeader h;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_ERR_UNSUPPORTED;
  if (!DecodeHeader(header, header_length, &h)) return UCS_OK;
  auto it = self->served_.find(h.id);
  if (it == self->served_.end()) return UCS_OK;  // of a Read that has returned
  Served& s = *it->second;
  if (h.range >= s.ops.size()) return UCS_OK;
  const ReadOp& op = s.ops[h.range];
  if (h.offset > op.length || length > op.length - h.offset) return UCS_OK;
  if (h.offset == 0 && length == op.length && op.checksum != nullptr) {
    *op.checksum = CopyWithChecksum(op.dst, data, length);  // the whole op in one message
    s.hashed[h.range] = true;
  } else {
    CopyBytes(op.dst + h.offset, data, length);
  }
  s.received += length;
  return UCS_OK;
}

ucs_status_t UcxReader::OnServedDone(void* arg, const void* header, size_t header_length,
                                     void* data, size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxReader*>(arg);
  ServedDoneHeader h;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_ERR_UNSUPPORTED;
  if (!DecodeHeader(header, header_length, &h)) return UCS_OK;
  auto it = self->served_.find(h.id);
  if (it == self->served_.end()) return UCS_OK;
  Served& s = *it->second;
  s.answered = true;
  s.sent = h.bytes;
  if (h.code != 0) {
    const auto code =
        h.code <= 16 ? static_cast<absl::StatusCode>(h.code) : absl::StatusCode::kUnknown;
    s.status = absl::Status(code, absl::StrCat("the daemon refused the read: ",
                                               absl::string_view(static_cast<const char*>(data),
                                                                 std::min<size_t>(length, 1024))));
  } else if (h.bytes != s.asked) {
    s.status = absl::InternalError(
        absl::StrCat("served read: ", h.bytes, " bytes sent for ", s.asked, " asked"));
  }
  return UCS_OK;
}

ucs_status_t UcxReader::OnStagingReply(void* arg, const void* header, size_t header_length,
                                       void* data, size_t length,
                                       const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxReader*>(arg);
  ServedStagingHeader h;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) return UCS_ERR_UNSUPPORTED;
  if (self->staging_answered_ || !DecodeHeader(header, header_length, &h)) return UCS_OK;
  self->staging_answered_ = true;
  self->staging_base_ = h.base;
  self->staging_bytes_ = h.bytes;
  self->staging_rkey_.assign(static_cast<const char*>(data), length);
  return UCS_OK;
}

void UcxReader::MapStaging(Deadline deadline) {
  auto ask = [&](uint8_t keep) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
    (void)Wait(ucx_->worker(),
               ucp_am_send_nbx(ep_, kServedStagingAm, nullptr, 0, &keep, 1, &param));
  };
  ask(1);
  WaitServed([&] { return staging_answered_; }, deadline);
  // Without an area (none left, or a daemon far away) the daemon sends the bytes instead.
  void* local = nullptr;
  if (staging_answered_ && !staging_rkey_.empty() &&
      ucp_ep_rkey_unpack(ep_, staging_rkey_.data(), &rkey_) == UCS_OK &&
      ucp_rkey_ptr(rkey_, staging_base_, &local) == UCS_OK && local != nullptr) {
    (void)madvise(local, staging_bytes_, MADV_POPULATE_READ);
    staging_ = static_cast<const uint8_t*>(local);
    return;
  }
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
  rkey_ = nullptr;
  staging_bytes_ = 0;
  if (staging_answered_ && !staging_rkey_.empty() && !broken_) ask(0);  // not mappable here
}

std::vector<UcxReader::Served> UcxReader::Group(std::span<const ReadOp> ops, uint64_t max_bytes) {
  std::vector<Served> out;
  for (size_t begin = 0; begin < ops.size();) {
    size_t end = begin;
    uint64_t bytes = 0;
    while (end < ops.size() && end - begin < kMaxServedRanges &&
           (end == begin || bytes + ops[end].length <= max_bytes)) {
      bytes += ops[end++].length;
    }
    out.push_back(Served{.ops = ops.subspan(begin, end - begin),
                         .hashed = std::vector<bool>(end - begin),
                         .asked = bytes});
    begin = end;
  }
  return out;
}

bool UcxReader::Ask(Served* s, uint64_t lease, uint64_t staging_offset) {
  s->id = next_id_++;
  s->staging_offset = staging_offset;
  served_.emplace(s->id, s);
  std::vector<RegionRange> ranges;
  ranges.reserve(s->ops.size());
  for (const ReadOp& op : s->ops) ranges.push_back({.offset = op.offset, .length = op.length});
  s->message = EncodeServedReadRequest(s->id, lease, ranges, staging_offset);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
  ucs_status_ptr_t req = ucp_am_send_nbx(ep_, kServedReadRequestAm, nullptr, 0, s->message.data(),
                                         s->message.size(), &param);
  if (UCS_PTR_IS_ERR(req)) {
    Break(FromUcs(UCS_PTR_STATUS(req), "ucx: sending a read request"));
    return false;
  }
  s->send = req;
  return true;
}

void UcxReader::WaitServed(const std::function<bool()>& done, Deadline deadline) {
  // The daemon's CPU moves the bytes: between its messages this thread sleeps on the worker's
  // event fd rather than spin on a core the daemon needs.
  int idle = 0;
  while (!broken_ && !done()) {
    if (ucp_worker_progress(ucx_->worker()) != 0) {
      idle = 0;
    } else if (++idle >= kSpinsBeforeSleep && efd_ >= 0 &&
               ucp_worker_arm(ucx_->worker()) == UCS_OK) {
      pollfd p{efd_, POLLIN, 0};
      (void)poll(&p, 1, 1);  // at most 1 ms: the deadline is checked below
      idle = 0;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      Break(absl::DeadlineExceededError(absl::StrCat("ucx: served reads from ", region_.host, ":",
                                                     region_.port, " did not finish in time")));
    }
  }
  // A connection that failed under the read: closing it completes every send still in flight.
  if (broken_ && ep_ != nullptr) Break(error_);
}

absl::Status UcxReader::EndServed(std::span<Served> requests) {
  for (Served& s : requests) {
    if (s.send == nullptr) continue;
    while (!broken_ && ucp_request_check_status(s.send) == UCS_INPROGRESS) {
      ucp_worker_progress(ucx_->worker());
    }
    if (broken_ && ep_ != nullptr) Break(error_);  // completes the send
    ucp_request_free(s.send);
    s.send = nullptr;
  }
  for (const Served& s : requests) served_.erase(s.id);  // from here on replies are dropped
  if (broken_) return error_;
  for (const Served& s : requests) {
    if (s.id != 0 && !s.status.ok()) return s.status;
  }
  return absl::OkStatus();
}

absl::Status UcxReader::ReadServed(std::span<const ReadOp> ops, Deadline deadline, uint64_t lease) {
  const uint64_t half = staging_bytes_ / 2;
  bool stageable = staging_ != nullptr;
  for (const ReadOp& op : ops) stageable = stageable && op.length <= half;
  if (stageable) return ReadStaged(ops, deadline, lease);
  // Sent: one request per kMaxServedRanges ops and kMaxServedReadBytes bytes, all at once.
  std::vector<Served> requests = Group(ops, kMaxServedReadBytes);
  for (Served& s : requests) {
    if (!Ask(&s, lease, kNotStaged)) break;
  }
  WaitServed(
      [&] {
        return std::all_of(requests.begin(), requests.end(),
                           [](const Served& s) { return s.Complete(); });
      },
      deadline);
  absl::Status st = EndServed(requests);
  if (!st.ok()) return st;
  for (const Served& s : requests) {
    for (size_t i = 0; i < s.ops.size(); ++i) {
      if (s.ops[i].checksum != nullptr && !s.hashed[i]) Landed(s.ops[i]);
    }
  }
  return absl::OkStatus();
}

absl::Status UcxReader::ReadStaged(std::span<const ReadOp> ops, Deadline deadline, uint64_t lease) {
  // Requests of at most half the staging area each, two in flight: the daemon fills one half
  // while this thread (and the copy pool) copies the other out.
  const uint64_t half = staging_bytes_ / 2;
  std::vector<Served> requests = Group(ops, half);
  Served* in_half[2] = {nullptr, nullptr};
  size_t next = 0;
  absl::Status error;
  while (!broken_) {
    for (int h = 0; h < 2 && error.ok() && next < requests.size(); ++h) {
      if (in_half[h] != nullptr) continue;
      if (!Ask(&requests[next], lease, h * half)) break;
      in_half[h] = &requests[next++];
    }
    if (in_half[0] == nullptr && in_half[1] == nullptr) break;
    WaitServed(
        [&] {
          return (in_half[0] != nullptr && in_half[0]->Complete()) ||
                 (in_half[1] != nullptr && in_half[1]->Complete());
        },
        deadline);
    for (int h = 0; h < 2 && !broken_; ++h) {
      Served* s = in_half[h];
      if (s == nullptr || !s->Complete()) continue;
      in_half[h] = nullptr;
      if (!s->status.ok()) {
        if (error.ok()) error = s->status;
        continue;
      }
      std::vector<CopyOp> copies;
      copies.reserve(s->ops.size());
      const uint8_t* from = staging_ + h * half;
      for (const ReadOp& op : s->ops) {
        copies.push_back(
            {.dst = op.dst, .src = from, .length = op.length, .checksum = op.checksum});
        from += op.length;
      }
      CopyPool::Shared().Run(copies);
    }
  }
  absl::Status st = EndServed(std::span(requests).first(next));
  return st.ok() ? error : st;
}

UcxReader::~UcxReader() {
  if (ucx_ == nullptr) return;
  CloseEndpoint();
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
  rkey_ = nullptr;
  for (auto& [start, reg] : registered_) ucp_mem_unmap(ucx_->context(), reg.second);
}

}  // namespace kvtier::transfer
