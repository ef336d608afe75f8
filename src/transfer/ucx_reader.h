#pragma once
// UcxReader: the client side of kvtier's UCX data plane. Connects one endpoint to a daemon's
// listener and reads byte ranges of its host arena, many in flight at once, into caller buffers,
// in the daemon's mode (ucx_server.h):
// - rkey: unpacks the arena's remote key and reads with one-sided ucp_get_nbx (or copies, where
//   the arena is mapped here) into buffers registered once with RegisterBuffer;
// - served: sends the daemon the ranges and the lease handle that covers them (served_read.h)
//   and copies the bytes it answers with into the buffers as they arrive.
// It knows nothing of blocks: CacheClient leases blocks, reads them through this, and verifies
// what arrived.
//
// Not thread-safe (one UCP worker, progressed by the calling thread). After any transport error
// the reader is broken() and every later Read fails fast: make a new one (reconnect).

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transfer/ucx_common.h"

namespace kvtier::transfer {

// Where a daemon's exported region is and how to reach it (from CacheService.DataPlane).
struct RemoteRegion {
  std::string host;  // the daemon's UCX listener
  int port = 0;
  bool served = false;      // the daemon serves reads (no remote key); see ucx_server.h
  std::string packed_rkey;  // ucp_rkey_pack output (rkey mode)
  uint64_t base = 0;        // the region's address in the daemon (rkey mode)
  uint64_t bytes = 0;
};

// One read: `length` bytes at `offset` in the region, into `dst`. With `checksum` set, the
// XXH3-64 of the bytes that landed is stored there (fused with the copy where the reader copies
// itself).
struct ReadOp {
  uint64_t offset = 0;
  size_t length = 0;
  uint8_t* dst = nullptr;
  uint64_t* checksum = nullptr;
};

class UcxReader {
 public:
  using Deadline = std::chrono::steady_clock::time_point;

  // Connects and waits until the endpoint is usable. UNAVAILABLE when the daemon cannot be
  // reached; DEADLINE_EXCEEDED at `deadline`.
  static absl::StatusOr<std::unique_ptr<UcxReader>> Connect(const RemoteRegion& region,
                                                            Deadline deadline);
  ~UcxReader();

  // Registers [data, data + size) once, so reads into it skip per-read registration lookups
  // (rkey mode; served reads copy into any memory, and this does nothing).
  absl::Status RegisterBuffer(void* data, size_t size);

  // Issues every op (reads into overlapping destinations are the caller's problem) and returns
  // when all have completed, or with the first error. OUT_OF_RANGE for an op outside the region
  // (rkey mode); UNAVAILABLE when the connection fails; DEADLINE_EXCEEDED at `deadline`. Served
  // reads name `lease`, a lease handle whose blocks hold every op, and fail with the daemon's
  // refusal otherwise (NOT_FOUND: no such live lease; PERMISSION_DENIED: an op not inside one of
  // its blocks; INVALID_ARGUMENT: an empty or wrapping op), which leaves the reader usable. When
  // Read returns, no read is still writing into any destination.
  absl::Status Read(std::span<const ReadOp> ops, Deadline deadline, uint64_t lease = 0);

  bool broken() const { return broken_; }
  // True when UCX mapped the region into this process (shared memory on one host): reads are
  // then copies made by this thread, with no request to the transport.
  bool mapped() const { return local_ != nullptr; }
  // True when reads need nothing from the daemon's CPU: the region is mapped here, or UCX has a
  // native RMA lane to it (RDMA). False when UCX would emulate gets with messages that the
  // daemon's progress thread answers (TCP). With UCX 1.13 such an emulated read whose reader
  // dies mid-way can abort the daemon (ucp_get_req_handler treats the failed reply as fatal),
  // which is why CacheClient uses UCX only where this holds, unless told otherwise.
  bool one_sided() const { return local_ != nullptr || native_rma_; }
  // True when the daemon serves reads (region().served): the daemon's CPU copies every byte, and
  // a reader that dies mid-read costs the daemon nothing but the failed sends.
  bool served() const { return region_.served; }
  // Served mode: true when this connection's staging area is mapped here (one host), so that a
  // read is the daemon's copy into it and this thread's copy out of it.
  bool staged() const { return staging_ != nullptr; }
  // Served mode: true when active messages have a lane beside TCP (RDMA). Without one or a
  // staging area, the daemon sends the bytes as TCP messages (UCX's TCP transport here: about
  // 0.5 GB/s, below gRPC's 1.3).
  bool native_am() const { return native_am_; }
  const RemoteRegion& region() const { return region_; }

