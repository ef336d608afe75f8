#pragma once
// UcxLeaseReader: the BlockReader of the UCX data plane (src/transfer/README.md). Per call it
// leases the blocks (CacheService.Lease), reads what the call asks for over a data-plane
// connection, verifies whole blocks against their checksums, and releases the lease without
// waiting. A read that may have outlived its lease is kept only when the daemon confirms by
// generation that its blocks never moved (ReleaseVerified); otherwise, as after a wrong
// checksum or a lease the daemon no longer had, it is made again under a new lease (3 attempts).
//
// It declines (NotServed, block_reader.h), for gRPC to serve: keys that repeat or none; a
// daemon without a data plane (asked once per connection; one that says it has none is not
// asked again); a first connection no faster than gRPC (UCX over TCP, unless software_rma; a
// later one that is slower than the first means no more connections than there are); a block
// not cached or not in host RAM; a failed connect (and every call for a second after it, then
// it connects again); a connection that fails mid-read (the next call makes a new one); leases
// too short for the read. Its errors: the DataPlane call's own, a plan's (BlockTooLarge,
// RangeOutside), and DATA_LOSS when every attempt read wrong bytes.
//
// Concurrency: connections are pooled. A call takes an idle one, or makes a new one while fewer
// than max_connections exist (else it waits for one), under the pool's lock, and gives it back
// at the end. The DataPlane call, the connect, the lease, the read and the release run outside
// any lock, so readers in one process overlap; a connection serves one call at a time (a UCX
// worker is progressed by the thread that reads).
//
// The daemon's control plane (LeaseControl) and the transport (DataTransport) are interfaces:
// CacheClient passes its gRPC calls and UCX (UcxTransport), tests pass fakes that inject faults.
//
// CacheClient's LeaseControl sends leases and releases on long-lived LeaseSession streams (one
// per caller at a time), as Gets ride GetSession, or as calls of their own where it cannot.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/block_reader.h"
#include "client/cache_client.h"
#include "common/clock.h"
#include "common/mutex.h"
#include "transfer/ucx_reader.h"

namespace kvtier {

// What the lease reader asks of a daemon's control plane (CacheService over gRPC).
class LeaseControl {
 public:
  virtual ~LeaseControl() = default;
  // Where and how to reach the daemon's data plane, for a new connection; nullopt when the
  // daemon offers none (or predates the DataPlane call). Errors are the call's.
  virtual absl::StatusOr<std::optional<transfer::RemoteRegion>> DataPlane(
      CallDeadline deadline) = 0;
  // CacheService.Lease; LeaseInfo::expires on the reader's clock.
  virtual absl::StatusOr<LeaseInfo> Lease(std::span<const BlockKey> keys, uint32_t ttl_ms,
                                          CallDeadline deadline) = 0;
  // Ends a lease without waiting for the answer (a lost release costs only the lease's TTL).
  virtual void ReleaseInBackground(uint64_t lease_id, uint64_t bytes_read) = 0;
  // Ends a lease if it still holds, and answers whether every leased block is still where the
  // lease found it, with the same generation (CacheClient::ReleaseVerified).
  virtual absl::StatusOr<bool> ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read,
                                               CallDeadline deadline) = 0;
};

// One connection to a daemon's data plane. Used by one thread at a time.
class DataConnection {
 public:
  virtual ~DataConnection() = default;
  // transfer::UcxReader::Read: every op, into its destination, under lease `lease`.
  virtual absl::Status Read(std::span<const transfer::ReadOp> ops, CallDeadline deadline,
                            uint64_t lease) = 0;
  // Registers memory that reads will land in, once.
  virtual absl::Status RegisterBuffer(std::span<uint8_t> buffer) = 0;
  // After a transport error: every later Read fails.
  virtual bool broken() const = 0;
  // Reads here beat gRPC's: one-sided (mapped, or an RMA lane), or served through a mapped
  // staging area or an RDMA lane. False for UCX over TCP.
  virtual bool fast() const = 0;
};

