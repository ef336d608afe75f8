#pragma once
// UcxReader: the client side of kvtier's UCX data plane. Connects one endpoint to a daemon's
// listener, unpacks the remote key of its host arena, and reads byte ranges of it with one-sided
// ucp_get_nbx, many in flight at once, into caller buffers (registered once with
// RegisterBuffer, then reused). It knows nothing of blocks or leases: CacheClient leases blocks,
// reads them through this, and verifies what arrived.
//
// Not thread-safe (one UCP worker, progressed by the calling thread). After any transport error
// the reader is broken() and every later Read fails fast: make a new one (reconnect).

#include <chrono>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transfer/ucx_common.h"

namespace kvtier::transfer {

// Where a daemon's exported region is and how to reach it (from CacheService.DataPlane).
struct RemoteRegion {
  std::string host;  // the daemon's UCX listener
  int port = 0;
  std::string packed_rkey;  // ucp_rkey_pack output
  uint64_t base = 0;        // the region's address in the daemon
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

  // Registers [data, data + size) once, so reads into it skip per-read registration lookups.
  absl::Status RegisterBuffer(void* data, size_t size);

  // Issues every op (reads into overlapping destinations are the caller's problem) and returns
  // when all have completed, or with the first error. OUT_OF_RANGE for an op outside the region;
  // UNAVAILABLE when the connection fails; DEADLINE_EXCEEDED at `deadline`. When Read returns,
  // no read is still writing into any destination.
  absl::Status Read(std::span<const ReadOp> ops, Deadline deadline);

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
  const RemoteRegion& region() const { return region_; }

  struct Pending;  // completion state of one Read (used by its callbacks)
  struct Op;       // one op's completion (used by its callback)

 private:
  explicit UcxReader(const RemoteRegion& region) : region_(region) {}
  // Ends the endpoint (force) and waits for every request to complete.
  void Break(const absl::Status& why);
  // Closes the endpoint (force), which completes every request still in flight.
  void CloseEndpoint();
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);
  ucp_mem_h MemhFor(const uint8_t* p, size_t n) const;

  RemoteRegion region_;
  std::unique_ptr<UcxEndpointHost> ucx_;
  ucp_ep_h ep_ = nullptr;
  ucp_rkey_h rkey_ = nullptr;
  const uint8_t* local_ = nullptr;  // the region, where UCX mapped it here (ucp_rkey_ptr)
  bool native_rma_ = false;         // a lane does RMA in hardware / the kernel
  bool broken_ = false;
  absl::Status error_;
  std::map<uintptr_t, std::pair<size_t, ucp_mem_h>> registered_;  // start -> (size, handle)
};

}  // namespace kvtier::transfer