  struct Pending;  // completion state of one Read (used by its callbacks)
  struct Op;       // one op's completion (used by its callback)
  struct Served;   // one served request in flight (used by the active-message handlers)

 private:
  explicit UcxReader(const RemoteRegion& region) : region_(region) {}
  // Ends the endpoint (force) and waits for every request to complete.
  void Break(const absl::Status& why);
  // Closes the endpoint (force), which completes every request still in flight.
  void CloseEndpoint();
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);
  ucp_mem_h MemhFor(const uint8_t* p, size_t n) const;
  // What ucp_ep_print_info says of the endpoint: its lanes, their transports and uses.
  std::string EndpointInfo() const;
  absl::Status ReadServed(std::span<const ReadOp> ops, Deadline deadline, uint64_t lease);
  // Served reads through the connection's staging area, mapped here.
  absl::Status ReadStaged(std::span<const ReadOp> ops, Deadline deadline, uint64_t lease);
  // Served requests for `ops`, of at most `max_bytes` (or one op) and kMaxServedRanges each.
  static std::vector<Served> Group(std::span<const ReadOp> ops, uint64_t max_bytes);
  // Sends request `s`; false when the connection broke.
  bool Ask(Served* s, uint64_t lease, uint64_t staging_offset);
  // Progresses (sleeping on the event fd when idle) until `done`, the deadline (which breaks the
  // reader) or a broken connection.
  void WaitServed(const std::function<bool()>& done, Deadline deadline);
  // Waits for the requests' sends, forgets them (later replies are dropped); the first error.
  absl::Status EndServed(std::span<Served> requests);
  // Asks for the connection's staging area and maps it here if UCX can (on the daemon's host);
  // else gives it back.
  void MapStaging(Deadline deadline);
  static ucs_status_t OnStagingReply(void* arg, const void* header, size_t header_length,
                                     void* data, size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnServedData(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnServedDone(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param);

  RemoteRegion region_;
  std::unique_ptr<UcxEndpointHost> ucx_;
  ucp_ep_h ep_ = nullptr;
  ucp_rkey_h rkey_ = nullptr;
  const uint8_t* local_ = nullptr;  // the region, where UCX mapped it here (ucp_rkey_ptr)
  bool native_rma_ = false;         // a lane does RMA in hardware / the kernel
  bool native_am_ = false;          // served mode: an active-message lane beside TCP
  bool broken_ = false;
  absl::Status error_;
  std::map<uintptr_t, std::pair<size_t, ucp_mem_h>> registered_;  // start -> (size, handle)
  // Served requests of the Read in progress, by id. Replies naming any other id are dropped, so
  // nothing lands in a buffer once its Read has returned.
  absl::flat_hash_map<uint64_t, Served*> served_;
  uint64_t next_id_ = 1;
  int efd_ = -1;  // the worker's event fd (served mode), or -1: spin
  // The staging area of this connection in the daemon (served mode), mapped here through rkey_.
  const uint8_t* staging_ = nullptr;
  uint64_t staging_bytes_ = 0;
  uint64_t staging_base_ = 0;
  std::string staging_rkey_;
  bool staging_answered_ = false;
};

}  // namespace kvtier::transfer