class DataTransport {
 public:
  virtual ~DataTransport() = default;
  virtual absl::StatusOr<std::unique_ptr<DataConnection>> Connect(
      const transfer::RemoteRegion& region, CallDeadline deadline) = 0;
};

// UCX: connections are transfer::UcxReaders.
std::unique_ptr<DataTransport> NewUcxTransport();

struct UcxLeaseReaderOptions {
  uint32_t lease_ttl_ms = 0;         // Default: 0, the daemon's lease TTL.
  int64_t read_timeout_ms = 30'000;  // Default: 30 s. Each connect's and read's own deadline.
  // Default: false. Also use connections that are not fast() (ClientOptions::ucx_software_rma).
  bool software_rma = false;
  int max_connections = 8;  // Default: 8. Connections at once; more readers wait for one.
  // Default: the system's steady clock. Lease ends and the pause after a failed connect.
  const Clock* clock = SystemClock::Default();
};

// What a UcxLeaseReader moved and how (monotonic counters; TransferStats says what each means).
struct UcxReadStats {
  uint64_t ucx_bytes = 0;
  uint64_t leases = 0;
  uint64_t lease_retries = 0;
  uint64_t fallbacks = 0;  // calls declined after UCX failed them
  uint64_t connects = 0;
  uint64_t verified_reads = 0;
};

class UcxLeaseReader final : public BlockReader {
 public:
  // `control` and `transport` are not owned and must outlive the reader.
  UcxLeaseReader(LeaseControl* control, DataTransport* transport, UcxLeaseReaderOptions options);

  absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
      CallDeadline deadline) override;
  absl::Status ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline) override;

  // Registers `buffer` with every connection, now and to come (CacheClient::RegisterBuffer).
  void RegisterBuffer(std::span<uint8_t> buffer);

  UcxReadStats stats() const;

 private:
  // One read of a call: part of lease.blocks[block].
  struct BlockRead {
    size_t block = 0;
    uint64_t offset = 0;
    std::span<uint8_t> dst;
  };
  using PlanFn = absl::FunctionRef<absl::StatusOr<std::vector<BlockRead>>(const LeaseInfo&)>;
  // A connection and how many of buffers_ it has registered.
  struct Pooled {
    std::unique_ptr<DataConnection> connection;
    size_t registered = 0;
  };

  CallDeadline Now() const;
  // Leases `keys` (distinct), reads what `plan` asks for, verifies, releases.
  absl::Status Read(std::span<const BlockKey> keys, CallDeadline deadline, PlanFn plan);
  absl::Status ReadLeased(DataConnection& connection, std::span<const BlockKey> keys,
                          CallDeadline deadline, PlanFn plan);
  // An idle connection, or a new one; NotServed when there can be none now.
  absl::StatusOr<Pooled> Acquire(CallDeadline deadline);
  absl::StatusOr<Pooled> Connect(CallDeadline deadline);
  // Back to the pool (or dropped, if broken).
  void GiveBack(Pooled pooled);
  // Drops a connection slot reserved by Acquire (a connect that did not happen).
  void Unreserve() ABSL_LOCKS_EXCLUDED(mu_);

  LeaseControl* const control_;
  DataTransport* const transport_;
  const UcxLeaseReaderOptions options_;

  Mutex mu_;
  CondVar returned_;  // a connection went back to the pool, or a slot was freed
  std::vector<Pooled> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;  // connections made or being made, idle or in use
  // At most this many: max_connections, or fewer once a connection came out slower than the
  // others (the daemon had no staging area left for it).
  int max_open_ ABSL_GUARDED_BY(mu_);
  bool offered_ ABSL_GUARDED_BY(mu_) = true;  // false once the daemon said it has no data plane
  // After a failed connect, no other before this (calls are declined meanwhile).
  CallDeadline retry_after_ ABSL_GUARDED_BY(mu_);
  std::vector<std::span<uint8_t>> buffers_ ABSL_GUARDED_BY(mu_);  // RegisterBuffer's

  std::atomic<uint64_t> ucx_bytes_{0}, leases_{0}, lease_retries_{0}, fallbacks_{0}, connects_{0},
      verified_reads_{0};
};

}  // namespace kvtier
